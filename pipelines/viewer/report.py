"""``iris report``: one campaign on one page, as self-contained HTML and as Markdown.

The page is a list of sections, each with paragraphs, tables and images; the same list is
written twice: ``report.html`` with every image embedded (base64), for sending around, and
``report.md`` next to a ``figures/`` folder, for reading in a repository. Plots are matplotlib
PNGs drawn without a display (the Agg canvas).
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from iris_core.training.scores import CRAFTER_ACHIEVEMENTS
from pipelines.config import load_experiment
from pipelines.viewer import campaign
from pipelines.workspace import Workspace

NOT_LOSSES = {"step", "epoch", "iteration"}


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[pd.DataFrame] = field(default_factory=list)
    images: list[tuple[str, str]] = field(default_factory=list)  # (file name under figures/, caption)


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def save_figure(figure: Figure, path: Path) -> None:
    FigureCanvasAgg(figure)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100, bbox_inches="tight")


def plot_learning_curves(component: str, curves: pd.DataFrame) -> Figure:
    """Every logged column of one component over optimizer steps, a panel each; dotted lines
    mark where an iteration starts."""
    columns = [c for c in curves.columns if c not in NOT_LOSSES]
    ncols = 3
    nrows = math.ceil(len(columns) / ncols)
    figure = Figure(figsize=(4 * ncols, 2.6 * nrows), layout="constrained")
    starts = curves.groupby("iteration")["step"].min()
    for k, column in enumerate(columns):
        ax = figure.add_subplot(nrows, ncols, k + 1)
        ax.plot(curves["step"], curves[column], marker="." if len(curves) < 50 else None, lw=1)
        for step in starts.iloc[1:]:
            ax.axvline(step, color="grey", ls=":", lw=0.8)
        ax.set_title(column, fontsize=9)
        ax.set_xlabel("optimizer step", fontsize=8)
        ax.tick_params(labelsize=7)
    figure.suptitle(f"{component}: training curves")
    return figure


def plot_returns(table: pd.DataFrame) -> Figure:
    """Mean evaluation return per iteration with its 95% bootstrap interval."""
    figure = Figure(figsize=(6, 3.5), layout="constrained")
    ax = figure.add_subplot()
    x, mean = table["iteration"], table["return_mean"]
    ax.fill_between(x, table["ci_low"], table["ci_high"], alpha=0.25, label="95% bootstrap CI")
    ax.plot(x, mean, marker="o", label="mean return")
    ax.set_xlabel("iteration")
    ax.set_ylabel("return")
    ax.set_xticks(list(x))
    ax.legend(fontsize=8)
    ax.set_title("evaluation returns")
    return figure


def plot_achievements(rates: dict[str, float], iteration: int) -> Figure:
    """Success rate (% of evaluation episodes) of each of Crafter's 22 achievements."""
    figure = Figure(figsize=(6, 6), layout="constrained")
    ax = figure.add_subplot()
    names = list(CRAFTER_ACHIEVEMENTS)
    ax.barh(names, [rates.get(n, 0.0) for n in names])
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("success rate (%)")
    ax.tick_params(labelsize=8)
    ax.set_title(f"Crafter achievements, iteration {iteration}")
    return figure


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------


def build_sections(workspace: Path, figures: Path, dream_png: Path | None) -> list[Section]:
    experiment = load_experiment(params_file=Workspace(workspace).params)
    env = experiment.config.env.test
    sections = [
        Section(
            "Campaign",
            [
                f"Workspace `{workspace}`: environment {env.kind}{f' ({env.id})' if env.id else ''}, "
                f"{len(experiment.loop.iterations)} iterations planned, "
                f"{experiment.loop.epochs_per_iteration} paper epoch(s) per iteration."
            ],
        )
    ]

    curves = campaign.learning_curves(workspace)
    learning = Section("Learning curves", ["From `plots/<component>/<i>.tsv` (dotted: a new iteration)."])
    for component, frame in curves.items():
        save_figure(plot_learning_curves(component, frame), figures / f"curves_{component}.png")
        learning.images.append((f"curves_{component}.png", f"{component} losses and metrics"))
    if not curves:
        learning.paragraphs.append("No training curve yet.")
    sections.append(learning)

    evals = campaign.evaluations(workspace)
    table = campaign.evaluation_table(evals, env.kind, env.id)
    returns = Section("Evaluation", ["Returns of the test episodes of each evaluated iteration."])
    if len(table):
        save_figure(plot_returns(table), figures / "returns.png")
        returns.images.append(("returns.png", "mean return and 95% bootstrap interval per iteration"))
        returns.tables.append(table.round(3))
        latest = evals[-1]
        if env.kind == "crafter" and latest.achievements:
            rates = campaign.achievement_rates(latest)
            save_figure(plot_achievements(rates, latest.iteration), figures / "achievements.png")
            returns.images.append(("achievements.png", "Crafter success rates"))
        elif env.kind == "atari" and "human_normalized" in table:
            returns.paragraphs.append("Human-normalised score: (return − random) / (human − random).")
    else:
        returns.paragraphs.append("No evaluation yet (`evaluation/<i>.json`).")
    sections.append(returns)

    history = campaign.promotions(workspace)
    registry = Section(
        "Model registry",
        [
            "Each evaluated iteration registers a version; the gate promotes it when the 95% bootstrap "
            "interval of its paired return difference with the champion lies above zero."
        ],
    )
    if len(history):
        registry.tables.append(history)
        last = history.iloc[-1]
        registry.paragraphs.append(f"Champion now: version {last['champion_after']} of `{last['model']}`.")
    sections.append(registry)

    media = Section("World model", [])
    recons = sorted(
        (int(p.parent.name), p)
        for p in (workspace / "media").glob("*/reconstructions.png")
        if p.parent.name.isdigit()
    )
    latest_recon = recons[-1][1] if recons else None
    if latest_recon is not None:
        name = "reconstructions.png"
        (figures / name).write_bytes(latest_recon.read_bytes())
        media.images.append((name, f"tokenizer reconstructions, iteration {latest_recon.parent.name}"))
    if dream_png is not None:
        (figures / "dream.png").write_bytes(dream_png.read_bytes())
        media.images.append(("dream.png", "the world model replaying real actions (bottom rows) vs reality"))
    if media.images:
        sections.append(media)
    return sections


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def _cell(value: object) -> str:
    if isinstance(value, float) and np.isnan(value):
        return ""
    return "" if value is None else str(value)


def to_markdown(title: str, sections: Sequence[Section]) -> str:
    lines = [f"# {title}", ""]
    for s in sections:
        lines += [f"## {s.title}", ""]
        for p in s.paragraphs:
            lines += [p, ""]
        for t in s.tables:
            lines.append("| " + " | ".join(map(str, t.columns)) + " |")
            lines.append("|" + " --- |" * len(t.columns))
            lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in t.itertuples(index=False)]
            lines.append("")
        for name, text in s.images:
            lines += [f"![{text}](figures/{name})", ""]
    return "\n".join(lines)


def to_html(title: str, sections: Sequence[Section], figures: Path) -> str:
    def text(p: str) -> str:  # `code` spans, the only Markdown used in paragraphs
        parts = html.escape(p).split("`")
        return "".join(f"<code>{x}</code>" if k % 2 else x for k, x in enumerate(parts))

    body = [f"<h1>{html.escape(title)}</h1>"]
    for s in sections:
        body.append(f"<h2>{html.escape(s.title)}</h2>")
        body += [f"<p>{text(p)}</p>" for p in s.paragraphs]
        for t in s.tables:
            body.append(t.to_html(index=False, na_rep="", border=0, classes="table"))
        for name, caption in s.images:
            data = base64.b64encode((figures / name).read_bytes()).decode()
            body.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;font-size:0.85em}td,th{padding:3px 8px;border-bottom:1px solid #ddd}"
        "img{max-width:100%}figcaption{color:#666;font-size:0.85em}"
    )
    return (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n"
    )


def write_report(workspace: Path, out: Path, dream_png: Path | None = None) -> tuple[Path, Path]:
    """``<out>/report.html`` (self-contained) and ``<out>/report.md`` (with ``<out>/figures/``)."""
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    sections = build_sections(workspace, figures, dream_png)
    title = f"Δ-IRIS campaign: {workspace.resolve().name}"
    html_path, md_path = out / "report.html", out / "report.md"
    html_path.write_text(to_html(title, sections, figures))
    md_path.write_text(to_markdown(title, sections))
    return html_path, md_path
