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
        bool,
        typer.Option(
            "--dream/--no-dream",
            help="Dream with the latest agent on the training episodes (--no-dream: show the latest "
            "evaluation's dream, if any).",
        ),
    ] = True,
    mlflow: Annotated[
        bool,
        typer.Option("--mlflow", help="Also attach the report to the campaign's MLflow run (report/)."),
    ] = False,
    device: DeviceOption = "auto",
) -> None:
    """Write the campaign's report: learning curves, the tokenizer's codebook, evaluation returns
    with confidence intervals, Crafter achievements or Atari scores, the registry history,
    reconstructions and a dream."""
    import tempfile

    from pipelines.storage import StoreError, ZarrEpisodeDataset
    from pipelines.viewer.dream import dream as run_dream
    from pipelines.viewer.dream import render
    from pipelines.viewer.models import ModelNotFoundError, load_agent
    from pipelines.viewer.report import attach_to_run, campaign_mlflow, write_report

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
        written = write_report(workspace, out, dream_png)
    typer.echo(f"HTML: {written.html}\nMarkdown: {written.markdown}")
    if mlflow:
        where = campaign_mlflow(workspace)
        if where is None:
            raise _fail("no promotion/<i>.json names the campaign's MLflow run yet")
        path = attach_to_run(written, where["tracking_uri"], where["parent_run_id"])
        typer.echo(f"MLflow: run {where['parent_run_id']}, artifact {path}")


def play(
    workspace: WorkspaceOption = Path("."),
    iteration: IterationOption = None,
    model: ModelOption = None,
    world_model: Annotated[
        bool, typer.Option("--world-model", "-w", help="You play inside the world model.")
    ] = False,
    agent_in_world_model: Annotated[
        bool, typer.Option("--agent-in-world-model", "-a", help="The agent plays inside the world model.")
    ] = False,
    episodes: Annotated[
        bool, typer.Option("--episodes", "-e", help="Replay the stored episodes (latest manifest).")
    ] = False,
    header: Annotated[
        bool, typer.Option("--header/--no-header", help="Show action, reward, done, timestep, return, value.")
    ] = True,
    save: Annotated[
        bool, typer.Option("--save", "-s", help="Record whole episodes to <workspace>/views/recordings.")
    ] = False,
    record_frames: Annotated[
        int | None, typer.Option("--record", help="No window: render N frames to an MP4 and exit.")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="The MP4 of --record.")] = None,
    fps: Annotated[float, typer.Option(help="Frames per second.")] = 5.0,
    size: Annotated[int, typer.Option(help="Frame size on screen, in pixels.")] = 640,
    seed: Annotated[int, typer.Option(help="Seed of the environment and of the samples.")] = 0,
    device: DeviceOption = "auto",
) -> None:
    """Play like the paper code: the agent in the real env (default), you in the world model (-w),
    the agent in the world model (-a), or a replay of stored episodes (-e). Keys: docs/viewing.md."""
    import torch

    from iris_core.envs.factory import make_env
    from pipelines.storage import StoreError, ZarrEpisodeDataset
    from pipelines.viewer.models import ModelNotFoundError, load_agent
    from pipelines.viewer.play import PYGAME_MISSING, record, run_window
    from pipelines.viewer.play_modes import RealEnvMode, ReplayMode, WorldModelMode

    if sum([world_model, agent_in_world_model, episodes]) > 1:
        raise _fail("choose one of -w, -a, -e")
    torch.manual_seed(seed)
    env_kind, names = "crafter", []
    mode: RealEnvMode | WorldModelMode | ReplayMode
    if episodes:
        manifest = _latest_manifest(workspace)
        if manifest is None:
            raise _fail(f"{workspace} holds no episodes yet (data/manifests/<i>.json)")
        try:
            dataset = ZarrEpisodeDataset.from_manifest(
                str(workspace / "data" / "manifests" / f"{manifest}.json")
            )
        except StoreError as error:
            raise _fail(str(error)) from None
        if dataset.num_episodes == 0:
            raise _fail("the manifest lists no episode")
        mode = ReplayMode(dataset)
        from pipelines.config import load_experiment
        from pipelines.workspace import Workspace

        config = load_experiment(params_file=Workspace(workspace).params).config
    else:
        try:
            loaded = load_agent(workspace, iteration, model, device)
        except ModelNotFoundError as error:
            raise _fail(str(error)) from None
        config = loaded.config
        env = make_env(config.env.test, seed)
        names = env_action_names(env, config.env.test.kind)
        if world_model or agent_in_world_model:
            mode = WorldModelMode(env, loaded.agent, human=world_model, noop=_noop(names))
        else:
            mode = RealEnvMode(env, loaded.agent)
    env_kind = config.env.test.kind
    if not names:
        from pipelines.viewer.dream import action_names

        names = action_names(env_kind, config.num_actions)
    scale = max(1, size // config.tokenizer.image_size)
    if record_frames is not None:
        path = record(mode, names, record_frames, out or workspace / "views" / "play.mp4",
                      scale=scale, show_header=header, fps=fps)  # fmt: skip
        typer.echo(f"video: {path}")
        return
    try:
        run_window(mode, names, env_kind, human=world_model, scale=scale, fps=fps, show_header=header,
                   recordings=workspace / "views" / "recordings", save_episodes=save)  # fmt: skip
    except RuntimeError as error:
        if str(error) == PYGAME_MISSING:
            raise _fail(PYGAME_MISSING) from None
        raise


def env_action_names(env: object, env_kind: str) -> list[str]:
    """The environment's action names: Crafter's list, or the ALE's meanings (``NOOP``, ``FIRE``...)."""
    from iris_core.envs.factory import num_actions_of
    from pipelines.viewer.dream import action_names

    if env_kind == "atari":
        unwrapped = getattr(env, "unwrapped", env)
        if hasattr(unwrapped, "get_action_meanings"):
            return list(unwrapped.get_action_meanings())
    return action_names(env_kind, num_actions_of(env))  # type: ignore[arg-type]


def _noop(names: list[str]) -> int:
    return names.index("noop") if "noop" in names else names.index("NOOP") if "NOOP" in names else 0
