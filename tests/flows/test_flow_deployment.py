"""The deployment path: a real `prefect server start`, a process work pool with one worker, the
`train/local` deployment of `prefect.yaml`, and two flow runs triggered with `prefect deployment run`
(two workspaces, different seeds) that both complete and log to one shared MLflow database.

The toy pipeline checks the orchestration alone. `IRIS_FLOWS_PIPELINE=real` swaps in the project's
`dvc.yaml` with a tiny config (`IRIS_FLOWS_REAL_PRESET`, default quickstart, shrunk by overrides).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from toy_pipeline import params_yaml

PROJECT = Path(__file__).resolve().parents[2]
PIPELINE = os.environ.get("IRIS_FLOWS_PIPELINE", "toy")
REAL_OVERRIDES = [
    "common.epochs=1",
    "collection.train.num_envs=2",
    "collection.train.num_steps_first_epoch=60",
    "collection.test.num_envs=2",
    "collection.test.num_episodes=2",
    "env.test.max_episode_steps=40",
    "training.world_model.sequence_length=8",
    "actor_critic.imagination_horizon=2",
    "training.tokenizer.batch_num_samples=2",
    "training.world_model.batch_num_samples=2",
    "training.actor_critic.batch_num_samples=2",
    "training.tokenizer.steps_first_epoch=1",
    "training.world_model.steps_first_epoch=1",
    "training.actor_critic.steps_first_epoch=1",
]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _prefect(*args: str) -> list[str]:
    return [sys.executable, "-m", "prefect", *args]


def _campaign_inputs(tmp_path: Path, seed: int, toy_dvc_yaml: Path) -> dict[str, str]:
    """The flow parameters that pick the pipeline under test and its params."""
    if PIPELINE == "toy":
        return {
            "params_yaml": params_yaml(iterations=1, evaluations=[1], seed=seed),
            "dvc_yaml": str(toy_dvc_yaml),
        }
    preset = os.environ.get("IRIS_FLOWS_REAL_PRESET", "quickstart")
    output = tmp_path / f"params-{seed}.yaml"
    overrides = [f"params={preset}", f"common.seed={seed}", *REAL_OVERRIDES]
    iris = Path(sys.executable).parent / "iris"
    subprocess.run([str(iris), "config", "write", "-o", str(output), *overrides], check=True, cwd=PROJECT)
    return {"params_yaml": output.read_text(), "dvc_yaml": str(PROJECT / "dvc.yaml")}


class Processes:
    """Long-running processes of the test, each in its own session so that its children go too."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115  (closed with the process)
        process = subprocess.Popen(
            command, cwd=PROJECT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.started.append(process)
        return process

    def stop(self) -> None:
        for process in reversed(self.started):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.started:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    started = Processes(tmp_path)
    try:
        yield started
    finally:
        started.stop()


def _wait_healthy(api: str, server: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, "prefect server exited"
        try:
            if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"prefect server not healthy after {timeout} s")


def _run(command: list[str], env: dict[str, str]) -> str:
    result = subprocess.run(command, cwd=PROJECT, env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{command[3:]} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_deployment_runs_on_one_worker_complete_into_one_mlflow_db(
    tmp_path: Path, toy_dvc_yaml: Path, processes: Processes
) -> None:
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    mlflow_db = tmp_path / "mlflow.db"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
    }
    started = time.monotonic()
    server = processes.start(
        "server", _prefect("server", "start", "--host", "127.0.0.1", "--port", str(port)), env
    )
    _wait_healthy(api, server, timeout=120)
    server_seconds = time.monotonic() - started

    _run(_prefect("work-pool", "create", "iris-process", "--type", "process"), env)
    _run(
        _prefect("--no-prompt", "deploy", "--prefect-file", str(PROJECT / "prefect.yaml"), "--name", "local"),
        env,
    )
    worker_env = {**env, "IRIS_PROJECT_DIR": str(PROJECT), "MLFLOW_TRACKING_URI": f"sqlite:///{mlflow_db}"}
    processes.start(
        "worker", _prefect("worker", "start", "--pool", "iris-process", "--type", "process"), worker_env
    )

    runs: dict[int, str] = {}
    for seed in (0, 1):
        parameters = {
            "workspace": str(tmp_path / f"seed-{seed}"),
            "retries": 0,
            **_campaign_inputs(tmp_path, seed, toy_dvc_yaml),
        }
        output = _run(_prefect("deployment", "run", "train/local", "--params", json.dumps(parameters)), env)
        found = re.search(r"UUID:\s*([0-9a-f-]{36})", output)
        assert found, output
        runs[seed] = found.group(1)

    deadline = time.monotonic() + (240 if PIPELINE == "toy" else 840)
    states: dict[int, str] = {}
    while time.monotonic() < deadline:
        states = {
            seed: httpx.get(f"{api}/flow_runs/{run_id}", timeout=10).json()["state"]["type"]
            for seed, run_id in runs.items()
        }
        if all(state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") for state in states.values()):
            break
        time.sleep(1)
    worker_log = (tmp_path / "worker.log").read_text(errors="replace")
    assert states == {0: "COMPLETED", 1: "COMPLETED"}, worker_log[-4000:]
    total = time.monotonic() - started
    print(f"server healthy after {server_seconds:.1f} s; both runs done after {total:.1f} s")

    # Both campaigns ran in their own workspace, with their own params, and their MLflow runs are in
    # the one database the worker was pointed at.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{mlflow_db}")
    for seed in (0, 1):
        workspace = tmp_path / f"seed-{seed}"
        assert f"seed: {seed}" in (workspace / "params.yaml").read_text()
        tracking = json.loads((workspace / "promotion" / "1.json").read_text())["mlflow"]
        run_ids = [
            *tracking.get("run_ids", {}).values(),
            tracking.get("parent_run_id"),
            tracking.get("run_id"),
        ]
        run_ids = [run_id for run_id in run_ids if run_id]
        assert run_ids, tracking
        for run_id in run_ids:
            assert client.get_run(run_id).info.run_id == run_id
