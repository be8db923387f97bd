"""The viewer commands of ``iris``: ``dream``, ``report``, ``play`` (registered in pipelines/cli.py).

Heavy imports (torch, the models, matplotlib, pygame) happen inside the commands, so ``iris
--help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

EXIT_BAD_INPUT = 2

WorkspaceOption = Annotated[Path, typer.Option("--workspace", help="Workspace folder of the campaign.")]
IterationOption = Annotated[
    int | None,
    typer.Option("--iteration", "-i", help="Agent of this iteration's checkpoints (default: the latest)."),
]
ModelOption = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="A registered agent instead: models:/<name>@<alias> or models:/<name>/<n>.",
    ),
]
DeviceOption = Annotated[str, typer.Option(help="cpu, cuda, or auto.")]


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(EXIT_BAD_INPUT)


def _latest_manifest(workspace: Path) -> int | None:
    found = [int(p.stem) for p in (workspace / "data" / "manifests").glob("*.json") if p.stem.isdigit()]
    found = [i for i in found if i > 0]  # manifest 0 lists no store
    return max(found) if found else None


def dream(
    workspace: WorkspaceOption = Path("."),
    iteration: IterationOption = None,
    model: ModelOption = None,
    data: Annotated[
        int | None,
        typer.Option(help="Take the segments from the episodes of this manifest (default: the latest)."),
    ] = None,
    segments: Annotated[int, typer.Option("--segments", "-n", help="How many real segments.")] = 3,
    horizon: Annotated[int, typer.Option(help="Dreamed steps after the burn-in.")] = 16,
    seed: Annotated[int, typer.Option(help="Seed of the segment choice and the world model's samples.")] = 0,
    fps: Annotated[float, typer.Option(help="Frames per second of the video.")] = 3.0,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output folder (default: <workspace>/views).")
    ] = None,
    device: DeviceOption = "auto",
) -> None:
    """Dream beside reality: burn the world model in on real frames, replay the real actions in it,
    and write the real and dreamed frames side by side (MP4 and PNG strip)."""
    from pipelines.storage import StoreError, ZarrEpisodeDataset
    from pipelines.viewer.dream import dream as run_dream
    from pipelines.viewer.dream import render
    from pipelines.viewer.models import ModelNotFoundError, load_agent

    try:
        loaded = load_agent(workspace, iteration, model, device)
    except ModelNotFoundError as error:
        raise _fail(str(error)) from None
    manifest = data if data is not None else _latest_manifest(workspace)
    if manifest is None:
        raise _fail(f"{workspace} holds no episodes yet (data/manifests/<i>.json)")
    try:
        dataset = ZarrEpisodeDataset.from_manifest(str(workspace / "data" / "manifests" / f"{manifest}.json"))
        result = run_dream(loaded.agent, dataset, num_segments=segments, horizon=horizon, seed=seed)
    except (StoreError, FileNotFoundError, ValueError) as error:
        raise _fail(str(error)) from None
    video, png = render(result, out or workspace / "views", fps=fps, stem=f"dream-{loaded.tag}")
    typer.echo(f"{loaded.source}: {segments} segments, {result.context} real frames then {horizon} dreamed")
    typer.echo(f"video: {video}\nstrip: {png}")


def report(
    workspace: WorkspaceOption = Path("."),
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output folder (default: <workspace>/views/report).")
    ] = None,
    with_dream: Annotated[
        bool, typer.Option("--dream/--no-dream", help="Include a dream strip of the latest agent.")
    ] = True,
    device: DeviceOption = "auto",
) -> None:
    """Write the campaign's report: learning curves, evaluation returns with confidence intervals,
    Crafter achievements or Atari scores, the registry history, reconstructions and a dream."""
    import tempfile

    from pipelines.storage import StoreError, ZarrEpisodeDataset
    from pipelines.viewer.dream import dream as run_dream
    from pipelines.viewer.dream import render
    from pipelines.viewer.models import ModelNotFoundError, load_agent
    from pipelines.viewer.report import write_report

    if not (workspace / "params.yaml").is_file():
        raise _fail(f"{workspace} is not a workspace (no params.yaml)")
    out = out or workspace / "views" / "report"
    with tempfile.TemporaryDirectory() as scratch:
        dream_png = None
        manifest = _latest_manifest(workspace)
        if with_dream and manifest is not None:
            try:
                loaded = load_agent(workspace, device=device)
                dataset = ZarrEpisodeDataset.from_manifest(
                    str(workspace / "data" / "manifests" / f"{manifest}.json")
                )
                result = run_dream(loaded.agent, dataset, num_segments=2, horizon=8)
                _, dream_png = render(result, Path(scratch), stem="dream")
            except (ModelNotFoundError, StoreError, ValueError) as error:
                typer.echo(f"no dream in the report: {error}", err=True)
        html_path, md_path = write_report(workspace, out, dream_png)
    typer.echo(f"HTML: {html_path}\nMarkdown: {md_path}")
