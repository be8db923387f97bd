"""Shared test settings: deterministic, single-threaded torch unless a test asks otherwise."""

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

import contextlib
import subprocess
from collections.abc import Iterator

import pytest
import torch
from dvc_workspace import (
    STAGE_TIMEOUT,
    Campaign,
    Campaigns,
    Runner,
    make_workspace,
    ran_stages,
    subprocess_env,
)


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _restore_tracking_uri() -> Iterator[None]:
    # mlflow.set_tracking_uri writes $MLFLOW_TRACKING_URI, which later tests (and the stage
    # processes they start) would read as the user's choice of store.
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


@pytest.fixture(autouse=True)
def _restore_torch_threads() -> Iterator[None]:
    # Some tests pin torch to one thread; the campaigns compared across processes need the
    # default count (gradients of a CPU convolution depend on how many threads sum them).
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------
# One tiny campaign for the whole session (see dvc_workspace.py): reproduced by `dvc repro`, and
# run by the in-process loop with one iteration more in another workspace. The pipeline tests
# compare the two; the viewer tests read the in-process one.
# ---------------------------------------------------------------------------------------------


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
