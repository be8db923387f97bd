"""The ``iris`` command.

Overrides follow the paper code's style: ``iris config show env=atari params=atari
env.train.id=BreakoutNoFrameskip-v4``. Bad configuration exits with code 2 and names the key.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from iris_core.config import ConfigError
from pipelines import config as config_loader
from pipelines.viewer import cli as viewer_cli

EXIT_BAD_CONFIG = 2

app = typer.Typer(
    name="iris",
    help="Δ-IRIS: world-model agent training as versioned, orchestrated stages.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
DEBUG = False


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of expected errors.")] = False,
) -> None:
    global DEBUG
    DEBUG = debug


config_app = typer.Typer(help="Show, check and write the experiment configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")

Overrides = Annotated[
    list[str] | None,
    typer.Argument(
        help="Preset choices and dot-list overrides: env=<preset> params=<preset> section.key=value ...",
        show_default=False,
    ),
]
ParamsFile = Annotated[
    Path | None,
    typer.Option("--params-file", "-f", help="Start from this params.yaml instead of the presets."),
]


def _fail(error: ConfigError) -> typer.Exit:
    typer.echo(f"error: invalid configuration: {error}", err=True)
    return typer.Exit(EXIT_BAD_CONFIG)


Workspace = Annotated[
    Path,
    typer.Option(
        "--workspace", "-w", help="Workspace folder (a git repo with dvc.yaml; created if missing)."
    ),
]


def _fail_with(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(EXIT_BAD_CONFIG)


def _run_flow(workspace: Path, params_yaml: str | None) -> None:
    """The campaign through the Prefect flow (embedded API), stage by stage through DVC."""
    from pipelines.flows.lock import CampaignRunningError
    from pipelines.flows.prepare import WorkspaceError
    from pipelines.flows.stages import StageError as FlowStageError
    from pipelines.flows.train import run_train

    try:
        summary = run_train(workspace=str(workspace), params_yaml=params_yaml)
    except KeyboardInterrupt:
        typer.echo(f"interrupted: `iris resume --workspace {workspace}` continues the campaign", err=True)
        raise typer.Exit(130) from None
    except (FlowStageError, CampaignRunningError, WorkspaceError) as error:
        if DEBUG:
            raise
        raise _fail_with(str(error)) from None
    ran = summary.get("ran", [])
    typer.echo(f"campaign {summary['campaign']}: {len(ran)} stage(s) ran, the rest were up to date")
    for iteration, record in sorted(summary.get("iterations", {}).items(), key=lambda kv: int(kv[0])):
        promotion = record.get("promotion") or {}
        if promotion:
            typer.echo(
                f"  iteration {iteration}: {promotion.get('decision')} "
                f"(version {promotion.get('version')}: {promotion.get('reason')})"
            )
    typer.echo(_where_to_look(workspace))


def _where_to_look(workspace: Path) -> str:
    return (
        f"results in {workspace}: dvc.lock, data/episodes/*.zarr, state/, metrics/, plots/, media/, "
        "promotion/; MLflow and Prefect UIs: `iris ui`"
    )


@app.command("train")
def train(
    overrides: Overrides = None,
    params_file: ParamsFile = None,
    workspace: Workspace = Path("."),
    in_process: Annotated[
        bool,
        typer.Option(
            "--in-process", help="Run every stage in this process, without Prefect and DVC (debugging)."
        ),
    ] = False,
) -> None:
    """Train a campaign: write params.yaml from presets and overrides, then run every stage
    (collect → tokenizer → world model → actor-critic → evaluate → promote, per iteration)
    through the Prefect flow and DVC. An earlier campaign with other params in the same
    workspace is saved as a DVC experiment first."""
    try:
        text, _ = config_loader.params_text(overrides=overrides or [], params_file=params_file)
    except ConfigError as error:
        raise _fail(error) from None
    if in_process:
        from pipelines.atomic import atomic_write_text
        from pipelines.stages.runner import run_campaign

        workspace.mkdir(parents=True, exist_ok=True)
        atomic_write_text(workspace / "params.yaml", text)
        run_campaign(workspace)
        typer.echo(_where_to_look(workspace))
        return
    _run_flow(workspace, text)


@app.command("resume")
def resume(workspace: Workspace = Path(".")) -> None:
    """Continue an interrupted campaign: DVC re-runs what is missing or stale, training stages
    continue from their mid-stage checkpoints."""
    if not (workspace / "params.yaml").is_file():
        raise _fail_with(f"no campaign in {workspace}: params.yaml is missing (start one with `iris train`)")
    try:
        config_loader.load_experiment(params_file=workspace / "params.yaml")
    except ConfigError as error:
        raise _fail(error) from None
    _run_flow(workspace, None)


@app.command("evaluate")
def evaluate(
    model: Annotated[
        str, typer.Option("--model", "-m", help="models:/<name>@<alias> or models:/<name>/<version>.")
    ],
    workspace: Workspace = Path("."),
    episodes: Annotated[int | None, typer.Option(help="Test episodes (default: the model's config).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the test environments.")] = 0,
) -> None:
    """Play test episodes with a registered agent; print the mean return with its 95% bootstrap
    confidence interval and the Crafter score (or the Atari human-normalised score)."""
    import dataclasses
    import tempfile

    import numpy as np
    import torch
    from scipy.stats import bootstrap

    from iris_core.models.agent import Agent
    from iris_core.training.evaluate import play_test_episodes, summarise_test_episodes
    from iris_core.training.scores import human_normalized_score
    from pipelines import tracking
    from pipelines.stages.common import resolve_device
    from pipelines.tracking.policy import load_agent_config

    tracking.configure(workspace)
    with tempfile.TemporaryDirectory() as folder:
        try:
            weights, config_file = tracking.download_agent(model, Path(folder))
        except Exception as error:  # an unknown model, alias or version
            raise _fail_with(f"cannot load {model}: {str(error).splitlines()[0]}") from None
        config = load_agent_config(config_file)
        if episodes is not None:
            test = dataclasses.replace(config.collection.test, num_episodes=episodes)
            config = dataclasses.replace(config, collection=dataclasses.replace(config.collection, test=test))
        agent = Agent(config).to(resolve_device(config.common.device))
        agent.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    torch.manual_seed(seed)
    results = play_test_episodes(agent, config, env_seed=2_000_000 + seed)
    summary = summarise_test_episodes(results)
    returns = np.array([m.episode_return for m in results], dtype=np.float64)
    if len(returns) > 1 and np.ptp(returns) > 0:
        ci = bootstrap((returns,), np.mean, confidence_level=0.95, random_state=seed).confidence_interval
        interval = f"[{ci.low:.3g}, {ci.high:.3g}]"
    else:
        interval = "(no spread)"
    typer.echo(f"{model}: {len(returns)} episodes, return {returns.mean():.3g}, 95% CI {interval}")
    if "test/crafter_score" in summary:
        typer.echo(f"Crafter score: {summary['test/crafter_score']:.3g}%")
    elif config.env.test.kind == "atari" and config.env.test.id:
        typer.echo(
            f"human-normalised score: {human_normalized_score(config.env.test.id, float(returns.mean())):.3g}"
        )


@app.command("promote")
def promote(
    rollback: Annotated[
        bool, typer.Option("--rollback", help="Make the previous champion the champion again.")
    ] = False,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Registered model name.")] = None,
    workspace: Workspace = Path("."),
) -> None:
    """Manage the champion of a registered model (promotion itself is a pipeline stage)."""
    from pipelines import tracking

    if not rollback:
        raise _fail_with(
            "nothing to do: promotion runs in the pipeline (promote@i); use --rollback to undo one"
        )
    name = model
    if name is None:
        try:
            experiment = config_loader.load_experiment(params_file=workspace / "params.yaml")
        except ConfigError as error:
            raise _fail(error) from None
        env = experiment.config.env.train.id or experiment.config.env.train.kind
        name = f"delta-iris-{env}"
    tracking.configure(workspace)
    try:
        version = tracking.rollback(name)
    except tracking.RegistryError as error:
        raise _fail_with(str(error)) from None
    typer.echo(f"{name}: version {version} is the champion again")


@app.command("ui")
def ui(
    workspace: Workspace = Path("."),
    mlflow_port: Annotated[int, typer.Option(help="Port of the MLflow UI.")] = 5000,
    prefect_port: Annotated[int, typer.Option(help="Port of the Prefect UI.")] = 4200,
) -> None:
    """Start the MLflow UI (this workspace's runs and registry) and the Prefect UI (flow runs) on
    127.0.0.1 and print their addresses; Ctrl-C stops both."""
    import os
    import subprocess

    from pipelines import tracking

    bin_dir = Path(sys.executable).parent
    uri = tracking.tracking_uri(workspace)
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    commands = [
        [
            str(bin_dir / "mlflow"),
            "ui",
            "--backend-store-uri",
            uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(mlflow_port),
        ],
        [str(bin_dir / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)],
    ]
    processes = [subprocess.Popen(c, env=env, cwd=workspace) for c in commands]
    typer.echo(f"MLflow UI:  http://127.0.0.1:{mlflow_port}  (runs and the model registry of {workspace})")
    typer.echo(f"Prefect UI: http://127.0.0.1:{prefect_port}  (flow runs, artifacts, deployments)")
    typer.echo("Ctrl-C stops both.")
    try:
        for process in processes:
            process.wait()
    except KeyboardInterrupt:
        typer.echo("stopping the UIs")
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)


@app.command("stage")
def stage(
    name: Annotated[str, typer.Argument(help="init, or <kind>@<iteration> (tokenizer@3), as in dvc.yaml.")],
    workspace: Annotated[Path, typer.Option("--workspace", "-w", help="Workspace folder.")] = Path("."),
) -> None:
    """Run one pipeline stage (what `dvc repro` runs; see dvc.yaml)."""
    from pipelines.stages.cli import main as run_one

    raise typer.Exit(run_one(name, workspace))


# Looking at agents, world models and campaigns (pipelines/viewer, docs/viewing.md).
app.command("dream")(viewer_cli.dream)
app.command("report")(viewer_cli.report)
app.command("play")(viewer_cli.play)


@config_app.command("show")
def config_show(overrides: Overrides = None, params_file: ParamsFile = None) -> None:
    """Print the resolved configuration (derived sizes filled in) as YAML."""
    try:
        cfg = config_loader.load_config(overrides=overrides or [], params_file=params_file)
    except ConfigError as error:
        raise _fail(error) from None
    sys.stdout.write(config_loader.to_yaml(cfg))


@config_app.command("write")
def config_write(
    overrides: Overrides = None,
    params_file: ParamsFile = None,
    output: Annotated[
        str, typer.Option("--output", "-o", help="File to write; - for standard output.")
    ] = "params.yaml",
) -> None:
    """Check the configuration and write it as plain values (default: params.yaml)."""
    try:
        text, _ = config_loader.params_text(overrides=overrides or [], params_file=params_file)
    except ConfigError as error:
        raise _fail(error) from None
    if output == "-":
        sys.stdout.write(text)
        return
    target = Path(output)
    if target.is_dir():
        raise _fail_with(f"--output {output} is a folder: give a file name (e.g. {target / 'params.yaml'})")
    try:
        from pipelines.atomic import atomic_write_text

        atomic_write_text(target, text)
    except OSError as error:
        raise _fail_with(f"cannot write {output}: {error.strerror or error}") from None
    typer.echo(f"wrote {output}")


@config_app.command("presets")
def config_presets() -> None:
    """List the available env and params presets."""
    for group in config_loader.PRESET_GROUPS:
        typer.echo(f"{group}: {', '.join(config_loader.available_presets(group))}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
