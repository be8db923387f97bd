"""Progress lines when the output is not a terminal (DVC, Prefect workers, CI logs)."""

from __future__ import annotations

import io
import re

import pytest
from dvc_workspace import Campaigns

from pipelines import progress


def test_plain_lines_name_the_phase_count_rate_eta_and_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "PLAIN_EVERY_SECONDS", 0.0)
    stream = io.StringIO()
    with progress.Progress("tokenizer@3", 4, stream=stream) as bar:
        for done in range(1, 5):
            bar.update(done, {"loss_total": 1.0 / done})
    lines = stream.getvalue().splitlines()
    assert lines[0] == "tokenizer@3: 4 steps to go"
    assert (
        lines[1].startswith("tokenizer@3: 1/4 steps, ") and "ETA" in lines[1] and "loss_total 1" in lines[1]
    )
    assert lines[-1].startswith("tokenizer@3: 4/4 steps") and lines[-1].endswith(" s")
    assert all("\r" not in line for line in lines)


def test_lines_are_spaced_out_in_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "PLAIN_EVERY_SECONDS", 3600.0)
    stream = io.StringIO()
    with progress.Progress("collect@1", 1000, unit="env step", stream=stream) as bar:
        for done in range(1, 1001):
            bar.update(done)
    # The opening and closing lines only: one line per interval, not per update.
    assert len(stream.getvalue().splitlines()) == 2


def test_every_phase_of_a_campaign_reports_its_progress(campaigns: Campaigns) -> None:
    """What `dvc repro` of the tiny campaign printed: each phase announces its work, and ends with
    its count, rate and duration; every stage ends with a "done" line."""
    output = campaigns.dvc.output
    phases = [
        ("collect@1", "env steps"),
        ("tokenizer@1", "steps"),
        ("world_model@1", "steps"),
        ("actor_critic@1", "steps"),
        ("evaluate@1", "test episodes"),
        ("evaluate@2", "test episodes"),
        ("promote@2: champion", "test episodes"),  # the champion replayed on the same seeds
    ]
    for phase, unit in phases:
        assert re.search(rf"^{re.escape(phase)}: \d+ {unit} to go$", output, re.M), phase
        assert re.search(rf"^{re.escape(phase)}: (\d+)/\1 {unit}, .* in \d+ (s|min)", output, re.M), phase
    for stage in campaigns.dvc.stages:
        assert re.search(rf"^{re.escape(stage)}: done in [0-9.]+ s$", output, re.M), stage
