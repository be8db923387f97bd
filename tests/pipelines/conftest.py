"""Session fixtures over real workspaces (see dvc_workspace.py): the tiny campaign reproduced
by `dvc repro` once, and the in-process loop on the same params, run side by side."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator

import pytest
from dvc_workspace import (
    STAGE_TIMEOUT,
    Campaign,
    Campaigns,
    Runner,
    make_workspace,
    ran_stages,
    subprocess_env,
)


@pytest.fixture(scope="session")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Runner:
    return Runner(tmp_path_factory.mktemp("dvc-site-cache"))


@contextlib.contextmanager
def _no_tracking_uri() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        for name in ("MLFLOW_TRACKING_URI", "IRIS_TEST_KILL_AT"):
            patch.delenv(name, raising=False)
        yield


@pytest.fixture(scope="session")
def campaigns(runner: Runner, tmp_path_factory: pytest.TempPathFactory) -> Campaigns:
    """`dvc repro` of the tiny campaign, and (while it runs) the in-process loop on the same
    params with one iteration more in another workspace."""
    from pipelines.stages.runner import run_campaign

    base = tmp_path_factory.mktemp("campaigns")
    staged = make_workspace(runner, base / "dvc")
    reference = make_workspace(runner, base / "in-process", ["common.epochs=3"])
    log = (base / "dvc-repro.log").open("w+")
    process = subprocess.Popen(
        ["dvc", "repro"],
        cwd=staged,
        env=subprocess_env(runner.site_cache),
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        with _no_tracking_uri():
            run_campaign(reference)
        returncode = process.wait(timeout=STAGE_TIMEOUT)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, 9)
            process.wait()
    log.seek(0)
    output = log.read()
    log.close()
    assert returncode == 0, output[-8000:]
    runner.commit(staged, "campaign reproduced")
    return Campaigns(Campaign(staged, output, ran_stages(output)), reference)
