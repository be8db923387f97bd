"""Every expected failure of a user command ends with one line naming the cause and the thing to
change, exit code 2, no traceback, and leaves the folder as it was (paths, sizes, mtimes).

Each test runs ``iris`` as a subprocess in a temporary folder and compares snapshots of that
folder before and after.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
from pathlib import Path

import pytest
import torch
from cli_helpers import IRIS, assert_one_line_error, changes, iris_env, run_iris, snapshot, user_namespaces

from pipelines.config import write_params

needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
needs_namespaces = pytest.mark.skipif(not user_namespaces(), reason="unshare -rm (tmpfs mounts) unavailable")


def unchanged(root: Path, result: subprocess.CompletedProcess[str], before: dict) -> None:
    assert changes(before, snapshot(root)) == [], result.stderr


# -- bad configuration, checked before anything is written -------------------------------------


def test_an_unknown_atari_game_fails_before_any_folder_is_created(tmp_path: Path) -> None:
    before = snapshot(tmp_path)
    result = run_iris(
        "train", "-w", "ws", "env=atari", "params=atari", "env.train.id=NoSuchGameNoFrameskip-v4",
        cwd=tmp_path,
    )  # fmt: skip
    assert_one_line_error(
        result, "env.train.id=NoSuchGameNoFrameskip-v4", "no such Atari game", "BreakoutNoFrameskip-v4"
    )
    assert not (tmp_path / "ws").exists()
    unchanged(tmp_path, result, before)


def test_an_unknown_atari_game_leaves_an_existing_workspace_alone(tmp_path: Path) -> None:
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "notes.txt").write_text("mine\n")
    before = snapshot(tmp_path)
    result = run_iris(
        "train", "--in-process", "-w", "ws", "env=atari", "params=atari",
        "env.train.id=NoSuchGameNoFrameskip-v4", cwd=tmp_path,
    )  # fmt: skip
    assert_one_line_error(result, "NoSuchGameNoFrameskip-v4", "no such Atari game")
    unchanged(tmp_path, result, before)


@needs_no_cuda
def test_cuda_requested_without_cuda(tmp_path: Path) -> None:
    before = snapshot(tmp_path)
    result = run_iris("train", "-w", "ws", "params=quickstart", "common.device=cuda", cwd=tmp_path)
    assert_one_line_error(
        result, "common.device=cuda", "CUDA requested but not available", "common.device=cpu"
    )
    unchanged(tmp_path, result, before)


@needs_no_cuda
def test_a_stage_on_cuda_without_cuda_fails_permanently_in_one_line(tmp_path: Path) -> None:
    """`iris stage` (what DVC runs) checks the device too: exit 2 and a status file for the flow,
    before any stage output."""
    write_params(tmp_path / "params.yaml", overrides=["params=quickstart", "common.device=cuda"])
    before = snapshot(tmp_path)
    result = run_iris("stage", "init", "-w", ".", cwd=tmp_path)
    assert_one_line_error(result, "init", "CUDA requested but not available")
    # What a stage may write when it fails: its status (for the flow) and its console log.
    assert sorted(changes(before, snapshot(tmp_path))) == sorted(
        ["+ .iris", "+ .iris/status", "+ .iris/status/init.json", "+ .iris/logs", "+ .iris/logs/init.log"]
    )
    assert "CUDA requested" in (tmp_path / ".iris" / "logs" / "init.log").read_text()


def test_a_malformed_list_override(tmp_path: Path) -> None:
    before = snapshot(tmp_path)
    for command in (["config", "write", "-o", "out.yaml"], ["train", "-w", "ws"], ["config", "show"]):
        result = run_iris(*command, "tokenizer.encoder.mult=[1,2", cwd=tmp_path)
        assert_one_line_error(result, "tokenizer.encoder.mult=[1,2", "cannot parse", "brackets")
    unchanged(tmp_path, result, before)


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = run_iris(
        "--debug", "config", "write", "-o", "out.yaml", "tokenizer.encoder.mult=[1,2", cwd=tmp_path
    )
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "UserError" in result.stderr
    assert not (tmp_path / "out.yaml").exists()


# -- where things are written --------------------------------------------------------------------


def test_a_workspace_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "ws").write_text("not a folder\n")
    before = snapshot(tmp_path)
    result = run_iris("train", "-w", "ws", "params=quickstart", cwd=tmp_path)
    assert_one_line_error(result, "--workspace ws", "is a file, not a folder")
    result = run_iris("train", "-w", "ws/inner", "params=quickstart", cwd=tmp_path)
    assert_one_line_error(result, "ws/inner", "is a file, not a folder")
    unchanged(tmp_path, result, before)


def test_config_write_to_a_folder(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    before = snapshot(tmp_path)
    result = run_iris("config", "write", "-o", "folder", cwd=tmp_path)
    assert_one_line_error(result, "--output folder", "is a folder", "folder/params.yaml")
    unchanged(tmp_path, result, before)  # no stray temporary file either


def test_a_full_disk_names_the_file_and_leaves_nothing(tmp_path: Path) -> None:
    """ENOSPC injected into the atomic writer (pipelines/atomic.py's test hook) after part of the
    file is written: the message names the file; no temporary file or folder made for it stays."""
    before = snapshot(tmp_path)
    result = run_iris(
        "config", "write", "-o", "new/folders/params.yaml",
        cwd=tmp_path, env={"IRIS_TEST_NO_SPACE": "params.yaml"},
    )  # fmt: skip
    assert_one_line_error(result, "new/folders/params.yaml", os.strerror(errno.ENOSPC), "free space")
    unchanged(tmp_path, result, before)


def test_a_full_disk_while_an_in_process_campaign_starts(tmp_path: Path) -> None:
    """The workspace this command created goes again when it fails before its first stage."""
    before = snapshot(tmp_path)
    result = run_iris(
        "train", "--in-process", "-w", "ws", "params=quickstart",
        cwd=tmp_path, env={"IRIS_TEST_NO_SPACE": "params.yaml"},
    )  # fmt: skip
    assert_one_line_error(result, "ws/params.yaml", os.strerror(errno.ENOSPC))
    unchanged(tmp_path, result, before)


@needs_namespaces
def test_a_read_only_and_a_full_file_system(tmp_path: Path) -> None:
    """Real file systems, in a private mount namespace (no root needed, nothing left mounted): a
    read-only tmpfs as the workspace's folder and a 16 KiB tmpfs as the output's."""
    script = f"""
set -u
cd {tmp_path}
mkdir -p ro full
mount -t tmpfs -o size=64k,ro tmpfs ro
mount -t tmpfs -o size=16k tmpfs full
"$IRIS" train -w ro/ws params=quickstart 2>ro.err; echo $? > ro.rc
"$IRIS" train -w full/ws params=quickstart 2>full-ws.err; echo $? > full-ws.rc
"$IRIS" config write -o full/params.yaml 2>full.err; echo $? > full.rc
ls -A ro full > listing
"""
    env = {**iris_env(), "IRIS": IRIS}
    subprocess.run(["unshare", "-rm", "sh", "-c", script], env=env, check=True, timeout=180)
    for name, words in {
        "ro": ["--workspace ro/ws", "cannot write in", "Read-only file system"],
        "full-ws": ["--workspace full/ws", "MiB free", "free space"],
        "full": ["full/params.yaml", os.strerror(errno.ENOSPC)],
    }.items():
        stderr = (tmp_path / f"{name}.err").read_text()
        result = subprocess.CompletedProcess([name], int((tmp_path / f"{name}.rc").read_text()), "", stderr)
        assert_one_line_error(result, *words)
    assert (tmp_path / "listing").read_text().split() == ["full:", "ro:"]  # both file systems empty


# -- campaigns and the registry ------------------------------------------------------------------


def test_a_second_campaign_on_a_running_workspace(tmp_path: Path) -> None:
    from pipelines.flows.lock import CampaignLock

    workspace = tmp_path / "ws"
    workspace.mkdir()
    write_params(workspace / "params.yaml", overrides=["params=quickstart"])
    with CampaignLock(workspace, holder="the test"):
        before = snapshot(tmp_path)
        for command in (
            ["train", "-w", "ws", "params=quickstart"],
            ["train", "--in-process", "-w", "ws", "params=quickstart"],
            ["resume", "-w", "ws"],
        ):
            result = run_iris(*command, cwd=tmp_path)
            assert_one_line_error(result, "a campaign is already running in ws", "the test", "wait for it")
        unchanged(tmp_path, result, before)


def test_evaluate_an_unknown_model(tracking_workspace: Path) -> None:
    from pipelines import preflight
    from pipelines.tracking import backend

    assert preflight.DATABASE_FILE == backend.DATABASE_FILE
    root = tracking_workspace.parent
    before = snapshot(root)
    result = run_iris("evaluate", "--model", "models:/NoSuchModel@champion", "-w", "tracked", cwd=root)
    assert_one_line_error(result, "cannot load models:/NoSuchModel@champion", "NoSuchModel", "not found")
    result = run_iris("evaluate", "--model", "models:/NoSuchModel@champion", "-w", "empty", cwd=root)
    assert_one_line_error(result, "no MLflow store in empty", "--workspace")
    unchanged(root, result, before)  # no mlflow.db made in "empty", none touched in "tracked"


def test_rollback_without_a_previous_champion(tracking_workspace: Path) -> None:
    root = tracking_workspace.parent
    before = snapshot(root)
    result = run_iris("promote", "--rollback", "--model", "delta-iris-crafter", "-w", "tracked", cwd=root)
    assert_one_line_error(result, "cannot roll back delta-iris-crafter", "previous-champion")
    result = run_iris("promote", "--rollback", "-w", "tracked", cwd=root)
    assert_one_line_error(result, "no params.yaml", "--model")
    unchanged(root, result, before)


def test_ui_checks_before_starting_anything(tracking_workspace: Path) -> None:
    root = tracking_workspace.parent
    before = snapshot(root)
    result = run_iris("ui", "-w", "missing", cwd=root, timeout=60)
    assert_one_line_error(result, "--workspace missing is not a folder")
    (root / "bare").mkdir()
    before = snapshot(root)
    result = run_iris("ui", "-w", "bare", cwd=root, timeout=60)
    assert_one_line_error(result, "no MLflow store in bare")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_iris("ui", "-w", "tracked", "--mlflow-port", str(port), cwd=root, timeout=60)
    assert_one_line_error(result, f"port {port}", "--mlflow-port")
    unchanged(root, result, before)


# -- stages and viewers ---------------------------------------------------------------------------


def test_stage_names_and_workspaces_are_checked_first(tmp_path: Path) -> None:
    before = snapshot(tmp_path)
    result = run_iris("stage", "init", "-w", "nowhere", cwd=tmp_path)
    assert_one_line_error(result, "init: nowhere is not a workspace", "iris train")
    unchanged(tmp_path, result, before)
    write_params(tmp_path / "params.yaml", overrides=["params=quickstart"])
    before = snapshot(tmp_path)
    result = run_iris("stage", "bogus@x", "-w", ".", cwd=tmp_path)
    assert_one_line_error(result, "unknown stage 'bogus@x'", "init or <stage>@<iteration>")
    # Only the status file that tells the flow not to retry.
    assert changes(before, snapshot(tmp_path)) == ["+ .iris", "+ .iris/status", "+ .iris/status/bogus@x.json"]


def test_play_without_pygame_names_the_extra(tmp_path: Path) -> None:
    hidden = tmp_path / "no-pygame"
    hidden.mkdir()
    (hidden / "pygame.py").write_text("raise ModuleNotFoundError('no pygame here', name='pygame')\n")
    before = snapshot(tmp_path)
    # (No bytecode: the stand-in module's __pycache__ would be a change the command did not make.)
    env = {"PYTHONPATH": str(hidden), "PYTHONDONTWRITEBYTECODE": "1"}
    result = run_iris("play", "--workspace", ".", cwd=tmp_path, env=env)
    assert_one_line_error(result, "play window needs pygame", "pip install -e '.[gui]'", "--record")
    unchanged(tmp_path, result, before)


@pytest.mark.parametrize("command", ["dream", "report"])
def test_viewers_on_a_folder_without_a_campaign(tmp_path: Path, command: str) -> None:
    before = snapshot(tmp_path)
    result = run_iris(command, "--workspace", ".", cwd=tmp_path)
    assert_one_line_error(result, "no params.yaml" if command == "report" else "no checkpoints")
    unchanged(tmp_path, result, before)


@needs_no_cuda
def test_viewers_check_the_device(tmp_path: Path) -> None:
    result = run_iris("dream", "--workspace", ".", "--device", "cuda", cwd=tmp_path)
    assert_one_line_error(result, "--device=cuda", "CUDA requested but not available")
