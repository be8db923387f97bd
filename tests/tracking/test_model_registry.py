"""The registry on a real SQLite store: versions, aliases, decisions, and the policy model."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from iris_core.config import config_to_dict
from iris_core.models.agent import Agent
from pipelines.config import load_config
from pipelines.tracking import (
    RegistryError,
    download_agent,
    find_version,
    get_alias_version,
    promote,
    promotion_gate,
    record_decision,
    register_agent,
    rollback,
    stage_run,
)

NUM_ACTIONS = 17


@dataclass(frozen=True)
class SavedAgent:
    agent: Agent
    state: Path
    config: Path


@pytest.fixture(scope="module")
def saved_agent(tmp_path_factory: pytest.TempPathFactory) -> SavedAgent:
    """A quickstart-sized agent whose policy gives different actions for different frames."""
    torch.manual_seed(0)
    config = load_config(overrides=["params=quickstart"]).with_num_actions(NUM_ACTIONS)
    agent = Agent(config).eval()
    with torch.no_grad():
        for parameter in agent.actor_critic.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))  # the actor head starts at zero
    folder = tmp_path_factory.mktemp("agent")
    torch.save(agent.state_dict(), folder / "agent.pt")
    (folder / "config.json").write_text(json.dumps(config_to_dict(config)))
    return SavedAgent(agent, folder / "agent.pt", folder / "config.json")


def register_versions(workspace: Path, saved: SavedAgent, name: str, count: int) -> list[int]:
    versions = []
    for iteration in range(1, count + 1):
        with stage_run(workspace, campaign_id=name, stage="promote", iteration=iteration) as tracker:
            versions.append(
                register_agent(
                    tracker,
                    name=name,
                    agent_state=saved.state,
                    config_json=saved.config,
                    tags={"iris.campaign": name, "iris.iteration": str(iteration)},
                )
            )
    return versions


def decision_of(name: str, version: int) -> str | None:
    return MlflowClient().get_model_version(name, str(version)).tags.get("iris.decision")


def test_versions_are_numbered_tagged_and_the_newest_is_challenger(
    workspace: Path, saved_agent: SavedAgent
) -> None:
    with stage_run(workspace, campaign_id="numbered", stage="promote", iteration=1) as tracker:
        first = register_agent(
            tracker,
            name="numbered",
            agent_state=saved_agent.state,
            config_json=saved_agent.config,
            tags={"k": "1"},
        )
        second = register_agent(
            tracker.run_id, name="numbered", agent_state=saved_agent.state, config_json=saved_agent.config
        )
    assert (first, second) == (1, 2)
    assert get_alias_version("numbered", "challenger") == 2
    assert get_alias_version("numbered", "champion") is None
    version = MlflowClient().get_model_version("numbered", "1")
    assert version.run_id == tracker.run_id
    assert version.tags["k"] == "1"


def test_find_version_makes_registration_idempotent(workspace: Path, saved_agent: SavedAgent) -> None:
    register_versions(workspace, saved_agent, "findable", 3)
    assert find_version("findable", {"iris.campaign": "findable", "iris.iteration": "2"}) == 2
    assert find_version("findable", {"iris.campaign": "findable", "iris.iteration": "9"}) is None
    assert find_version("findable", {"iris.campaign": "elsewhere"}) is None
    assert find_version("never-registered", {"iris.iteration": "1"}) is None


def test_promote_reject_rollback(workspace: Path, saved_agent: SavedAgent) -> None:
    name = "sequence"
    v1, v2, v3 = register_versions(workspace, saved_agent, name, 3)

    first = promotion_gate([1.0, 2.0], None, num_resamples=100, seed=0)
    promote(name, v1, evidence=first.as_dict())
    assert get_alias_version(name, "champion") == v1
    assert get_alias_version(name, "previous-champion") is None
    evidence = json.loads(MlflowClient().get_model_version(name, str(v1)).tags["iris.evidence"])
    assert evidence["promote"] is True and evidence["ci_low"] is None  # NaN recorded as null

    promote(name, v2, evidence={"mean_difference": 1.5})
    assert get_alias_version(name, "champion") == v2
    assert get_alias_version(name, "previous-champion") == v1
    assert decision_of(name, v2) == "promoted"

    record_decision(name, v3, "rejected", evidence={"reason": "no clear difference"})
    assert get_alias_version(name, "champion") == v2
    assert get_alias_version(name, "challenger") == v3
    assert decision_of(name, v3) == "rejected"

    assert rollback(name) == v1
    assert get_alias_version(name, "champion") == v1
    assert decision_of(name, v2) == "rolled-back"
    assert get_alias_version(name, "previous-champion") is None
    with pytest.raises(RegistryError, match="no previous-champion"):
        rollback(name)


def test_rollbacks_chain_back_through_earlier_champions(workspace: Path, saved_agent: SavedAgent) -> None:
    name = "chain"
    v1, v2, v3 = register_versions(workspace, saved_agent, name, 3)
    for version in (v1, v2, v3):
        promote(name, version, evidence={})
    assert rollback(name) == v2
    assert get_alias_version(name, "previous-champion") == v1
    assert rollback(name) == v1
    assert get_alias_version(name, "champion") == v1


def test_promoting_the_champion_again_moves_nothing(workspace: Path, saved_agent: SavedAgent) -> None:
    name = "rerun"
    v1, v2 = register_versions(workspace, saved_agent, name, 2)
    promote(name, v1, evidence={})
    promote(name, v2, evidence={})
    promote(name, v2, evidence={"again": True})  # a re-run promotion stage
    assert get_alias_version(name, "champion") == v2
    assert get_alias_version(name, "previous-champion") == v1


def test_champion_loads_as_a_policy_that_acts_like_the_agent(
    workspace: Path, saved_agent: SavedAgent
) -> None:
    name = "policy"
    [version] = register_versions(workspace, saved_agent, name, 1)
    promote(name, version, evidence={})
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")

    frames = np.random.default_rng(0).integers(0, 256, (6, 3, 64, 64), dtype=np.uint8)
    actions = model.predict(frames)
    assert actions.shape == (6,)
    assert actions.dtype == np.int64
    assert ((actions >= 0) & (actions < NUM_ACTIONS)).all()

    policy = saved_agent.agent.actor_critic
    with torch.no_grad():
        policy.reset(6)
        expected = policy.act(torch.from_numpy(frames).float().div(255), should_sample=False).numpy()
        policy.clear()
    assert len(set(expected.tolist())) > 1  # the comparison can tell weights apart
    np.testing.assert_array_equal(actions, expected)

    with pytest.raises(Exception, match="shape"):
        model.predict(np.zeros((2, 3, 32, 32), dtype=np.uint8))


def test_download_agent_gives_the_registered_files(
    workspace: Path, saved_agent: SavedAgent, tmp_path: Path
) -> None:
    name = "download"
    v1, _ = register_versions(workspace, saved_agent, name, 2)
    promote(name, v1, evidence={})
    for uri in (f"models:/{name}@champion", f"models:/{name}/2"):
        weights, config = download_agent(uri, tmp_path / uri.replace("/", "_").replace(":", "_"))
        state = torch.load(weights, weights_only=True)
        original = saved_agent.agent.state_dict()
        assert state.keys() == original.keys()
        assert all(torch.equal(state[key], original[key]) for key in original)
        assert json.loads(config.read_text()) == json.loads(saved_agent.config.read_text())


def test_missing_aliases_and_models_read_as_none(workspace: Path) -> None:
    assert get_alias_version("no-such-model", "champion") is None


def test_registering_a_missing_file_fails_clearly(
    workspace: Path, saved_agent: SavedAgent, tmp_path: Path
) -> None:
    with (
        stage_run(workspace, campaign_id="missing", stage="promote", iteration=1) as tracker,
        pytest.raises(FileNotFoundError, match="does not exist"),
    ):
        register_agent(
            tracker, name="missing", agent_state=tmp_path / "nope.pt", config_json=saved_agent.config
        )
