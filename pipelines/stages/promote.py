"""The ``promote@i`` stage: register the iteration's agent in the MLflow model registry and pass
it through the promotion gate (challenger against champion on the same evaluation seeds).

Re-running the stage (after a kill, or by DVC) registers nothing twice: the version of this
campaign and iteration is found by its tags, and a decision already taken is read back.
"""

from __future__ import annotations

import json
import shutil
from typing import Any

import torch

from iris_core.config import config_to_dict
from iris_core.models.agent import Agent
from iris_core.training.evaluate import play_test_episodes
from iris_core.training.schedule import COMPONENTS
from pipelines.atomic import atomic_torch_save, atomic_write_text
from pipelines.progress import episode_progress
from pipelines.stages.common import StageContext, StageError, read_checkpoint, write_json
from pipelines.stages.faults import kill_point
from pipelines.stages.result import StageResult

NUM_RESAMPLES = 9999


def _champion_returns(ctx: StageContext, model_uri: str, env_seed: int, iteration: int) -> list[float]:
    """Play the champion on the challenger's evaluation seeds (its own architecture, our test
    settings), with the torch seed the challenger's evaluation used."""
    from pipelines import tracking
    from pipelines.tracking.policy import load_agent_config

    folder = ctx.workspace.scratch / "champion"
    if folder.exists():
        shutil.rmtree(folder)
    weights, config_file = tracking.download_agent(model_uri, folder)
    champion_config = load_agent_config(config_file)
    agent = Agent(champion_config).to(ctx.device)
    agent.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    ctx.seed("evaluate", iteration)
    config = ctx.config.with_num_actions(champion_config.num_actions)
    with episode_progress(f"promote@{iteration}: champion", config.collection.test.num_episodes) as on_step:
        episodes = play_test_episodes(agent, config, env_seed, on_step=on_step)
    return [m.episode_return for m in episodes]


def _mlflow_links(ctx: StageContext, campaign: str, iteration: int, run_id: str) -> dict[str, Any]:
    """Where this iteration's runs are, for reports and the flow's artifacts."""
    from mlflow import MlflowClient

    from pipelines import tracking

    root = ctx.workspace.root
    experiment_id = tracking.configure(root)
    runs = MlflowClient().search_runs(
        [experiment_id],
        filter_string=f"tags.`iris.campaign` = '{campaign}' and tags.`iris.iteration` = '{iteration}'",
        order_by=["attributes.start_time ASC"],
        max_results=1000,
    )
    run_ids = {f"{r.data.tags['iris.stage']}@{iteration}": r.info.run_id for r in runs}
    return {
        "tracking_uri": tracking.tracking_uri(root),
        "experiment_id": experiment_id,
        "parent_run_id": tracking.campaign_run_id(root, campaign),
        "run_id": run_id,
        "run_ids": run_ids,
    }


def run_promote(ctx: StageContext, iteration: int, run_id: str | None) -> StageResult:
    from pipelines import tracking
    from pipelines.stages.tracking import campaign_identity, registered_model_name

    if run_id is None:
        raise StageError("promotion needs MLflow tracking (the registry): run it through `iris stage`")
    ws = ctx.workspace
    evidence_file = ws.evaluation(iteration)
    if not evidence_file.is_file():
        raise StageError(f"missing input {evidence_file}: run evaluate@{iteration} first")
    evaluation = json.loads(evidence_file.read_text())
    name = registered_model_name(ctx)
    campaign, _ = campaign_identity(ctx)
    tags = {
        "iris.campaign": campaign,
        "iris.iteration": str(iteration),
        "iris.seed": str(ctx.config.common.seed),
    }

    version = tracking.find_version(name, {"iris.campaign": campaign, "iris.iteration": str(iteration)})
    if version is None:
        checkpoints = {c: read_checkpoint(ws.checkpoint(c, iteration)) for c in COMPONENTS}
        num_actions = int(checkpoints["tokenizer"]["num_actions"])
        state = {f"{c}.{k}": v for c, ckpt in checkpoints.items() for k, v in ckpt["weights"].items()}
        folder = ws.scratch / "register"
        folder.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(state, folder / "agent.pt")
        config = ctx.config.with_num_actions(num_actions)
        atomic_write_text(folder / "config.json", json.dumps(config_to_dict(config), indent=1))
        version = tracking.register_agent(
            run_id, name=name, agent_state=folder / "agent.pt", config_json=folder / "config.json", tags=tags
        )
        kill_point(f"promote@{iteration}", "registered")

    champion = tracking.get_alias_version(name, tracking.CHAMPION)
    returns = [float(r) for r in evaluation["returns"]]
    champion_returns: list[float] | None = None
    if champion is not None and champion != version:
        champion_returns = _champion_returns(
            ctx, f"models:/{name}/{champion}", evaluation["env_seed"], iteration
        )
    if champion == version:  # a re-run after the promotion itself: nothing moves
        decision: dict[str, Any] = {"promote": True, "reason": "already the champion"}
    else:
        gate = tracking.promotion_gate(
            returns,
            champion_returns,
            confidence=ctx.loop.promotion_confidence,
            num_resamples=NUM_RESAMPLES,
            seed=ctx.config.common.seed + iteration,
        )
        decision = gate.as_dict()
        evidence = {
            **decision,
            "challenger_returns": returns,
            "champion_returns": champion_returns,
            "champion_version": champion,
            "env_seed": evaluation["env_seed"],
        }
        if gate.promote:
            tracking.promote(name, version, evidence=evidence)
        else:
            tracking.record_decision(name, version, "rejected", evidence=evidence)

    outcome = {
        "iteration": iteration,
        "decision": "promoted" if decision["promote"] else "rejected",
        "reason": decision["reason"],
        "registered_model": name,
        "version": version,
        "champion_version": champion,
        "evidence": {k: v for k, v in decision.items() if k not in ("promote", "reason")},
        "challenger_returns": returns,
        "champion_returns": champion_returns,
        "mlflow": _mlflow_links(ctx, campaign, iteration, run_id),
    }
    write_json(ws.promotion(iteration), outcome)
    metrics = {"promotion/promoted": float(decision["promote"]), "promotion/version": float(version)}
    return StageResult(metrics=metrics, tags={"iris.decision": outcome["decision"]})
