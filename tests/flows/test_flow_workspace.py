"""Workspace preparation (git + DVC, saving an earlier campaign) and the campaign lock."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from toy_pipeline import params_yaml

from pipelines.flows.lock import CampaignLock, CampaignRunningError
from pipelines.flows.prepare import prepare_workspace


def _git(workspace: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=workspace, capture_output=True, text=True, check=True).stdout


def _dvc(workspace: Path, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=workspace, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_new_folder_becomes_a_committed_workspace(tmp_path: Path, toy_dvc_yaml: Path) -> None:
    workspace = tmp_path / "runs" / "a"
    prepared = prepare_workspace(workspace, params_yaml_text=params_yaml(1, []), dvc_yaml=toy_dvc_yaml)

    assert prepared.created and prepared.saved_experiment is None
    assert (workspace / "params.yaml").read_text() == params_yaml(1, [])
    assert (workspace / "dvc.yaml").read_text() == toy_dvc_yaml.read_text()
    assert "analytics = false" in (workspace / ".dvc" / "config").read_text()
    committed = set(_git(workspace, "ls-files").split())
    assert committed >= {"dvc.yaml", "params.yaml", ".dvc/config", ".dvcignore"}
    assert _git(workspace, "status", "--porcelain") == ""  # .iris/ ignores itself
    again = prepare_workspace(workspace, params_yaml_text=params_yaml(1, []), dvc_yaml=toy_dvc_yaml)
    assert not again.created and not again.changed


def test_new_params_save_the_earlier_campaign_as_an_experiment(tmp_path: Path, toy_dvc_yaml: Path) -> None:
    workspace = tmp_path / "ws"
    prepare_workspace(workspace, params_yaml_text=params_yaml(2, [2], seed=0), dvc_yaml=toy_dvc_yaml)
    # An interrupted campaign: two stages done, the rest never ran (their outputs do not exist).
    _dvc(workspace, "repro", "--single-item", "init")
    _dvc(workspace, "repro", "--single-item", "collect@1")
    (workspace / "notes.txt").write_text("not a result")

    prepared = prepare_workspace(
        workspace,
        params_yaml_text=params_yaml(2, [2], seed=1),
        dvc_yaml=toy_dvc_yaml,
        experiment_name="seed-0",
    )

    assert prepared.saved_experiment == "seed-0"
    assert "seed: 1" in (workspace / "params.yaml").read_text()
    assert "seed-0" in _dvc(workspace, "exp", "list", "--name-only")
    ref = next(line.split()[1] for line in _git(workspace, "show-ref").splitlines() if "seed-0" in line)
    assert "seed: 0" in _git(workspace, "show", f"{ref}:params.yaml")
    assert "collect@1" in _git(workspace, "show", f"{ref}:dvc.lock")
    # A metric DVC does not cache is kept in the experiment's commit.
    saved = _git(workspace, "ls-tree", "-r", "--name-only", ref).split()
    assert "metrics/collect/1.json" in saved
    assert "notes.txt" not in saved  # untracked files that are no stage's output stay out


def test_the_campaign_lock_refuses_a_second_holder_and_is_released(tmp_path: Path) -> None:
    with (
        CampaignLock(tmp_path, holder="flow run one"),
        pytest.raises(CampaignRunningError, match=r"already running.*flow run one"),
    ):
        CampaignLock(tmp_path, holder="flow run two").__enter__()
    with CampaignLock(tmp_path):
        pass
