"""The ``iris`` command.

Overrides follow the paper code's style: ``iris config show env=atari params=atari
env.train.id=BreakoutNoFrameskip-v4``.

Every expected failure (bad configuration, an unknown game, a missing GPU, a workspace that cannot
be written, a running campaign, an unknown model, a missing optional extra...) ends with one line,
``error: <cause>: <what to change>``, and exit code 2, without a traceback (``iris --debug``
shows it); what can be checked before any work or write is (:mod:`pipelines.preflight`). Ctrl-C
ends with one line and exit code 130. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import logging
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
import typer.core
import typer.exceptions

from iris_core.config import ConfigError
from pipelines import config as config_loader
from pipelines import preflight
from pipelines.errors import EXIT_USER_ERROR, UserError, one_line
from pipelines.viewer import cli as viewer_cli

if TYPE_CHECKING:
    from pipelines.config import Experiment

EXIT_BAD_CONFIG = EXIT_USER_ERROR
EXIT_INTERRUPTED = 130


class GuardedCommand(typer.core.TyperCommand):
    """A command whose expected failures end in one line and exit code 2 (see the module docstring)."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.exceptions.TyperException):
            raise  # typer's own exits and usage errors
        except KeyboardInterrupt:
            if DEBUG:
                raise
            typer.echo("interrupted", err=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except Exception as error:
            _exit_with_one_line(error)


def _exit_with_one_line(error: Exception, prefix: str = "") -> NoReturn:
    """Exit with ``error: <prefix><one line>`` for errors a user can act on; re-raise the others
    (bugs keep their traceback), and every error under ``iris --debug``."""
    message = one_line(error)
    if message is None or DEBUG:
        raise error
    typer.echo(f"error: {prefix}{message}", err=True)
    raise typer.Exit(EXIT_USER_ERROR) from None


class GuardedTyper(typer.Typer):
    """Every command registered on it is a :class:`GuardedCommand`."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        kwargs.setdefault("cls", GuardedCommand)
        return super().command(*args, **kwargs)


app = GuardedTyper(
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


config_app = GuardedTyper(help="Show, check and write the experiment configuration.", no_args_is_help=True)
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


def _check_override_syntax(overrides: list[str]) -> None:
    """Each override's value parses as YAML (the config loader reads it so): name the one that
    does not, before its parser's traceback could."""
    import yaml

    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            continue  # the loader names overrides that are not key=value
        try:
            yaml.safe_load(value)
        except yaml.YAMLError as error:
            problem = " ".join(str(getattr(error, "problem", None) or error).split())
            raise UserError(
                f"invalid configuration: {key.strip()}={value}: cannot parse the value ({problem}); "
                "close its brackets and quotes (a list: key=[1,2])"
            ) from None


def _params_text(overrides: list[str] | None, params_file: Path | None) -> tuple[str, Experiment]:
    _check_override_syntax(overrides or [])
    return config_loader.params_text(overrides=overrides or [], params_file=params_file)


def _check_campaign(workspace: Path, experiment: Experiment) -> None:
    """Everything a campaign needs that can be checked before anything is written."""
    preflight.check_folder(workspace, "--workspace")
    preflight.check_config(experiment.config)
    preflight.check_campaign_free(workspace)


def _remove_if_unstarted(workspace: Path) -> None:
    """Remove a workspace this command created if no stage started in it (a failure before the
    first stage leaves nothing behind)."""
    from pipelines.workspace import Workspace as Files

    started = (workspace / "dvc.lock").exists() or Files(workspace).log("init").parent.exists()
    if workspace.is_dir() and not started:
        shutil.rmtree(workspace, ignore_errors=True)


class _NoTracebackWhenExpected(logging.Filter):
    """Prefect logs a failed flow run with its traceback; for an expected failure (which the
    command then names in one line) or an interrupt, the log line is enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is not None and (isinstance(error, KeyboardInterrupt) or one_line(error) is not None):
            record.exc_info, record.exc_text = None, None
        return True


def _api_server_outlives_ctrl_c() -> None:
    """Start Prefect's ephemeral API server in a session of its own.

    Ctrl-C in a terminal reaches the whole foreground process group: the server would stop at
    once, and the interrupted flow could then neither record its crash nor shut down (Prefect
    waits for the dead server at exit). In its own session the server lives until Prefect stops it
    at exit, as after any other run. Only the server's module sees the change."""
    import subprocess
    import types

    from prefect.server.api import server

    if getattr(server, "subprocess", None) is not subprocess:
        return  # done already (or Prefect changed: leave it alone)
    own_session = types.ModuleType("subprocess", "subprocess, with Popen in a new session")
    own_session.__dict__.update(vars(subprocess))
    own_session.__dict__["Popen"] = functools.partial(subprocess.Popen, start_new_session=True)
    setattr(server, "subprocess", own_session)  # noqa: B010 (not an exported name)


def _run_flow(workspace: Path, params_yaml: str | None) -> None:
    """The campaign through the Prefect flow (embedded API), stage by stage through DVC."""
    from pipelines.flows.train import run_train

    _api_server_outlives_ctrl_c()
    if not DEBUG:
        for handler in logging.getLogger().handlers:  # Prefect's console handler
            handler.addFilter(_NoTracebackWhenExpected())
    try:
        summary = run_train(workspace=str(workspace), params_yaml=params_yaml)
    except KeyboardInterrupt:
        typer.echo(f"interrupted: `iris resume --workspace {workspace}` continues the campaign", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    finally:
        # The flow is over: Prefect's teardown chatter ("Stopping temporary server") would come
        # after the command's last line.
        logging.getLogger("prefect").setLevel(logging.WARNING)
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


def _run_in_process(workspace: Path, params_yaml: str) -> None:
    """Every stage in this process, in order, under the campaign lock; each stage's output is
    kept in ``.iris/logs/<stage>.log`` as when DVC runs it."""
    from pipelines.atomic import atomic_write_text
    from pipelines.config import load_experiment
    from pipelines.console import console_log
    from pipelines.flows.lock import CampaignLock
    from pipelines.interrupts import catching_interrupts
    from pipelines.stages.runner import run_stage, stage_order
    from pipelines.workspace import Workspace as Files

    files = Files(workspace)
    workspace.mkdir(parents=True, exist_ok=True)
    with catching_interrupts(), CampaignLock(workspace, holder="iris train --in-process"):
        atomic_write_text(files.params, params_yaml)
        experiment = load_experiment(params_file=files.params)
        for spec in stage_order(experiment.loop):
            # The stage's last line (its error, or the interruption) goes to its log too.
            with console_log(files.log(spec.name), spec.name):
                try:
                    run_stage(workspace, spec, experiment=experiment)
                except KeyboardInterrupt:
                    typer.echo(
                        f"{spec.name}: interrupted; `iris train --in-process --workspace {workspace}` "
                        "with the same params continues (training stages from their mid-stage checkpoints)",
                        err=True,
                    )
                    raise typer.Exit(EXIT_INTERRUPTED) from None
                except Exception as error:
                    _exit_with_one_line(error, prefix=f"{spec.name}: ")


def _use_tracking_store(workspace: Path) -> None:
    """Point MLflow at the workspace's store for reading models, creating nothing in it (unlike
    ``tracking.configure``, which adds the campaign experiment if it is missing)."""
    import os

    import mlflow

    from pipelines import tracking

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # as tracking.configure
    mlflow.set_tracking_uri(tracking.tracking_uri(workspace))


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
    text, experiment = _params_text(overrides, params_file)
    _check_campaign(workspace, experiment)
    existed = workspace.exists()
    try:
        if in_process:
            _run_in_process(workspace, text)
            typer.echo(_where_to_look(workspace))
        else:
            _run_flow(workspace, text)
    except Exception as error:
        if not existed and one_line(error) is not None:
            _remove_if_unstarted(workspace)
        raise


@app.command("resume")
def resume(workspace: Workspace = Path(".")) -> None:
    """Continue an interrupted campaign: DVC re-runs what is missing or stale, training stages
    continue from their mid-stage checkpoints."""
    if not (workspace / "params.yaml").is_file():
        raise _fail_with(f"no campaign in {workspace}: params.yaml is missing (start one with `iris train`)")
    experiment = config_loader.load_experiment(params_file=workspace / "params.yaml")
    _check_campaign(workspace, experiment)
    _run_flow(workspace, None)


@app.command("evaluate")
def evaluate(
    model: Annotated[
        str, typer.Option("--model", "-m", help="models:/<name>@<alias> or models:/<name>/<version>.")
    ],
    workspace: Workspace = Path("."),
    episodes: Annotated[int | None, typer.Option(help="Test episodes (default: the model's config).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the test environments.")] = 0,
    device: Annotated[
        str | None, typer.Option(help="cpu, cuda, cuda:<n> or auto (default: the model's config).")
    ] = None,
) -> None:
    """Play test episodes with a registered agent; print the mean return with its 95% bootstrap
    confidence interval and the Crafter score (or the Atari human-normalised score)."""
    if episodes is not None and episodes < 1:
        raise _fail_with(f"--episodes {episodes}: give at least 1")
    if device is not None:
        preflight.check_device(device, "--device")
    preflight.check_tracking_store(workspace)

    import tempfile

    from pipelines import tracking

    _use_tracking_store(workspace)
    with tempfile.TemporaryDirectory() as folder:
        try:
            weights, config_file = tracking.download_agent(model, Path(folder))
        except Exception as error:  # an unknown model, alias or version
            raise _fail_with(
                f"cannot load {model} from the MLflow store of {workspace}: {str(error).splitlines()[0]}"
            ) from None
        import dataclasses

        import numpy as np
        import torch
        from scipy.stats import bootstrap

        from iris_core.models.agent import Agent
        from iris_core.training.evaluate import play_test_episodes, summarise_test_episodes
        from iris_core.training.scores import human_normalized_score
        from pipelines.stages.common import resolve_device
        from pipelines.tracking.policy import load_agent_config

        config = load_agent_config(config_file)
        if episodes is not None:
            test = dataclasses.replace(config.collection.test, num_episodes=episodes)
            config = dataclasses.replace(config, collection=dataclasses.replace(config.collection, test=test))
        if device is None:
            preflight.check_device(config.common.device, f"common.device of {model} (or --device)")
        preflight.check_env(config.env.test, f"env.test of {model}")
        agent = Agent(config).to(resolve_device(device or config.common.device))
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
    if not rollback:
        raise _fail_with(
            "nothing to do: promotion runs in the pipeline (promote@i); use --rollback to undo one"
        )
    name = model
    if name is None:
        if not (workspace / "params.yaml").is_file():
            raise _fail_with(
                f"no campaign in {workspace} (no params.yaml): pass --workspace of a campaign, "
                "or --model <registered name>"
            )
        experiment = config_loader.load_experiment(params_file=workspace / "params.yaml")
        env = experiment.config.env.train.id or experiment.config.env.train.kind
        name = f"delta-iris-{env}"
    preflight.check_tracking_store(workspace)

    from pipelines import tracking

    _use_tracking_store(workspace)
    version = tracking.rollback(name)
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

    if not workspace.is_dir():
        raise _fail_with(f"--workspace {workspace} is not a folder: pass the workspace of a campaign")
    preflight.check_tracking_store(workspace)
    preflight.check_port_free(mlflow_port, "--mlflow-port")
    preflight.check_port_free(prefect_port, "--prefect-port")
    bin_dir = Path(sys.executable).parent
    for tool in ("mlflow", "prefect"):
        if not (bin_dir / tool).is_file():
            raise _fail_with(f"{tool} is not installed in {bin_dir}: pip install -e .")

    from pipelines import tracking

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


def _checked_viewer(command: Callable[..., None]) -> Callable[..., None]:
    """A viewer command (pipelines/viewer/cli.py) behind the checks of its options: the device,
    and pygame for the play window."""

    @functools.wraps(command)
    def run(**options: Any) -> None:
        if options.get("device") is not None:
            preflight.check_device(str(options["device"]), "--device")
        if command is viewer_cli.play and options.get("record_frames") is None:
            preflight.check_module("pygame", "gui", "the play window", "or --record N for a video, no window")
        command(**options)

    return run


# Looking at agents, world models and campaigns (pipelines/viewer, docs/viewing.md).
app.command("dream")(_checked_viewer(viewer_cli.dream))
app.command("report")(_checked_viewer(viewer_cli.report))
app.command("play")(_checked_viewer(viewer_cli.play))


@config_app.command("show")
def config_show(overrides: Overrides = None, params_file: ParamsFile = None) -> None:
    """Print the resolved configuration (derived sizes filled in) as YAML."""
    _check_override_syntax(overrides or [])
    cfg = config_loader.load_config(overrides=overrides or [], params_file=params_file)
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
    if output != "-":
        preflight.check_output_file(Path(output), "--output")
    text, _ = _params_text(overrides, params_file)
    if output == "-":
        sys.stdout.write(text)
        return
    from pipelines.atomic import atomic_write_text

    atomic_write_text(Path(output), text)
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
