"""The campaign lock: one running flow per workspace.

DVC's own lock guards single commands; a campaign is many of them, and a second flow interleaving its
stages with the first would retrain on a half-written iteration. The flow holds an exclusive
`fcntl.flock` on `.iris/campaign.lock` for its whole run; the kernel drops it if the process dies,
so a crashed flow never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType

IRIS_DIR = ".iris"
LOCK_NAME = "campaign.lock"


class CampaignRunningError(RuntimeError):
    """Another flow holds the workspace."""


def ensure_iris_dir(workspace: Path) -> Path:
    """`.iris/` in the workspace, ignored by git without touching the workspace's own `.gitignore`."""
    iris = workspace / IRIS_DIR
    iris.mkdir(parents=True, exist_ok=True)
    ignore = iris / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# Run-time state of the campaign (locks, status files, partial work).\n*\n")
    return iris


class CampaignLock:
    """`with CampaignLock(workspace, holder="..."):` holds the workspace or raises at once."""

    def __init__(self, workspace: Path, holder: str = "") -> None:
        self.workspace = workspace
        self.path = workspace / IRIS_DIR / LOCK_NAME
        self.holder = holder
        self._fd: int | None = None

    def __enter__(self) -> CampaignLock:
        ensure_iris_dir(self.workspace)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 4096).decode(errors="replace").strip() or "unknown holder"
            os.close(fd)
            raise CampaignRunningError(
                f"a campaign is already running in {self.workspace} ({owner}); "
                "wait for it to finish or cancel its flow run"
            ) from None
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        if self.holder:
            record["holder"] = self.holder
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(record).encode())
        self._fd = fd
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._fd is None:
            return
        # The file stays (deleting it would let a waiter lock an unlinked inode); only its content goes.
        os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None
