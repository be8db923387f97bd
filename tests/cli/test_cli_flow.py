"""`iris train` through the Prefect flow and DVC: a stage's expected failure, and Ctrl-C, end in
one line without Prefect's traceback of the failed flow run (slow: a Prefect server and DVC)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from cli_helpers import assert_one_line_error, run_iris
from dvc_workspace import TINY
from test_cli_interrupt import LONG_COLLECT, assert_interrupted, interrupt_when, leftovers

pytestmark = pytest.mark.slow


def test_a_full_disk_in_a_stage_of_the_flow(tmp_path: Path) -> None:
    result = run_iris(
        "train", "-w", "ws", *TINY, cwd=tmp_path, env={"IRIS_TEST_NO_SPACE": "0.pt"}, timeout=600
    )
    assert_one_line_error(result, "init", "state/tokenizer/0.pt", os.strerror(errno.ENOSPC))
    workspace = tmp_path / "ws"
    assert (workspace / ".iris" / "status" / "init.json").is_file()  # permanent: not retried
    assert "No space left" in (workspace / ".iris" / "logs" / "init.log").read_text()
    assert not (workspace / "state").exists() and leftovers(workspace) == []


def test_ctrl_c_during_the_flow(tmp_path: Path) -> None:
    args = ["train", "-w", "ws", *TINY, *LONG_COLLECT]
    started = "collect@1: 100000 env steps to go"
    result = interrupt_when(args, tmp_path, lambda out: started in out, timeout=600)
    assert_interrupted(result, "iris resume")
    # Nothing half-written under a real name. (The stage's temporary store and its writer lock can
    # stay: the flow SIGKILLs the stage's group as soon as DVC exits on SIGTERM, before the stage
    # has cleaned up; collect@1 removes such a temporary store when it runs again.)
    assert not (tmp_path / "ws" / "data" / "episodes" / "1.zarr").exists()
