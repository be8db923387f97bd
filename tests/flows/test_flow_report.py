"""The campaign's report after the last promotion: attached to MLflow, published to Prefect."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from toy_pipeline import params_yaml, read_artifact

from pipelines.flows import train
from pipelines.flows.train import publish_report

pytestmark = pytest.mark.usefixtures("prefect_api")


def test_the_report_is_attached_to_the_campaigns_mlflow_run_and_published(
    tmp_path: Path, toy_dvc_yaml: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # the toy promote stages log their runs there
    monkeypatch.setenv("IRIS_MLFLOW_UI", "http://mlflow.example")
    workspace = tmp_path / "reported"

    summary = train(
        workspace=str(workspace),
        params_yaml=params_yaml(iterations=2, evaluations=[1, 2]),
        dvc_yaml=str(toy_dvc_yaml),
        retries=0,
    )

    # The parent run of the last promotion (promotion/2.json) holds the report folder.
    tracking = json.loads((workspace / "promotion" / "2.json").read_text())["mlflow"]
    parent, experiment = tracking["parent_run_id"], tracking["experiment_id"]
    assert summary["report"]["mlflow"] == {"run_id": parent, "path": "report/report.html"}
    assert Path(summary["report"]["html"]) == workspace / "views" / "report" / "report.html"
    client = MlflowClient(uri)
    assert {a.path for a in client.list_artifacts(parent, "report")} == {
        "report/report.html",
        "report/summary.html",
        "report/report.md",
        "report/figures",
    }
    assert "report/figures/returns.png" in {a.path for a in client.list_artifacts(parent, "report/figures")}
    html = Path(client.download_artifacts(parent, "report/report.html", str(tmp_path / "download")))
    assert html.read_text().startswith("<!DOCTYPE html>") and "data:image/png;base64," in html.read_text()

    # Prefect: the report's tables as markdown, and links to its pages in MLflow's UI (the link
    # artifact: the summary, small enough for the UI's preview).
    url = f"http://mlflow.example/#/experiments/{experiment}/runs/{parent}/artifactPath/report/"
    markdown = read_artifact("reported-report").data
    assert markdown.startswith("# Δ-IRIS campaign: reported\n")
    assert f"- [summary in MLflow]({url}summary.html)" in markdown
    assert f"- [report with figures in MLflow]({url}report.html)" in markdown
    assert "| 1 | 2 | 1.5 |" in markdown  # evaluation table: iteration, episodes, mean return
    assert "| 2 | toy-agent | 2 | promoted |" in markdown  # registry history
    assert "- figure `returns.png`" in markdown and "](figures/" not in markdown
    assert read_artifact("reported-report-html").data == f"[report of campaign reported]({url}summary.html)"

    # Published once, after the last promotion only.
    assert summary["ran"][-1] == "promote@2"


def _minimal_workspace(root: Path) -> Path:
    (root / "evaluation").mkdir(parents=True)
    (root / "promotion").mkdir()
    (root / "params.yaml").write_text(params_yaml(iterations=1, evaluations=[1]))
    (root / "evaluation" / "1.json").write_text(json.dumps({"returns": [1.0, 3.0], "lengths": [5, 7]}))
    promotion = {"decision": "promoted", "version": 1, "registered_model": "m", "mlflow": {}}
    (root / "promotion" / "1.json").write_text(json.dumps(promotion))
    return root


def test_without_mlflow_the_link_points_at_the_html_file(tmp_path: Path) -> None:
    workspace = _minimal_workspace(tmp_path / "offline")
    published = publish_report(str(workspace), "offline")
    html = workspace / "views" / "report" / "report.html"
    assert published == {
        "artifact": "offline-report",
        "link_artifact": "offline-report-html",
        "html": str(html),
        "mlflow": None,
    }
    assert read_artifact("offline-report-html").data == f"[report of campaign offline]({html.as_uri()})"
    markdown = read_artifact("offline-report").data
    # This params.yaml is not a whole config: the report says so and goes on.
    assert "does not load with this code version" in markdown and "| 1 | 2 | 2.0 |" in markdown


def test_a_report_that_fails_is_a_warning_not_a_failed_campaign(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipelines.viewer.report

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(pipelines.viewer.report, "write_report", broken)
    workspace = _minimal_workspace(tmp_path / "broken")
    assert publish_report(str(workspace), "broken") == {"error": "OSError: disk full"}
