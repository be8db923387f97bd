"""A toy DVC pipeline with the real stage names and files, for testing the orchestration alone.

Every stage is `python toy_stage.py <name> <iteration>`: it reads its deps, writes its outs and flat
metrics, and appends `<stage>` to `.iris/toy/runs.log`, so a test sees what ran, in which order.
A control file `.iris/toy/<stage>` changes one stage's behaviour (outside DVC's view, like a flaky
machine would):

- `permanent:<message>`: write the permanent-failure status file and exit with code 2;
- `transient-once`: kill itself with SIGKILL the first time, succeed afterwards;
- `wait`: block until `.iris/toy/<stage>.release` exists (for tests of concurrent flows);
- `slow-cleanup`: block; on SIGTERM take a second to clean up, then touch `.iris/toy/<stage>.cleaned`.

With `MLFLOW_TRACKING_URI` set, `promote@i` logs a run per stage of the iteration to MLflow
(experiment `toy-campaign`, tagged with the campaign and seed) and records their ids.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

STAGE_SCRIPT = r"""
import json, os, signal, sys, time
from pathlib import Path

import yaml

name, i = sys.argv[1], sys.argv[2]
stage = name if name == "init" else f"{name}@{i}"
toy = Path(".iris/toy")
toy.mkdir(parents=True, exist_ok=True)
with open(toy / "runs.log", "a") as log:
    log.write(stage + "\n")
(toy / f"{stage}.pid").write_text(str(os.getpid()))
control_file = toy / stage
control = control_file.read_text().strip() if control_file.exists() else ""
if control.startswith("permanent:"):
    status = Path(".iris/status")
    status.mkdir(parents=True, exist_ok=True)
    record = {"stage": stage, "permanent": True, "error": control.split(":", 1)[1]}
    (status / f"{stage}.json").write_text(json.dumps(record))
    sys.exit(2)
if control == "transient-once" and not (toy / f"{stage}.failed").exists():
    (toy / f"{stage}.failed").touch()
    os.kill(os.getpid(), signal.SIGKILL)
if control == "slow-cleanup":  # on SIGTERM, a second of cleanup, then a mark that it finished
    def cleanup(signum, frame):
        time.sleep(1.0)
        (toy / f"{stage}.cleaned").touch()
        sys.exit(1)

    signal.signal(signal.SIGTERM, cleanup)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.05)
if control == "wait":
    deadline = time.monotonic() + 60
    while not (toy / f"{stage}.release").exists() and time.monotonic() < deadline:
        time.sleep(0.05)

seed = yaml.safe_load(open("params.yaml"))["common"]["seed"]


def write(path, text):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)


def metrics(stage_name, values):
    write(f"metrics/{stage_name}/{i}.json", json.dumps(values))


n = int(i)
if name == "init":
    for component in ("tokenizer", "world_model", "actor_critic", "collector"):
        write(f"state/{component}/0.pt", f"{component} seed {seed}\n")
    write("data/manifests/0.json", json.dumps({"stores": []}))
elif name == "collect":
    write(f"data/episodes/{i}.zarr", f"episodes {i} seed {seed}\n")
    write(f"data/manifests/{i}.json", json.dumps({"stores": [f"{k}.zarr" for k in range(1, n + 1)]}))
    write(f"state/collector/{i}.pt", f"collector {i}\n")
    metrics("collect", {"collect/steps": 100.0 * n, "collect/return_mean": 0.5 * n})
elif name in ("tokenizer", "world_model", "actor_critic"):
    write(f"state/{name}/{i}.pt", f"{name} {i} seed {seed}\n")
    losses = {f"{name}/iteration/loss_total": 1.0 / (n + 1) + seed / 100, f"{name}/eval/loss_total": 1.0 / n}
    metrics(name, losses)
elif name == "evaluate":
    write(f"evaluation/{i}.json", json.dumps({"returns": [1.0, 2.0], "seeds": [1, 2]}))
    metrics("evaluate", {"test/return_mean": 1.5 * n, "test/crafter_score": 2.25})
elif name == "promote":
    run_ids, experiment_id, parent = {}, "0", "parent-" + i
    if os.environ.get("MLFLOW_TRACKING_URI"):
        import mlflow

        experiment_id = mlflow.set_experiment("toy-campaign").experiment_id
        tags = {"campaign": os.environ.get("IRIS_CAMPAIGN", ""), "seed": str(seed)}
        with mlflow.start_run(run_name=f"campaign-{i}", tags=tags) as run:
            parent = run.info.run_id
            for child in ("tokenizer", "world_model", "actor_critic", "evaluate"):
                with mlflow.start_run(run_name=f"{child}@{i}", nested=True, tags=tags) as sub:
                    run_ids[f"{child}@{i}"] = sub.info.run_id
    else:
        run_ids = {f"{child}@{i}": f"run-{child}-{i}" for child in ("tokenizer", "evaluate")}
    promotion = {
        "iteration": n, "decision": "promoted", "reason": "challenger beats champion",
        "registered_model": "toy-agent", "version": n, "champion_version": None,
        "evidence": {"mean_difference": 0.75, "ci_low": 0.25, "ci_high": 1.25, "num_pairs": 8,
                     "confidence": 0.95},
        "mlflow": {"tracking_uri": os.environ.get("MLFLOW_TRACKING_URI", ""),
                   "experiment_id": experiment_id, "parent_run_id": parent, "run_ids": run_ids},
    }
    write(f"promotion/{i}.json", json.dumps(promotion))
"""


def dvc_yaml(script: Path) -> dict:
    """`dvc.yaml` of the toy pipeline: the real stages' names, deps and outs (in miniature)."""
    cmd = f"{sys.executable} {script}"
    manifest = "data/manifests/${key}.json"

    def component(name: str, deps: list[str]) -> dict:
        return {
            "foreach": "${loop.iterations}",
            "do": {
                "cmd": f"{cmd} {name} ${{key}}",
                "deps": deps,
                "outs": [f"state/{name}/${{key}}.pt"],
                "metrics": [{f"metrics/{name}/${{key}}.json": {"cache": False}}],
            },
        }

    return {
        "stages": {
            "init": {
                "cmd": f"{cmd} init 0",
                "params": ["common.seed"],
                "outs": [f"state/{c}/0.pt" for c in ("tokenizer", "world_model", "actor_critic", "collector")]
                + ["data/manifests/0.json"],
            },
            "collect": {
                "foreach": "${loop.iterations}",
                "do": {
                    "cmd": f"{cmd} collect ${{key}}",
                    "deps": [
                        "state/actor_critic/${item.prev}.pt",
                        "state/collector/${item.prev}.pt",
                        "data/manifests/${item.prev}.json",
                    ],
                    "outs": ["data/episodes/${key}.zarr", manifest, "state/collector/${key}.pt"],
                    "metrics": [{"metrics/collect/${key}.json": {"cache": False}}],
                },
            },
            "tokenizer": component("tokenizer", [manifest, "state/tokenizer/${item.prev}.pt"]),
            "world_model": component(
                "world_model", [manifest, "state/tokenizer/${key}.pt", "state/world_model/${item.prev}.pt"]
            ),
            "actor_critic": component(
                "actor_critic",
                [
                    manifest,
                    "state/tokenizer/${key}.pt",
                    "state/world_model/${key}.pt",
                    "state/actor_critic/${item.prev}.pt",
                ],
            ),
            "evaluate": {
                "foreach": "${loop.evaluations}",
                "do": {
                    "cmd": f"{cmd} evaluate ${{key}}",
                    "deps": [f"state/{c}/${{key}}.pt" for c in ("tokenizer", "world_model", "actor_critic")],
                    "outs": ["evaluation/${key}.json"],
                    "metrics": [{"metrics/evaluate/${key}.json": {"cache": False}}],
                },
            },
            "promote": {
                "foreach": "${loop.evaluations}",
                "do": {
                    "cmd": f"{cmd} promote ${{key}}",
                    "deps": ["evaluation/${key}.json"],
                    "outs": [{"promotion/${key}.json": {"cache": False}}],
                },
            },
        }
    }


def params_yaml(iterations: int, evaluations: list[int], seed: int = 0) -> str:
    """`params.yaml` text with the `loop` section of `iterations` iterations."""
    loop = {
        "iterations": {str(i): {"prev": str(i - 1)} for i in range(1, iterations + 1)},
        "evaluations": {str(i): {"prev": str(i - 1)} for i in evaluations},
    }
    return yaml.safe_dump({"common": {"seed": seed}, "loop": loop}, sort_keys=False)


def write_toy_pipeline(folder: Path) -> Path:
    """Write the stage script and `dvc.yaml` into `folder`; returns the `dvc.yaml` path."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "toy_stage.py"
    script.write_text(STAGE_SCRIPT)
    path = folder / "dvc.yaml"
    path.write_text(yaml.safe_dump(dvc_yaml(script), sort_keys=False))
    return path


def control(workspace: Path, stage: str, behaviour: str) -> None:
    """Set a stage's toy behaviour (see the module docstring)."""
    toy = workspace / ".iris" / "toy"
    toy.mkdir(parents=True, exist_ok=True)
    (toy / stage).write_text(behaviour)


def runs(workspace: Path) -> list[str]:
    """The stages whose commands started, in order."""
    log = workspace / ".iris" / "toy" / "runs.log"
    return log.read_text().split() if log.exists() else []


def read_artifact(key: str) -> Any:
    """The newest Prefect artifact with this key (from the API the tests run against)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    assert found, f"no artifact {key!r}"
    return max(found, key=lambda artifact: artifact.created)
