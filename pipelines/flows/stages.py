"""One DVC stage as a Prefect task: `dvc repro --single-item <stage>` in the workspace.

DVC decides whether the stage is stale (an up-to-date stage is a fast no-op), so stage tasks have no
Prefect cache. A failed stage is either *permanent* - its command wrote
`.iris/status/<stage>.json` with `"permanent": true` before exiting (bad config or input, non-finite
loss, disk full): retrying cannot help - or *transient* (a killed or crashed process, the DVC lock
held for a moment): the task's bounded retries apply to these only.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from subprocess import PIPE, STDOUT, Popen
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun

STATUS_DIR = Path(".iris") / "status"


class StageError(RuntimeError):
    """A stage's command failed; `str()` is the one-line reason."""

    def __init__(self, stage: str, error: str) -> None:
        super().__init__(stage, error)
        self.stage = stage
        self.error = error

    def __str__(self) -> str:
        return f"{self.stage}: {self.error}"


class PermanentStageError(StageError):
    """The stage reported a failure that a retry cannot fix."""


class TransientStageError(StageError):
    """Any other failure; worth retrying."""


def status_path(workspace: Path, stage: str) -> Path:
    return workspace / STATUS_DIR / f"{stage}.json"


def permanent_failure(workspace: Path, stage: str) -> str | None:
    """The one-line error of the stage's status file, if it marks a permanent failure."""
    path = status_path(workspace, stage)
    try:
        status = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(status, dict) or status.get("permanent") is not True:
        return None
    lines = str(status.get("error") or "").strip().splitlines()
    return lines[0] if lines else "failed permanently (no reason given)"


def tool_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for DVC and the stage commands it runs.

    This interpreter's `bin` goes first on PATH, so a stage's `python` or `iris` is the one the flow
    runs on even when a worker was started without activating the virtualenv.
    """
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env.update(extra or {})
    return env


def dvc(*args: str) -> list[str]:
    """A DVC command line on this interpreter (no reliance on a `dvc` script on PATH)."""
    return [sys.executable, "-m", "dvc", *args]


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_group(process: Popen[str], grace_seconds: float = 10.0) -> None:
    """SIGTERM the process group (DVC and its stage command), then SIGKILL whatever is left of it.

    The grace period is for the whole group, not only DVC: a stage cleans up on SIGTERM (removes
    its temporary store, releases its lock), and DVC may exit before its stage has finished that.
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline:
        process.poll()  # reap DVC, or the group never looks empty
        if not _group_alive(process.pid):
            break
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def run_dvc_stage(
    workspace: Path,
    stage: str,
    log: Callable[[str], None] = print,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Reproduce one stage if DVC finds it stale; raise a `StageError` subclass on failure.

    Returns `{"stage", "ran", "seconds"}`: `ran` is false when DVC found the stage up to date.
    """
    # A status file from an earlier attempt must not decide the fate of this one.
    status_path(workspace, stage).unlink(missing_ok=True)
    started = time.monotonic()
    tail: deque[str] = deque(maxlen=20)
    ran = False
    # DVC and the stage command get a process group of their own: if this task is interrupted
    # (a cancelled flow run, Ctrl-C, an error while logging), the whole group goes, so no orphaned
    # stage keeps training and holding DVC's lock.
    with Popen(
        dvc("repro", "--single-item", stage),
        cwd=workspace,
        stdout=PIPE,
        stderr=STDOUT,
        text=True,
        errors="replace",
        env=tool_environment(env),
        start_new_session=True,
    ) as process:
        try:
            assert process.stdout is not None
            for line in process.stdout:
                line = line.rstrip()
                if line.startswith(f"Running stage '{stage}'"):
                    ran = True
                if line:
                    tail.append(line)
                    log(line)
            returncode = process.wait()
        except BaseException:
            _stop_group(process)
            raise
    seconds = time.monotonic() - started
    if returncode != 0:
        error = permanent_failure(workspace, stage)
        if error is not None:
            raise PermanentStageError(stage, error)
        last = next((line for line in reversed(tail) if "ERROR" in line), tail[-1] if tail else "")
        raise TransientStageError(stage, f"dvc repro exited with {returncode}: {last}")
    return {"stage": stage, "ran": ran, "seconds": round(seconds, 3)}


def stale_stages(workspace: Path, env: dict[str, str] | None = None) -> set[str] | None:
    """The stages that `dvc status` reports as not up to date; None when it cannot tell.

    One `dvc status` reads `dvc.yaml` once, where each `dvc repro --single-item` reads it again, so on
    a long campaign the flow uses this to pass over the finished stages at the start of its plan.
    """
    result = subprocess.run(
        dvc("status", "--json"),
        cwd=workspace,
        env=tool_environment(env),
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        return None
    lines = result.stdout.strip().splitlines()
    try:
        report = json.loads(lines[-1]) if lines else {}
    except ValueError:
        return None
    if not isinstance(report, dict):
        return None
    # Keys are stage names, prefixed with their dvc.yaml path (`path/dvc.yaml:stage`) outside the root.
    return {str(key).rsplit(":", 1)[-1] for key in report}


def retry_if_transient(task: Any, task_run: TaskRun, state: State) -> bool:
    """Prefect's `retry_condition_fn`: retry unless the stage failed permanently."""
    error = state.data if isinstance(state.data, BaseException) else state.result(raise_on_failure=False)
    return not isinstance(error, PermanentStageError)


@task(
    name="dvc-repro",
    task_run_name="{stage}",
    cache_policy=NO_CACHE,
    persist_result=False,
    retry_condition_fn=retry_if_transient,
)
def repro_stage(workspace: str, stage: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one stage (see `run_dvc_stage`); its output goes to the task's log."""
    logger = get_run_logger()
    return run_dvc_stage(Path(workspace), stage, log=logger.info, env=env)
