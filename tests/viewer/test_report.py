"""``iris report`` and the campaign tables it is made of."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from pipelines.viewer import campaign
from pipelines.viewer.cli import report as report_command
from pipelines.viewer.report import artifact_markdown, codebook_table, write_report


def test_bootstrap_interval_contains_the_mean_and_narrows_with_more_episodes() -> None:
    rng = np.random.default_rng(0)
    few, many = rng.normal(5, 2, size=8), rng.normal(5, 2, size=800)
    low, high = campaign.bootstrap_ci(few)
    assert low < few.mean() < high
    low_many, high_many = campaign.bootstrap_ci(many)
    assert high_many - low_many < (high - low) / 4
    assert campaign.bootstrap_ci([3.0, 3.0, 3.0]) == (3.0, 3.0)


def _write(path: Path, content: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))


def test_tables_from_evaluation_and_promotion_files(tmp_path: Path) -> None:
    wood = {"collect_wood": 1}
    _write(
        tmp_path / "evaluation" / "1.json",
        {"returns": [0.0, 2.0], "lengths": [10, 20], "achievements": [wood, {}]},
    )
    _write(
        tmp_path / "evaluation" / "3.json",
        {"returns": [4.0, 6.0], "lengths": [30, 30], "achievements": [wood, wood]},
    )
    table = campaign.evaluation_table(campaign.evaluations(tmp_path), "crafter")
    assert list(table["iteration"]) == [1, 3] and list(table["return_mean"]) == [1.0, 5.0]
    assert (table["ci_low"] <= table["return_mean"]).all() and (
        table["return_mean"] <= table["ci_high"]
    ).all()
    # One achievement at 50% then 100%: exp(mean ln(1 + s)) − 1 over the 22 achievements.
    assert table["crafter_score"].iloc[0] == pytest.approx(np.exp(np.log(51) / 22) - 1)
    assert campaign.achievement_rates(campaign.evaluations(tmp_path)[1])["collect_wood"] == 100.0

    atari = campaign.evaluation_table(campaign.evaluations(tmp_path), "atari", "BreakoutNoFrameskip-v4")
    assert atari["human_normalized"].iloc[1] == pytest.approx((5.0 - 1.7) / (30.5 - 1.7))

    promoted = {"decision": "promoted", "version": 1, "registered_model": "m", "evidence": {}}
    _write(tmp_path / "promotion" / "1.json", promoted)
    _write(tmp_path / "promotion" / "3.json", {"decision": "rejected", "version": 2, "champion_version": 1})
    _write(tmp_path / "promotion" / "5.json", {**promoted, "version": 3, "champion_version": 1})
    history = campaign.promotions(tmp_path)
    assert list(history["champion_after"]) == [1, 1, 3]
    assert list(history["decision"]) == ["promoted", "rejected", "promoted"]


def test_report_of_the_tiny_campaign(workspace: Path, tmp_path: Path) -> None:
    dream_png = tmp_path / "dream.png"
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(dream_png)
    report = write_report(workspace, tmp_path / "out", dream_png)
    html_path, md_path = report.html, report.markdown

    markdown = md_path.read_text()
    for title in ("## Learning curves", "## Evaluation", "## Model registry", "## World model"):
        assert title in markdown
    images = re.findall(r"!\[[^\]]*\]\((figures/[^)]+)\)", markdown)
    names = {Path(i).name for i in images}
    assert {"curves_tokenizer.png", "curves_world_model.png", "curves_actor_critic.png"} <= names
    assert {"returns.png", "achievements.png", "reconstructions.png", "dream.png"} <= names
    for image in images:
        assert Image.open(md_path.parent / image).size[0] > 10
    # The registry history: one row per promotion file, the first one promoted.
    assert "| 1 | delta-iris-crafter | 1 | promoted |" in markdown
    # The tokenizer's codebook per iteration: dead codewords found next to those revived.
    assert "| iteration | codebook_entropy | codewords_dead | codewords_revived |" in markdown
    assert len(codebook_table(workspace)) == 3

    page = html_path.read_text()
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(embedded) == len(images)
    assert all(base64.b64decode(data).startswith(b"\x89PNG") for data in embedded)
    assert 'src="figures/' not in page and "<table" in page
    # The summary: the same text and tables, figures named, small enough for MLflow's preview.
    summary = report.summary.read_text()
    assert "<table" in summary and "data:image" not in summary and "figure <code>dream.png</code>" in summary
    assert len(summary) < 50_000


def test_without_a_dream_the_report_shows_the_latest_evaluations(workspace: Path, tmp_path: Path) -> None:
    report = write_report(workspace, tmp_path / "out")
    assert (tmp_path / "out" / "figures" / "dream.png").read_bytes() == (
        workspace / "media" / "3" / "dream.png"
    ).read_bytes()
    text = artifact_markdown(report, {"the run": "http://example/run"})
    assert text.startswith(f"# {report.title}\n\n- [the run](http://example/run)\n")
    assert "- figure `dream.png`: the world model replaying test-episode actions" in text
    assert "](figures/" not in text and "| 1 | delta-iris-crafter | 1 | promoted |" in text


def test_cli_attaches_the_report_to_the_campaigns_mlflow_run(workspace: Path, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    app = typer.Typer()
    app.command()(report_command)
    out = tmp_path / "report"
    run = CliRunner().invoke(app, ["--workspace", str(workspace), "--no-dream", "--mlflow", "-o", str(out)])
    assert run.exit_code == 0, run.output
    tracking = json.loads((workspace / "promotion" / "3.json").read_text())["mlflow"]
    assert f"MLflow: run {tracking['parent_run_id']}, artifact report/report.html" in run.output
    client = MlflowClient(tracking["tracking_uri"])
    parent = client.get_run(tracking["parent_run_id"])
    assert parent.data.tags["iris.run_kind"] == "campaign"
    listed = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.html", "report/summary.html", "report/report.md", "report/figures"} <= listed
    figures = {a.path for a in client.list_artifacts(parent.info.run_id, "report/figures")}
    assert {"report/figures/returns.png", "report/figures/dream.png"} <= figures
