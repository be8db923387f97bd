"""Ctrl-C during a run stops it with one line (no worker's traceback) and leaves a state the same
command continues from; what a stage printed is kept in ``.iris/logs/<stage>.log`` and in its
MLflow run (``console.log``).

Ctrl-C is sent as a terminal sends it: SIGINT to the whole process group (the command, its
environment workers), once the stage's progress has started.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_helpers import IRIS, assert_one_line_error, iris_env, run_iris
from dvc_workspace import TINY

from pipelines.config import write_params

# Collection far longer than the test waits (it is interrupted), with two env worker processes
# (they get the SIGINT too).
LONG_COLLECT = ["collection.train.num_steps_first_epoch=100000", "collection.train.env_processes=2"]
EXIT_INTERRUPTED = 130


def interrupt_when(
    args: list[str], cwd: Path, ready: Callable[[str], bool], timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run ``iris <args>``; once ``ready(output so far)`` holds, SIGINT its process group."""
    process = subprocess.Popen(
        [IRIS, *args],
        cwd=cwd,
        env=iris_env({"PYTHONFAULTHANDLER": "1"}),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert process.stdout is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout or []), daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    try:
        while not ready("".join(lines)):
            assert process.poll() is None, f"ended early ({process.returncode}):\n{''.join(lines)}"
            assert time.monotonic() < deadline, f"not ready after {timeout} s:\n{''.join(lines)}"
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            processes = subprocess.run(["ps", "-o", "pid,stat,etime,cmd", "-g", str(process.pid)],
                                       capture_output=True, text=True, check=False).stdout  # fmt: skip
            process.send_signal(signal.SIGABRT)  # PYTHONFAULTHANDLER: the stacks go to the output
            time.sleep(2)
            raise AssertionError(
                f"still running 120 s after SIGINT:\n{processes}\n{''.join(lines)}"
            ) from None
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        reader.join(timeout=30)
        process.stdout.close()
    return subprocess.CompletedProcess([IRIS, *args], process.returncode, "", "".join(lines))


def assert_interrupted(result: subprocess.CompletedProcess[str], *words: str) -> str:
    output = result.stderr
    assert result.returncode == EXIT_INTERRUPTED, output[-4000:]
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output[-4000:]
    last = [line for line in output.splitlines() if line.strip()][-1]
    assert "interrupted" in last, output[-4000:]
    for word in words:
        assert word in last, (word, last)
    return last


def leftovers(workspace: Path) -> list[str]:
    """Half-written files, temporary stores and writer locks (none may survive an interrupt)."""
    return sorted(
        str(p.relative_to(workspace))
        for p in workspace.rglob("*")
        if p.name.endswith((".partial", ".writer-lock")) and "mlartifacts" not in p.parts
    )


def console_artifact(workspace: Path, run_name: str) -> str:
    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts

    client = MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, filter_string=f"attributes.run_name = '{run_name}'")
    assert len(runs) == 1, [r.info.run_name for r in runs]
    uri = f"sqlite:///{workspace / 'mlflow.db'}"
    path = download_artifacts(run_id=runs[0].info.run_id, artifact_path="console.log", tracking_uri=uri)
    return Path(path).read_text()


def test_ctrl_c_during_an_in_process_campaign(tmp_path: Path, empty_mlflow_db: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    shutil.copy(empty_mlflow_db, workspace / "mlflow.db")  # no migrations in the command
    args = ["train", "--in-process", "-w", str(workspace), *TINY, *LONG_COLLECT]
    result = interrupt_when(args, tmp_path, lambda out: "collect@1: 100000 env steps to go" in out)
    assert_interrupted(result, "collect@1", "iris train --in-process")

    assert leftovers(workspace) == []
    assert not (workspace / "data" / "episodes" / "1.zarr").exists()  # the store goes whole or not at all
    assert (workspace / "state" / "actor_critic" / "0.pt").is_file()  # init's outputs stay
    log = (workspace / ".iris" / "logs" / "collect@1.log").read_text()
    assert "--- collect@1: started" in log and "100000 env steps to go" in log
    assert log.rstrip().splitlines()[-1] == result.stderr.rstrip().splitlines()[-1]  # the interrupt line
    init_log = (workspace / ".iris" / "logs" / "init.log").read_text()
    artifact = console_artifact(workspace, "init@0")
    assert artifact and artifact in init_log and "--- init: started" in artifact


@pytest.mark.slow
def test_ctrl_c_during_a_training_stage_resumes_from_its_checkpoint(
    tmp_path: Path, empty_mlflow_db: Path
) -> None:
    """`iris stage tokenizer@1` (what DVC runs), interrupted after its first mid-stage checkpoint,
    then again: the second run continues from that checkpoint. Also: a full disk in a stage."""
    workspace = tmp_path / "ws"
    workspace.mkdir()
    shutil.copy(empty_mlflow_db, workspace / "mlflow.db")
    write_params(workspace / "params.yaml", overrides=[*TINY, "training.tokenizer.steps_first_epoch=100000"])

    full = run_iris("stage", "init", "-w", str(workspace), cwd=tmp_path, env={"IRIS_TEST_NO_SPACE": "0.pt"})
    assert_one_line_error(full, "init", "state/tokenizer/0.pt", os.strerror(errno.ENOSPC))
    assert not (workspace / "state").exists() and leftovers(workspace) == []
    assert (workspace / ".iris" / "status" / "init.json").is_file()  # permanent: the flow will not retry

    for stage in ("init", "collect@1"):
        done = run_iris("stage", stage, "-w", str(workspace), cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
    partial = workspace / ".iris" / "partial" / "tokenizer@1"

    def checkpointed(output: str) -> bool:
        return partial.is_dir() and any(partial.glob("*.pt"))

    first = interrupt_when(["stage", "tokenizer@1", "-w", str(workspace)], tmp_path, checkpointed)
    assert_interrupted(first, "tokenizer@1", "run it again")
    assert checkpointed("") and leftovers(workspace) == []
    started = time.monotonic()
    second = interrupt_when(
        ["stage", "tokenizer@1", "-w", str(workspace)],
        tmp_path,
        lambda out: "continuing from step" in out and time.monotonic() - started > 1,
    )
    assert_interrupted(second, "tokenizer@1")
    assert "tokenizer@1: continuing from step" in second.stderr
    log = (workspace / ".iris" / "logs" / "tokenizer@1.log").read_text()
    assert log.count("--- tokenizer@1: started") == 2 and "continuing from step" in log
