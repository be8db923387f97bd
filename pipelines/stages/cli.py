"""``iris stage <name>``: one stage, as ``dvc.yaml`` runs it (the ``cmd:`` of every stage).

Exit codes: 0 done; 2 a failure that running again cannot fix (bad config or input, non-finite
loss, full disk, no permission), after writing ``.iris/status/<stage>.json`` for the flow; any
other code is a crash worth retrying (the stage continues from its mid-stage checkpoint).
"""

from __future__ import annotations

import contextlib
import errno
import json
import signal
import sys
import time
from pathlib import Path

from iris_core.config import ConfigError
from iris_core.training.train_component import NonFiniteLossError
from pipelines.atomic import atomic_write_text
from pipelines.stages.common import StageError
from pipelines.stages.runner import parse_stage, run_stage
from pipelines.workspace import Workspace

EXIT_PERMANENT = 2
PERMANENT_ERRNOS = {errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EDQUOT, errno.ENOTDIR, errno.EISDIR}


def permanent_reason(error: BaseException) -> str | None:
    """One line describing ``error`` if retrying the stage cannot fix it, else None."""
    if isinstance(error, ConfigError):
        return f"invalid configuration: {error}"
    if isinstance(error, NonFiniteLossError | StageError):
        return str(error)
    if isinstance(error, OSError) and error.errno in PERMANENT_ERRNOS:
        where = f" ({error.filename})" if error.filename else ""
        return f"{error.strerror or error}{where}"
    from pipelines.storage import StoreError

    if isinstance(error, StoreError):
        return str(error)
    return None


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM (DVC or Prefect cancelling) ends the stage like Ctrl-C


def main(name: str, workspace: Path) -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    ws = Workspace(workspace)
    status = ws.status(name)
    if status.exists():
        status.unlink()
    started = time.perf_counter()
    try:
        spec = parse_stage(name)
        run_stage(workspace, spec)
    except KeyboardInterrupt:
        print(f"{name}: interrupted; run it again to continue", file=sys.stderr)
        return 130
    except Exception as error:
        reason = permanent_reason(error)
        if reason is None:
            raise  # a crash: the traceback helps, and a retry may succeed
        # The disk may be full: the message below still says why.
        with contextlib.suppress(OSError):
            atomic_write_text(status, json.dumps({"stage": name, "permanent": True, "error": reason}) + "\n")
        print(f"error: {name}: {reason}", file=sys.stderr)
        return EXIT_PERMANENT
    print(f"{name}: done in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0
