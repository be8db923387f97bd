"""One tiny campaign for every viewer test: 3 iterations of Crafter with very small models,
each evaluated and promoted, tracked in the workspace's MLflow store (~1-3 minutes).

``IRIS_VIEWER_TEST_WORKSPACE`` names an existing workspace built with the same overrides, to skip
the campaign while working on the viewers (the tests only read it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ITERATIONS = 3


@pytest.fixture(scope="session")
def workspace(request: pytest.FixtureRequest) -> Path:
    given = os.environ.get("IRIS_VIEWER_TEST_WORKSPACE")
    if given:
        return Path(given)
    # The in-process campaign the pipeline tests also use (tests/conftest.py): 3 iterations,
    # each evaluated and promoted.
    campaigns = request.getfixturevalue("campaigns")
    return Path(campaigns.reference)
