"""``iris stage <name>``: one stage, as ``dvc.yaml`` runs it (the ``cmd:`` of every stage).

Exit codes: 0 done; 2 a failure that running again cannot fix (bad config or input, non-finite
loss, full disk, no permission), after writing ``.iris/status/<stage>.json`` for the flow; 130
interrupted (Ctrl-C, or SIGTERM from DVC or Prefect cancelling): run it again to continue; any
other code is a crash worth retrying (the stage continues from its mid-stage checkpoint).

What the stage prints is also appended to ``.iris/logs/<stage>.log`` (:mod:`pipelines.console`).
A folder that is no workspace fails before anything is written.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import time
import traceback
from pathlib import Path

from iris_core.config import ConfigError
from iris_core.training.train_component import NonFiniteLossError
from pipelines.atomic import atomic_write_text
from pipelines.console import console_log
from pipelines.errors import EXIT_USER_ERROR, PERMANENT_ERRNOS, UserError, describe_os_error
from pipelines.interrupts import catching_interrupts
from pipelines.stages.common import StageError
from pipelines.stages.runner import StageSpec, parse_stage, run_stage
from pipelines.workspace import Workspace

EXIT_PERMANENT = EXIT_USER_ERROR
EXIT_INTERRUPTED = 130
EXIT_CRASH = 1


def permanent_reason(error: BaseException) -> str | None:
    """One line describing ``error`` if retrying the stage cannot fix it, else None."""
    if isinstance(error, ConfigError):
        return f"invalid configuration: {error}"
    if isinstance(error, NonFiniteLossError | StageError | UserError):
        return " ".join(str(error).split())
    if isinstance(error, OSError) and error.errno in PERMANENT_ERRNOS:
        return describe_os_error(error)
    from pipelines.storage import StoreError

    if isinstance(error, StoreError):
        return " ".join(str(error).split())
    return None


def main(name: str, workspace: Path) -> int:
    # SIGTERM (DVC or Prefect cancelling) ends the stage like Ctrl-C; neither is ever lost.
    with catching_interrupts(signal.SIGTERM):
        return _main(name, workspace)


def _main(name: str, workspace: Path) -> int:
    ws = Workspace(workspace)
    if not ws.params.is_file():  # nothing is written outside a workspace
        print(
            f"error: {name}: {workspace} is not a workspace (no params.yaml): "
            "pass --workspace of a campaign, or start one with `iris train`",
            file=sys.stderr,
        )
        return EXIT_PERMANENT
    status = ws.status(name)
    if status.exists():
        status.unlink()
    try:
        spec = parse_stage(name)
    except StageError as error:
        return _permanent(name, str(error), status, prefix=False)
    with console_log(ws.log(name), name):
        return _run(name, spec, workspace, status)


def _permanent(name: str, reason: str, status: Path, prefix: bool = True) -> int:
    """Record the failure for the flow (``.iris/status/<stage>.json``: no retry) and say it."""
    # The disk may be full: the message below still says why.
    with contextlib.suppress(OSError):
        atomic_write_text(status, json.dumps({"stage": name, "permanent": True, "error": reason}) + "\n")
    print(f"error: {name}: {reason}" if prefix else f"error: {reason}", file=sys.stderr)
    return EXIT_PERMANENT


def _run(name: str, spec: StageSpec, workspace: Path, status: Path) -> int:
    started = time.perf_counter()
    try:
        run_stage(workspace, spec)
    except KeyboardInterrupt:
        print(f"{name}: interrupted; run it again to continue", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        reason = permanent_reason(error)
        if reason is None:  # a crash: the traceback helps (in the log too), and a retry may succeed
            traceback.print_exc()
            return EXIT_CRASH
        return _permanent(name, reason, status)
    print(f"{name}: done in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0
