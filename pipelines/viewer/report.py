"""``iris report``: one campaign on one page, as self-contained HTML and as Markdown.

The page is a list of sections, each with paragraphs, tables and images; the same list is
written twice: ``report.html`` with every image embedded (base64), for sending around, and
``report.md`` next to a ``figures/`` folder, for reading in a repository. Plots are matplotlib
PNGs drawn without a display (the Agg canvas).

The flow (``pipelines/flows/train.py``) writes the report after a campaign's last promotion,
attaches the folder to the campaign's MLflow parent run (:func:`attach_to_run`) and publishes
:func:`artifact_markdown` (the tables, without the pictures) as a Prefect artifact.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from iris_core.training.scores import CRAFTER_ACHIEVEMENTS
from pipelines.config import load_experiment
from pipelines.viewer import campaign
from pipelines.workspace import Workspace

NOT_LOSSES = {"step", "epoch", "iteration"}
# The tokenizer's codebook, per iteration (metrics/tokenizer/<i>.json): mean per logged step.
CODEBOOK_COLUMNS = ("codebook_entropy", "codewords_dead", "codewords_revived")


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


@dataclass(frozen=True)
class CampaignFacts:
    env_kind: str
    env_id: str | None
    iterations: int
    epochs_per_iteration: int | None
    note: str | None = None  # why the facts come from the raw params.yaml


def campaign_facts(workspace: Path) -> CampaignFacts:
    """What the report says about the campaign's setup. A ``params.yaml`` that this code version no
    longer loads (an older config schema) is read as plain YAML instead: the report of an old
    workspace still works."""
    params = Workspace(workspace).params
    try:
        experiment = load_experiment(params_file=params)
    except (ValueError, OSError, yaml.YAMLError) as error:  # ConfigError is a ValueError
        try:
            raw = yaml.safe_load(params.read_text()) or {}
        except (OSError, yaml.YAMLError):
            raw = {}
        env = (raw.get("env") or {}).get("test") or (raw.get("env") or {}).get("train") or {}
        loop = raw.get("loop") or {}
        note = f"`params.yaml` does not load with this code version ({str(error).splitlines()[0]})."
        return CampaignFacts(
            str(env.get("kind", "unknown")),
            env.get("id"),
            len(loop.get("iterations") or {}),
            loop.get("epochs_per_iteration"),
            note,
        )
    env_config = experiment.config.env.test
    loop_config = experiment.loop
    return CampaignFacts(
        env_config.kind, env_config.id, len(loop_config.iterations), loop_config.epochs_per_iteration
    )


def codebook_table(workspace: Path) -> pd.DataFrame:
    """Per iteration, the tokenizer's codebook metrics (``metrics/tokenizer/<i>.json``): entropy,
    dead codewords found by the codebook updates (the reference code's "revived") and how many of
    them were replaced, each a mean per logged step."""
    folder = workspace / "metrics" / "tokenizer"
    rows = []
    for i in campaign.iterations_of(folder, ".json"):
        values = json.loads((folder / f"{i}.json").read_text())
        row: dict[str, Any] = {"iteration": i}
        for column in CODEBOOK_COLUMNS:
            row[column] = values.get(f"tokenizer/iteration/{column}", float("nan"))
        if any(not np.isnan(row[c]) for c in CODEBOOK_COLUMNS):
            rows.append(row)
    return pd.DataFrame(rows, columns=["iteration", *CODEBOOK_COLUMNS])


def latest_media(workspace: Path, name: str) -> Path | None:
    """``media/<i>/<name>`` of the latest evaluated iteration that has one."""
    found = sorted(
        (int(p.parent.name), p) for p in (workspace / "media").glob(f"*/{name}") if p.parent.name.isdigit()
    )
    return found[-1][1] if found else None


def build_sections(workspace: Path, figures: Path, dream_png: Path | None) -> list[Section]:
    facts = campaign_facts(workspace)
    kind, env_id = facts.env_kind, facts.env_id
    per_iteration = (
        f", {facts.epochs_per_iteration} paper epoch(s) per iteration"
        if facts.epochs_per_iteration is not None
        else ""
    )
    overview = Section(
        "Campaign",
        [
            f"Workspace `{workspace}`: environment {kind}{f' ({env_id})' if env_id else ''}, "
            f"{facts.iterations} iterations planned{per_iteration}."
        ],
    )
    if facts.note:
        overview.paragraphs.append(facts.note)
    sections = [overview]

    curves = campaign.learning_curves(workspace)
    learning = Section("Learning curves", ["From `plots/<component>/<i>.tsv` (dotted: a new iteration)."])
    for component, frame in curves.items():
        save_figure(plot_learning_curves(component, frame), figures / f"curves_{component}.png")
        learning.images.append((f"curves_{component}.png", f"{component} losses and metrics"))
    if not curves:
        learning.paragraphs.append("No training curve yet.")
    codebook = codebook_table(workspace)
    if len(codebook):
        learning.paragraphs.append(
            "Tokenizer codebook per iteration (mean per logged step): `codewords_dead` counts the "
            "dead codewords each codebook update found (what the reference code logs as revived), "
            "`codewords_revived` how many of them were replaced."
        )
        learning.tables.append(codebook.round(3))
    sections.append(learning)

    evals = campaign.evaluations(workspace)
    table = campaign.evaluation_table(evals, kind, env_id)
    returns = Section("Evaluation", ["Returns of the test episodes of each evaluated iteration."])
    if len(table):
        save_figure(plot_returns(table), figures / "returns.png")
        returns.images.append(("returns.png", "mean return and 95% bootstrap interval per iteration"))
        returns.tables.append(table.round(3))
        latest = evals[-1]
        if kind == "crafter" and latest.achievements:
            rates = campaign.achievement_rates(latest)
            save_figure(plot_achievements(rates, latest.iteration), figures / "achievements.png")
            returns.images.append(("achievements.png", "Crafter success rates"))
        elif kind == "atari" and "human_normalized" in table:
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
    latest_recon = latest_media(workspace, "reconstructions.png")
    if latest_recon is not None:
        name = "reconstructions.png"
        (figures / name).write_bytes(latest_recon.read_bytes())
        media.images.append((name, f"tokenizer reconstructions, iteration {latest_recon.parent.name}"))
    if dream_png is not None:
        (figures / "dream.png").write_bytes(dream_png.read_bytes())
        media.images.append(("dream.png", "the world model replaying real actions (bottom rows) vs reality"))
    elif (evaluation_dream := latest_media(workspace, "dream.png")) is not None:
        (figures / "dream.png").write_bytes(evaluation_dream.read_bytes())
        media.images.append(
            (
                "dream.png",
                f"the world model replaying test-episode actions (bottom rows) vs reality, "
                f"evaluation of iteration {evaluation_dream.parent.name}",
            )
        )
    if media.images:
        sections.append(media)
    return sections


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def _cell(value: object) -> str:
    if isinstance(value, float) and np.isnan(value):
        return ""
    return "" if value is None else str(value).replace("|", "\\|")


def to_markdown(title: str, sections: Sequence[Section], pictures: bool = True) -> str:
    """The report as Markdown; ``pictures=False`` names each figure instead of showing it (for
    places that cannot reach ``figures/``, such as a Prefect artifact)."""
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
        if pictures:
            for name, text in s.images:
                lines += [f"![{text}](figures/{name})", ""]
        elif s.images:
            lines += [f"- figure `{name}`: {text}" for name, text in s.images] + [""]
    return "\n".join(lines)


def to_html(title: str, sections: Sequence[Section], figures: Path, pictures: bool = True) -> str:
    """The report as one HTML page, every figure embedded; ``pictures=False``: the figures named,
    not shown (a page of a few kilobytes, see :data:`SUMMARY_FILE`)."""

    def text(p: str) -> str:  # `code` spans, the only Markdown used in paragraphs
        parts = html.escape(p).split("`")
        return "".join(f"<code>{x}</code>" if k % 2 else x for k, x in enumerate(parts))

    body = [f"<h1>{html.escape(title)}</h1>"]
    for s in sections:
        body.append(f"<h2>{html.escape(s.title)}</h2>")
        body += [f"<p>{text(p)}</p>" for p in s.paragraphs]
        for t in s.tables:
            body.append(t.to_html(index=False, na_rep="", border=0, classes="table"))
        if not pictures:
            body += [
                f"<p>figure <code>{html.escape(name)}</code>: {html.escape(caption)}</p>"
                for name, caption in s.images
            ]
            continue
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


# The report without its figures, as HTML: MLflow's UI (3.17) previews an HTML artifact only when
# it is small (a 100 KB page shows, 300 KB and the ~0.7 MB full report stay blank; both download).
SUMMARY_FILE = "summary.html"


@dataclass(frozen=True)
class Report:
    title: str
    sections: list[Section]
    folder: Path
    html: Path  # self-contained
    markdown: Path  # beside figures/
    summary: Path  # text and tables only (figures named): small enough for MLflow's preview


def write_report(workspace: Path, out: Path, dream_png: Path | None = None) -> Report:
    """``<out>/report.html`` (self-contained), ``<out>/report.md`` (with ``<out>/figures/``) and
    ``<out>/summary.html`` (no figures).

    ``dream_png``: a dream strip to show; without it, the latest evaluation's (``media/<i>/dream.png``).
    """
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    sections = build_sections(workspace, figures, dream_png)
    title = f"Δ-IRIS campaign: {workspace.resolve().name}"
    html_path, md_path, summary = out / "report.html", out / "report.md", out / SUMMARY_FILE
    html_path.write_text(to_html(title, sections, figures))
    md_path.write_text(to_markdown(title, sections))
    summary.write_text(to_html(title, sections, figures, pictures=False))
    return Report(title, sections, out, html_path, md_path, summary)


# ---------------------------------------------------------------------------------------------
# Publishing: the campaign's MLflow parent run, the flow's Prefect artifact
# ---------------------------------------------------------------------------------------------

REPORT_ARTIFACT_PATH = "report"


def campaign_mlflow(workspace: Path) -> dict[str, Any] | None:
    """Where the campaign's runs are: the ``mlflow`` record (``tracking_uri``, ``experiment_id``,
    ``parent_run_id``, ...) of the latest ``promotion/<i>.json`` that names a parent run."""
    folder = workspace / "promotion"
    for i in reversed(campaign.iterations_of(folder, ".json")):
        try:
            record = json.loads((folder / f"{i}.json").read_text()).get("mlflow") or {}
        except (OSError, ValueError, AttributeError):
            continue
        if record.get("parent_run_id") and record.get("tracking_uri"):
            return dict(record)
    return None


def attach_to_run(report: Report, tracking_uri: str, run_id: str) -> str:
    """Log the report folder (HTML, summary, Markdown, figures) as artifacts ``report/`` of an
    MLflow run (a second call replaces the files); returns the artifact path of the HTML page."""
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=tracking_uri).log_artifacts(run_id, str(report.folder), REPORT_ARTIFACT_PATH)
    return f"{REPORT_ARTIFACT_PATH}/{report.html.name}"


def artifact_markdown(report: Report, links: Mapping[str, str] | None = None) -> str:
    """The report as a Prefect markdown artifact: ``links`` (label → URL) first, then every section
    with its paragraphs and tables; figures are named, not shown (they are in the HTML page)."""
    text = to_markdown(report.title, report.sections, pictures=False)
    head, _, rest = text.partition("\n\n")
    lines = [head, ""]
    lines += [f"- [{label}]({url})" for label, url in (links or {}).items()]
    lines += [f"- HTML page with the figures: `{report.html}`", "", rest]
    return "\n".join(lines)
