"""Running ``iris`` as a user does (a subprocess), and checking that a failed command ended in one
line and left the folder as it found it."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from dvc_workspace import child_env as iris_env

IRIS = str(Path(sys.executable).parent / "iris")
EXIT_USER_ERROR = 2


def run_iris(
    *args: str, cwd: Path, env: Mapping[str, str] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """``iris <args>`` in ``cwd``, in a process group of its own (killed whole on a timeout, so a
    check that failed to stop a command never leaves servers or workers behind)."""
    with subprocess.Popen(
        [IRIS, *args],
        cwd=cwd,
        env=iris_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            raise AssertionError(f"iris {' '.join(args)} ran past {timeout} s:\n{stdout}\n{stderr}") from None
    return subprocess.CompletedProcess([IRIS, *args], process.returncode, stdout, stderr)


def snapshot(root: Path) -> dict[str, tuple[int, int] | None]:
    """Every path under ``root``: files with their size and modification time (ns), folders as
    present (a folder's own mtime moves when a temporary file is made and removed in it)."""
    tree: dict[str, tuple[int, int] | None] = {}
    for path in sorted(root.rglob("*")):
        stat = path.lstat()
        key = str(path.relative_to(root))
        tree[key] = None if path.is_dir() and not path.is_symlink() else (stat.st_size, stat.st_mtime_ns)
    return tree


def changes(before: dict[str, tuple[int, int] | None], after: dict[str, tuple[int, int] | None]) -> list[str]:
    added = [f"+ {p}" for p in after if p not in before]
    removed = [f"- {p}" for p in before if p not in after]
    changed = [f"~ {p}" for p in before if p in after and before[p] != after[p]]
    return added + removed + changed


def assert_one_line_error(
    result: subprocess.CompletedProcess[str], *words: str, code: int = EXIT_USER_ERROR
) -> str:
    """Exit code ``code``, no traceback, and the output ends with one ``error:`` line holding every
    one of ``words`` (case-insensitive); returns that line."""
    output = result.stdout + result.stderr
    shown = f"exit {result.returncode}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
    assert result.returncode == code, shown
    assert "Traceback" not in output, shown
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines, shown
    last = lines[-1]
    assert last.startswith("error: "), shown
    assert sum(line.startswith("error: ") for line in lines) == 1, shown
    for word in words:
        assert re.search(re.escape(word), last, re.IGNORECASE), f"{word!r} not in {last!r}"
    return last


def user_namespaces() -> bool:
    """Whether `unshare -rm` works here: a private mount namespace, no root needed (tmpfs tests)."""
    if shutil.which("unshare") is None:
        return False
    result = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "d=$(mktemp -d) && mount -t tmpfs -o size=8k tmpfs $d && umount $d"],
        capture_output=True,
        check=False,
    )
    return result.returncode == 0
