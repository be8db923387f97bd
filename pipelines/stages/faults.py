"""Test fault injection: kill a stage at a named point, to test crash and resume.

With ``IRIS_TEST_KILL_AT=<stage>:<point>`` in the environment (e.g. ``tokenizer@1:step=3``), the
stage SIGKILLs its whole process group when it reaches that point, as a power cut would stop
``dvc repro`` and the stage it runs: no handler, ``finally`` or lock release runs. Run the
pipeline in a process group of its own (``start_new_session=True``) when setting it.

Without the variable (every real run) :func:`kill_point` does nothing. Points:

- ``collect@<i>:part=<n>``: the collector has just written its ``n``-th episode part (1-based)
  into the store, which is still under its temporary name;
- ``collect@<i>:store_committed``: the store is in place, the manifest and collector state not yet;
- ``<component>@<i>:step=<n>``: ``n`` optimizer steps are done (and saved in a mid-stage
  checkpoint if one was due: always with ``loop.checkpoint_every_seconds=0``);
- ``promote@<i>:registered``: the agent is registered in MLflow, the decision not taken yet.
"""

from __future__ import annotations

import os
import signal

KILL_AT = "IRIS_TEST_KILL_AT"


def kill_point(stage: str, point: str) -> None:
    """SIGKILL this process group if ``$IRIS_TEST_KILL_AT`` names this stage and point."""
    if os.environ.get(KILL_AT) == f"{stage}:{point}":
        os.killpg(os.getpgid(0), signal.SIGKILL)
