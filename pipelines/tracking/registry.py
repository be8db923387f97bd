"""The model registry: every evaluated iteration's agent is a version of one registered model.

Aliases, never stages:

- ``challenger``: the newest registered version;
- ``champion``: the version in use (``models:/<name>@champion``);
- ``previous-champion``: the champion it replaced, what :func:`rollback` returns to.

Decisions and their evidence are version tags (``iris.decision``, ``iris.evidence``), so the
registry alone tells why a version is or is not the champion. A promoted version remembers the
champion it replaced (``iris.replaced_champion``), so rollbacks can be chained.

The functions here use the tracking URI set by :func:`pipelines.tracking.configure`.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

from pipelines.tracking.runs import StageTracker

CHALLENGER = "challenger"
CHAMPION = "champion"
PREVIOUS_CHAMPION = "previous-champion"
MODEL_NAME = "agent"  # the logged model's name inside its run

TAG_DECISION = "iris.decision"  # promoted | rejected | rolled-back | restored
TAG_EVIDENCE = "iris.evidence"  # JSON of the gate's evidence
TAG_REPLACED_CHAMPION = "iris.replaced_champion"
MAX_TAG_VALUE = 5000  # registry tag values are limited (5000 characters in SQL stores)


class RegistryError(RuntimeError):
    """A registry operation that cannot be done (e.g. rolling back without a previous champion)."""


def _not_found(error: MlflowException) -> bool:
    return bool(error.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST))


# ---------------------------------------------------------------------------------------------
# Registering and downloading agents
# ---------------------------------------------------------------------------------------------


def register_agent(
    tracker_or_run_id: StageTracker | str,
    *,
    name: str,
    agent_state: Path,
    config_json: Path,
    tags: Mapping[str, str] | None = None,
) -> int:
    """Log the agent as a pyfunc model of the run and register it as a new version of ``name``.

    ``agent_state``: the agent's state dict (``torch.save(agent.state_dict())``); ``config_json``:
    the resolved config with ``num_actions`` set. The new version gets ``tags`` and the alias
    ``challenger``. Returns its version number. Registering is not idempotent: look for an
    earlier registration with :func:`find_version` first.
    """
    import mlflow.pyfunc  # imported here: ~1 s, and only registering needs it
    from mlflow.models import Model

    from pipelines.tracking.policy import AGENT_STATE, CONFIG, pip_requirements, policy_signature

    run_id = tracker_or_run_id.run_id if isinstance(tracker_or_run_id, StageTracker) else tracker_or_run_id
    for path in (agent_state, config_json):
        if not Path(path).is_file():
            raise FileNotFoundError(f"cannot register {name}: {path} does not exist")
    with warnings.catch_warnings():
        # The signature says what goes in and out; an input example would make MLflow load and
        # run the whole agent once more while logging it.
        warnings.filterwarnings("ignore", message=".*An input example was not provided")
        info = Model.log(
            artifact_path=None,
            name=MODEL_NAME,
            flavor=mlflow.pyfunc,
            run_id=run_id,
            python_model=str(Path(__file__).with_name("policy_model.py")),
            artifacts={AGENT_STATE: str(agent_state), CONFIG: str(config_json)},
            pip_requirements=pip_requirements(),
            signature=policy_signature(config_json),
        )
    client = MlflowClient()
    try:
        client.get_registered_model(name)
    except MlflowException as error:
        if not _not_found(error):
            raise
        try:
            client.create_registered_model(name)
        except MlflowException:
            client.get_registered_model(name)  # created meanwhile by another process
    version = client.create_model_version(
        name,
        source=info.model_uri,
        run_id=run_id,
        tags={key: str(value) for key, value in (tags or {}).items()},
        model_id=info.model_id,
    )
    client.set_registered_model_alias(name, CHALLENGER, version.version)
    return int(version.version)


def download_agent(model_uri: str, dst: Path) -> tuple[Path, Path]:
    """Download a registered agent (``models:/<name>@<alias>`` or ``models:/<name>/<version>``)
    into ``dst``; returns the paths of its weights file and its config JSON."""
    from mlflow.artifacts import download_artifacts
    from mlflow.models import Model

    from pipelines.tracking.policy import AGENT_STATE, CONFIG

    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    local = Path(download_artifacts(artifact_uri=model_uri, dst_path=str(dst)))
    artifacts = Model.load(str(local)).flavors["python_function"]["artifacts"]
    return local / artifacts[AGENT_STATE]["path"], local / artifacts[CONFIG]["path"]


# ---------------------------------------------------------------------------------------------
# Aliases and decisions
# ---------------------------------------------------------------------------------------------


def get_alias_version(name: str, alias: str) -> int | None:
    """The version holding ``alias``; None if none does (or the model is not registered)."""
    try:
        return int(MlflowClient().get_model_version_by_alias(name, alias).version)
    except MlflowException as error:
        if _not_found(error) or "not found" in str(error).lower():
            return None
        raise


def _evidence_json(evidence: Mapping[str, Any]) -> str:
    def plain(value: Any) -> Any:
        # JSON has no NaN: the gate's "nothing to compare" values become null.
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return value

    text = json.dumps({key: plain(value) for key, value in evidence.items()}, sort_keys=True, default=str)
    return text if len(text) <= MAX_TAG_VALUE else text[: MAX_TAG_VALUE - 3] + "..."


def record_decision(
    name: str, version: int, decision: str, *, evidence: Mapping[str, Any] | None = None
) -> None:
    """Record a decision (e.g. ``rejected``) and its evidence as tags of the version; no alias moves."""
    client = MlflowClient()
    client.set_model_version_tag(name, str(version), TAG_DECISION, decision)
    if evidence is not None:
        client.set_model_version_tag(name, str(version), TAG_EVIDENCE, _evidence_json(evidence))


def promote(name: str, version: int, *, evidence: Mapping[str, Any]) -> None:
    """Make ``version`` the champion: the current champion becomes ``previous-champion``.

    Records ``iris.decision=promoted`` and the evidence on the version. Promoting the current
    champion again only records the decision (a re-run promotion stage moves nothing).
    """
    client = MlflowClient()
    champion = get_alias_version(name, CHAMPION)
    if champion is not None and champion != version:
        client.set_registered_model_alias(name, PREVIOUS_CHAMPION, str(champion))
        client.set_model_version_tag(name, str(version), TAG_REPLACED_CHAMPION, str(champion))
    record_decision(name, version, "promoted", evidence=evidence)
    client.set_registered_model_alias(name, CHAMPION, str(version))


def rollback(name: str) -> int:
    """Make the previous champion the champion again and return its version.

    The demoted champion is tagged ``iris.decision=rolled-back``. ``previous-champion`` moves to
    the champion that the restored version had replaced, or is removed, so a second rollback goes
    one step further back. Raises :class:`RegistryError` when there is no previous champion.
    """
    client = MlflowClient()
    previous = get_alias_version(name, PREVIOUS_CHAMPION)
    if previous is None:
        raise RegistryError(f"cannot roll back {name}: it has no {PREVIOUS_CHAMPION} version")
    champion = get_alias_version(name, CHAMPION)
    if champion is not None:
        client.set_model_version_tag(name, str(champion), TAG_DECISION, "rolled-back")
    client.set_registered_model_alias(name, CHAMPION, str(previous))
    client.set_model_version_tag(name, str(previous), TAG_DECISION, "restored")
    before = client.get_model_version(name, str(previous)).tags.get(TAG_REPLACED_CHAMPION)
    if before is not None and int(before) != champion:
        client.set_registered_model_alias(name, PREVIOUS_CHAMPION, before)
    else:
        client.delete_registered_model_alias(name, PREVIOUS_CHAMPION)
    return previous


def find_version(name: str, tags: Mapping[str, str]) -> int | None:
    """The newest version of ``name`` whose tags include all of ``tags``; None if there is none."""
    if not tags:
        raise ValueError("find_version needs at least one tag to match")
    conditions = [f"name = '{_quoted(name)}'"]
    conditions += [f"tags.`{key}` = '{_quoted(str(value))}'" for key, value in tags.items()]
    versions = MlflowClient().search_model_versions(" and ".join(conditions))
    matching = [int(v.version) for v in versions if all(v.tags.get(k) == str(t) for k, t in tags.items())]
    return max(matching, default=None)


def _quoted(value: str) -> str:
    if "'" in value or "`" in value or "\\" in value:
        raise ValueError(f"quotes and backslashes are not supported in registry names or tags: {value!r}")
    return value
