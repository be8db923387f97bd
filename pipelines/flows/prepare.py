"""Workspace preparation: a folder that is a git repo with DVC, holding `dvc.yaml` and `params.yaml`.

A new folder gets `git init`, `dvc init` (analytics off), the two files and an initial commit. A
workspace that already holds results of *other* params (a `dvc.lock`) first has that campaign saved
as a DVC experiment (`dvc exp save -n <name>`: dvc.lock, params, the metrics and plots that are not
in the DVC cache), so nothing is lost; `dvc exp apply <name>` brings it back.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipelines.flows.lock import ensure_iris_dir
from pipelines.flows.stages import dvc, tool_environment

# Commits made here carry this identity unless the environment names one: a fresh machine or a
# container often has no git config, and `git commit` would refuse to run.
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "iris",
    "GIT_AUTHOR_EMAIL": "iris@localhost",
    "GIT_COMMITTER_NAME": "iris",
    "GIT_COMMITTER_EMAIL": "iris@localhost",
}


class WorkspaceError(RuntimeError):
    """The workspace cannot be prepared as asked (and was left as it was)."""


@dataclass(frozen=True)
class PreparedWorkspace:
    path: Path
    created: bool
    changed: bool
    saved_experiment: str | None


def _environment() -> dict[str, str]:
    env = tool_environment()
    for name, value in GIT_IDENTITY.items():
        env.setdefault(name, value)
    return env


def _run(workspace: Path, *command: str) -> str:
    result = subprocess.run(
        command, cwd=workspace, env=_environment(), capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        shown = " ".join(command).replace(f"{sys.executable} -m ", "")
        message = " ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
        raise WorkspaceError(f"`{shown}` failed in {workspace}: {message}")
    return result.stdout


def is_workspace(path: Path) -> bool:
    return all((path / name).exists() for name in (".git", ".dvc", "dvc.yaml", "params.yaml"))


def _lock_entries(workspace: Path) -> dict[str, dict[str, Any]]:
    lock = yaml.safe_load((workspace / "dvc.lock").read_text()) or {}
    return {name: entry or {} for name, entry in (lock.get("stages") or {}).items()}


def completed_stages(workspace: Path) -> list[str]:
    """Stages recorded in `dvc.lock` whose outputs are all present (the ones `dvc exp save` can commit)."""
    return [
        name
        for name, entry in _lock_entries(workspace).items()
        if all((workspace / out["path"]).exists() for out in entry.get("outs", []))
    ]


def _uncached_results(workspace: Path, stages: list[str]) -> list[str]:
    """Untracked files among these stages' outputs (metrics, plots with `cache: false`) and the
    `.gitignore` files DVC wrote next to them: what an experiment commit would otherwise miss."""
    entries = _lock_entries(workspace)
    outs = {out["path"].rstrip("/") for stage in stages for out in entries[stage].get("outs", [])}
    folders = {str(Path(path).parent) for path in outs}
    untracked = _run(workspace, "git", "ls-files", "--others", "--exclude-standard", "-z")
    return [
        path
        for path in filter(None, untracked.split("\0"))
        if path in outs
        or any(path.startswith(out + "/") for out in outs)
        or (Path(path).name == ".gitignore" and str(Path(path).parent) in folders)
    ]


def save_campaign(workspace: Path, name: str) -> str | None:
    """Save the workspace's current results as the DVC experiment `name`; None if there are none.

    `dvc exp save` caches every stage's outputs and stops at the first missing one, so an
    interrupted campaign is saved with its completed stages as targets. Outputs DVC does not cache
    (metrics and plots with `cache: false`) and the `.gitignore`s DVC wrote are untracked files
    that an experiment leaves out unless named; other untracked files of the folder are not
    results and stay out.
    """
    targets = completed_stages(workspace)
    if not targets:
        return None
    include = [arg for path in _uncached_results(workspace, targets) for arg in ("--include-untracked", path)]
    message = f"campaign saved before new params: {name}"
    _run(workspace, *dvc("exp", "save", "--name", name, "--message", message), *include, *targets)
    return name


def prepare_workspace(
    path: Path,
    *,
    params_yaml_text: str,
    dvc_yaml: Path,
    experiment_name: str | None = None,
) -> PreparedWorkspace:
    """Make `path` a workspace running `dvc_yaml` with these params (see the module docstring).

    The caller holds the campaign lock (`pipelines.flows.lock.CampaignLock`).
    """
    path = path.resolve()
    path.mkdir(parents=True, exist_ok=True)
    ensure_iris_dir(path)
    dvc_yaml_text = dvc_yaml.read_text()
    created = not (path / ".git").exists()
    if created:
        _run(path, "git", "init", "--quiet")
    if not (path / ".dvc").exists():
        _run(path, *dvc("init", "--quiet"))
        # What `dvc config core.analytics false` writes into the fresh, empty config (one DVC start less).
        (path / ".dvc" / "config").write_text("[core]\n    analytics = false\n")
        created = True

    params_file, dvc_file = path / "params.yaml", path / "dvc.yaml"
    same = (
        params_file.exists()
        and dvc_file.exists()
        and params_file.read_text() == params_yaml_text
        and dvc_file.read_text() == dvc_yaml_text
    )
    saved = None
    if not same and (path / "dvc.lock").exists():
        name = experiment_name or time.strftime("campaign-%Y%m%d-%H%M%S", time.gmtime())
        saved = save_campaign(path, name)
    if not same:
        params_file.write_text(params_yaml_text)
        if dvc_file.resolve() != dvc_yaml.resolve():
            shutil.copyfile(dvc_yaml, dvc_file)
    if created:
        # Only what this function wrote: a folder that held other files keeps them out of the commit.
        names = [".dvc", ".dvcignore", "dvc.yaml", "params.yaml"]
        _run(path, "git", "add", "--", *[name for name in names if (path / name).exists()])
        _run(path, "git", "commit", "--quiet", "--no-verify", "-m", "Workspace: dvc.yaml and params.yaml")
    return PreparedWorkspace(path=path, created=created, changed=not same, saved_experiment=saved)
