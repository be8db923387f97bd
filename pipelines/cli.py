"""The ``iris`` command.

Overrides follow the paper code's style: ``iris config show env=atari params=atari
env.train.id=BreakoutNoFrameskip-v4``. Bad configuration exits with code 2 and names the key.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from iris_core.config import ConfigError
from pipelines import config as config_loader

EXIT_BAD_CONFIG = 2

app = typer.Typer(
    name="iris",
    help="Δ-IRIS: world-model agent training as versioned, orchestrated stages.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
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


@app.command("train")
def train(
    overrides: Overrides = None,
    params_file: ParamsFile = None,
    run_dir: Annotated[
        Path | None, typer.Option("--run-dir", help="Run folder (default: outputs/<date>/<time>).")
    ] = None,
) -> None:
    """Run a whole training campaign (collect → tokenizer → world model → actor-critic → evaluate)."""
    try:
        cfg = config_loader.load_config(overrides=overrides or [], params_file=params_file)
    except ConfigError as error:
        raise _fail(error) from None
    from pipelines.campaign import EpochReport, run_campaign  # heavy imports only when training

    folder = run_dir or Path("outputs") / time.strftime("%Y-%m-%d/%H-%M-%S")
    typer.echo(f"run folder: {folder}")

    def show(report: EpochReport) -> None:
        parts = [f"epoch {report.epoch:4d}", f"{report.seconds:6.1f}s", f"episodes {report.num_episodes}"]
        for key in (
            "collect/return_mean",
            "tokenizer/train/reconstruction_loss_l2",
            "world_model/train/loss_latents",
            "actor_critic/train/policy_entropy",
            "test/return_mean",
            "test/crafter_score",
        ):
            value = {**report.train, **report.evaluation}.get(key)
            if value is not None:
                parts.append(f"{key.replace('/train', '')} {value:.4g}")
        typer.echo("  ".join(parts))

    run_campaign(cfg, folder, on_epoch=show)
    typer.echo(f"done: metrics in {folder / 'metrics.jsonl'}, agent in {folder / 'agent.pt'}")


@app.command("stage")
def stage(
    name: Annotated[str, typer.Argument(help="init, or <kind>@<iteration> (tokenizer@3), as in dvc.yaml.")],
    workspace: Annotated[Path, typer.Option("--workspace", "-w", help="Workspace folder.")] = Path("."),
) -> None:
    """Run one pipeline stage (what `dvc repro` runs; see dvc.yaml)."""
    from pipelines.stages.cli import main as run_one

    raise typer.Exit(run_one(name, workspace))


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
    output: Annotated[Path, typer.Option("--output", "-o", help="File to write.")] = Path("params.yaml"),
) -> None:
    """Check the configuration and write it as plain values (default: params.yaml)."""
    try:
        config_loader.write_params(output, overrides=overrides or [])
    except ConfigError as error:
        raise _fail(error) from None
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
