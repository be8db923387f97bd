"""The stage runner without Prefect: an interrupted stage leaves no process behind."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from toy_pipeline import control, params_yaml, runs

from pipelines.flows.prepare import prepare_workspace
from pipelines.flows.stages import run_dvc_stage


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_an_interrupted_stage_takes_its_command_down_with_it(tmp_path: Path, toy_dvc_yaml: Path) -> None:
    workspace = tmp_path / "ws"
    prepare_workspace(workspace, params_yaml_text=params_yaml(1, []), dvc_yaml=toy_dvc_yaml)
    control(workspace, "init", "wait")  # would block for 60 s
    pid_file = workspace / ".iris" / "toy" / "init.pid"

    def interrupt_once_running(line: str) -> None:
        deadline = time.monotonic() + 30
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        raise KeyboardInterrupt  # what a cancelled run or Ctrl-C looks like to the task

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_dvc_stage(workspace, "init", log=interrupt_once_running)

    assert runs(workspace) == ["init"]
    assert time.monotonic() - started < 30
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid), "the stage command outlived the interrupted task"


def test_an_interrupted_stage_may_finish_its_cleanup(tmp_path: Path, toy_dvc_yaml: Path) -> None:
    """DVC exits at once on SIGTERM; the stage under it still gets its grace period to clean up."""
    workspace = tmp_path / "ws"
    prepare_workspace(workspace, params_yaml_text=params_yaml(1, []), dvc_yaml=toy_dvc_yaml)
    control(workspace, "init", "slow-cleanup")
    toy = workspace / ".iris" / "toy"

    def interrupt_once_running(line: str) -> None:
        deadline = time.monotonic() + 30
        while not (toy / "init.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # the stage's SIGTERM handler is installed right after its pid file
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_dvc_stage(workspace, "init", log=interrupt_once_running)

    assert (toy / "init.cleaned").exists(), "the stage was killed in the middle of its cleanup"
    assert not _alive(int((toy / "init.pid").read_text()))
