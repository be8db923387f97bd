"""The `train` flow: the DVC pipeline of one workspace, walked stage by stage.

Each stage is one task running `dvc repro --single-item <stage>`, so DVC alone decides what is up to
date: re-running the flow on a workspace resumes it (finished stages are fast no-ops). The flow holds
the workspace's campaign lock for its whole run, retries transient stage failures only, publishes a
markdown summary as each iteration completes and keeps a progress artifact for the campaign. After
the campaign's last promotion it writes the campaign's report (``iris report``), attaches it to the
campaign's MLflow parent run and publishes it (markdown and link artifacts). Tasks hand on
identifiers (paths, stage names, metric dicts), never tensors.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any, cast
from uuid import UUID

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from pipelines.flows.dag import read_plan
from pipelines.flows.lock import CampaignLock
from pipelines.flows.prepare import is_workspace, prepare_workspace
from pipelines.flows.reports import (
    artifact_key,
    iteration_markdown,
    mlflow_artifact_url,
    mlflow_ui_base,
    promotion_summary,
    read_iteration,
)
from pipelines.flows.settings import embedded_settings
from pipelines.flows.stages import dvc, repro_stage, stale_stages, tool_environment

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@task(name="prepare-workspace", cache_policy=NO_CACHE, persist_result=False)
def prepare(workspace: str, params_yaml: str, dvc_yaml: str) -> dict[str, Any]:
    prepared = prepare_workspace(Path(workspace), params_yaml_text=params_yaml, dvc_yaml=Path(dvc_yaml))
    return {
        "created": prepared.created,
        "changed": prepared.changed,
        "saved_experiment": prepared.saved_experiment,
    }


@task(name="check-stages", cache_policy=NO_CACHE, persist_result=False)
def check_stages(workspace: str, stages: list[str]) -> None:
    """Fail before running anything if `dvc.yaml` lacks a stage that `params.yaml` implies."""
    listed = subprocess.run(
        dvc("stage", "list", "--name-only"),
        cwd=workspace,
        env=tool_environment(),
        capture_output=True,
        text=True,
        check=False,
    )
    if listed.returncode != 0:
        raise RuntimeError(f"`dvc stage list` failed in {workspace}: {listed.stderr.strip()}")
    missing = sorted(set(stages) - set(listed.stdout.split()))
    if missing:
        raise ValueError(f"dvc.yaml in {workspace} has no stages {missing} that params.yaml implies")


@task(name="dvc-status", cache_policy=NO_CACHE, persist_result=False)
def up_to_date_prefix(workspace: str, stages: list[str], env: dict[str, str]) -> int:
    """How many stages at the start of the plan `dvc status` finds up to date.

    Only a leading run of clean stages can be passed over: once a stage runs, the stages after it may
    depend on what it wrote, so from there on each goes through `dvc repro`, which decides.
    """
    stale = stale_stages(Path(workspace), env)
    if stale is None:
        return 0
    count = 0
    for stage in stages:
        if stage in stale:
            break
        count += 1
    return count


@task(name="publish-iteration", cache_policy=NO_CACHE, persist_result=False)
def publish_iteration(workspace: str, iteration: str, campaign: str) -> dict[str, Any]:
    """The iteration's markdown artifact; returns its key and the promotion decision, if any."""
    record = read_iteration(Path(workspace), iteration)
    key = artifact_key(campaign, "iteration", iteration)
    create_markdown_artifact(
        markdown=iteration_markdown(record, campaign),
        key=key,
        description=f"Iteration {iteration} of campaign {campaign}",
    )
    return {"artifact": key, "promotion": promotion_summary(record)}


@task(name="publish-report", cache_policy=NO_CACHE, persist_result=False)
def publish_report(workspace: str, campaign: str) -> dict[str, Any]:
    """The campaign's report in ``<workspace>/views/report`` (with the latest evaluation's dream, no
    new one), attached to the campaign's MLflow parent run under ``report/`` and published as a
    markdown artifact (its tables) and a link artifact: in MLflow's UI when attached, to
    ``summary.html`` (text and tables, which the UI previews; ``report.html`` beside it has the
    figures but is too large for the preview), else to the local ``report.html``. A report that
    cannot be made is a warning, not a failed campaign."""
    from pipelines.viewer.report import (
        REPORT_ARTIFACT_PATH,
        artifact_markdown,
        attach_to_run,
        campaign_mlflow,
        write_report,
    )

    logger = get_run_logger()
    root = Path(workspace)
    try:
        report = write_report(root, root / "views" / "report")
    except Exception as error:  # a view of the results: the campaign itself has succeeded
        logger.warning("No report for campaign %s: %s: %s", campaign, type(error).__name__, error)
        return {"error": f"{type(error).__name__}: {error}"}
    links: dict[str, str] = {}
    attached: dict[str, str] | None = None
    tracking = campaign_mlflow(root)
    if tracking is not None:
        run_id = str(tracking["parent_run_id"])
        try:
            path = attach_to_run(report, str(tracking["tracking_uri"]), run_id)
        except Exception as error:  # the tracking store is unreachable or refuses the files
            logger.warning("Report not attached to MLflow run %s: %s", run_id, error)
        else:
            attached = {"run_id": run_id, "path": path}
            if tracking.get("experiment_id") is not None:
                base, experiment = mlflow_ui_base(), str(tracking["experiment_id"])
                summary = f"{REPORT_ARTIFACT_PATH}/{report.summary.name}"
                links["summary in MLflow"] = mlflow_artifact_url(base, experiment, run_id, summary)
                links["report with figures in MLflow"] = mlflow_artifact_url(base, experiment, run_id, path)
    key, link_key = artifact_key(campaign, "report"), artifact_key(campaign, "report-html")
    create_markdown_artifact(
        markdown=artifact_markdown(report, links), key=key, description=f"Report of campaign {campaign}"
    )
    create_link_artifact(
        link=links.get("summary in MLflow", report.html.resolve().as_uri()),
        link_text=f"report of campaign {campaign}",
        key=link_key,
        description="The campaign's report: in MLflow, summary.html previews; report.html has the figures",
    )
    return {"artifact": key, "link_artifact": link_key, "html": str(report.html), "mlflow": attached}


def _resolve_inputs(root: Path, params_yaml: str | None, dvc_yaml: str | None) -> tuple[str, str] | None:
    """The params text and dvc.yaml path to prepare the workspace with; None to use it as it is."""
    if params_yaml is None and dvc_yaml is None and is_workspace(root):
        return None
    if params_yaml is None:
        source = root / "params.yaml" if (root / "params.yaml").exists() else PROJECT_ROOT / "params.yaml"
        params_yaml = source.read_text()
    if dvc_yaml is None:
        dvc_yaml = str(root / "dvc.yaml" if (root / "dvc.yaml").exists() else PROJECT_ROOT / "dvc.yaml")
    return params_yaml, dvc_yaml


@flow(name="train", persist_result=False)
def train(
    workspace: str = ".",
    params_yaml: str | None = None,
    dvc_yaml: str | None = None,
    retries: int = 2,
    retry_delay_seconds: float = 30.0,
    campaign: str | None = None,
) -> dict[str, Any]:
    """Run (or resume) the campaign of a workspace.

    Args:
        workspace: the workspace folder (created if missing); relative paths are resolved against
            the flow run's working directory.
        params_yaml: the text of `params.yaml` for the campaign. None keeps the workspace's (or, for
            a new folder, the project's). Different params in a workspace with results save the
            earlier campaign as a DVC experiment first.
        dvc_yaml: a `dvc.yaml` to copy in; None keeps the workspace's (or uses the project's).
        retries: how often a transiently failed stage is retried (permanent failures never are).
        retry_delay_seconds: the wait before each retry.
        campaign: the name in artifact keys and titles; defaults to the workspace folder's name.

    Returns:
        `{"workspace", "campaign", "saved_experiment", "stages": [{"stage", "ran", "seconds"}, ...],
        "ran": [stage, ...], "iterations": {i: {"artifact", "promotion"}}, "progress_artifact"}`.
        `"report"`: what the campaign's report became after the last promotion (`{"artifact",
        "link_artifact", "html", "mlflow"}`, `{"error"}` if it could not be written, None when the
        plan has no promotion). The finished stages at the start of the plan, found by one `dvc
        status`, are listed with `"checked_by": "dvc status"` instead of one `dvc repro` each.
    """
    if retries < 0 or retry_delay_seconds < 0:
        raise ValueError(f"retries ({retries}) and retry_delay_seconds ({retry_delay_seconds}) must be >= 0")
    logger = get_run_logger()
    root = Path(workspace).resolve()
    name = campaign or root.name
    with CampaignLock(root, holder=f"flow run {flow_run.id}"):
        inputs = _resolve_inputs(root, params_yaml, dvc_yaml)
        prepared = prepare(str(root), *inputs) if inputs is not None else {"saved_experiment": None}
        if prepared["saved_experiment"]:
            logger.info("Earlier campaign saved as DVC experiment %r", prepared["saved_experiment"])
        plan = read_plan(root)
        stages = plan.stages()
        check_stages(str(root), stages)

        progress_key = artifact_key(name, "progress")
        progress_id = cast(
            UUID,
            create_progress_artifact(
                progress=0.0, key=progress_key, description=f"Stages of campaign {name}"
            ),
        )
        closing = {plan.closing_stage(i): i for i in plan.iterations}
        promotions = [stage for stage in stages if stage.startswith("promote@")]
        last_promotion = promotions[-1] if promotions else None
        report: dict[str, Any] | None = None
        stage_env = {"IRIS_CAMPAIGN": name, "IRIS_FLOW_RUN_ID": str(flow_run.id or "")}
        run = repro_stage.with_options(retries=retries, retry_delay_seconds=retry_delay_seconds)
        outcomes: list[dict[str, Any]] = []
        iterations: dict[str, dict[str, Any]] = {}
        finished = up_to_date_prefix(str(root), stages, stage_env)
        if finished:
            logger.info(
                "%d of %d stages are up to date (dvc status); resuming after %s",
                finished,
                len(stages),
                stages[finished - 1],
            )
        for done, stage in enumerate(stages, start=1):
            if done <= finished:
                outcomes.append({"stage": stage, "ran": False, "seconds": 0.0, "checked_by": "dvc status"})
            else:
                outcomes.append(run(str(root), stage, env=stage_env))
            if done >= finished:
                update_progress_artifact(
                    progress_id,
                    progress=100.0 * done / len(stages),
                    description=f"{done}/{len(stages)} stages of campaign {name} done (last: {stage})",
                )
            if stage in closing:
                iterations[closing[stage]] = publish_iteration(str(root), closing[stage], name)
            if stage == last_promotion:
                report = publish_report(str(root), name)
    return {
        "workspace": str(root),
        "campaign": name,
        "saved_experiment": prepared["saved_experiment"],
        "stages": outcomes,
        "ran": [outcome["stage"] for outcome in outcomes if outcome["ran"]],
        "iterations": iterations,
        "progress_artifact": progress_key,
        "report": report,
    }


def run_train(**parameters: Any) -> dict[str, Any]:
    """The embedded entry point: `train(...)` on Prefect's ephemeral API, offline, no heartbeats."""
    with embedded_settings():
        summary: dict[str, Any] = train(**parameters)
    return summary
