"""Expected failures of user commands, each told in one line: the cause and the thing to change.

``iris`` prints ``error: <one line>`` and exits with :data:`EXIT_USER_ERROR` for any exception
that :func:`one_line` describes; anything else is a bug and keeps its traceback. ``iris --debug``
shows the traceback of expected failures too.

The exception classes of the heavier packages (the flows, the storage, the tracking) are looked
up only if their module is already imported: an error raised there means it was, and the
commands that never touch it do not pay for importing it.
"""

from __future__ import annotations

import errno
import os
import sys

EXIT_USER_ERROR = 2

# Optional extras (pyproject.toml): the module a command imports -> the extra that installs it.
EXTRAS = {"pygame": "gui", "s3fs": "s3", "numba": "fast"}

# What the user can do about an OSError, by errno.
_OS_HINTS = {
    errno.ENOSPC: "free space on that disk or choose another location",
    errno.EDQUOT: "free space within your disk quota or choose another location",
    errno.EACCES: "fix its permissions or choose another location",
    errno.EPERM: "fix its permissions or choose another location",
    errno.EROFS: "it is on a read-only file system: choose another location",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder: give a file name",
    errno.ENOENT: "check the path",
    errno.EEXIST: "remove it or choose another name",
    errno.ENAMETOOLONG: "choose a shorter path",
}
# Failures that running a stage again cannot fix (pipelines/stages/cli.py).
PERMANENT_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR}
)


class UserError(Exception):
    """An expected failure; ``str()`` is the one line to show (cause and what to change)."""


def describe_os_error(error: OSError) -> str:
    """``<path>: <strerror> (<hint>)``: names the path, the cause and what to do."""
    where = os.fsdecode(error.filename) if error.filename is not None else "a file"
    if error.filename2 is not None:
        where += f" -> {os.fsdecode(error.filename2)}"
    cause = error.strerror or (os.strerror(error.errno) if error.errno else str(error))
    hint = _OS_HINTS.get(error.errno or 0)
    return f"{where}: {cause}" + (f" ({hint})" if hint else "")


def _class(module: str, name: str) -> type[BaseException] | None:
    loaded = sys.modules.get(module)
    found = getattr(loaded, name, None) if loaded is not None else None
    return found if isinstance(found, type) and issubclass(found, BaseException) else None


def _is(error: BaseException, module: str, name: str) -> bool:
    cls = _class(module, name)
    return cls is not None and isinstance(error, cls)


def _yaml_problem(error: BaseException) -> str:
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    context = getattr(error, "context", None)
    return f"{context}: {problem}" if context else str(problem)


def one_line(error: BaseException) -> str | None:
    """The one-line message for an expected failure, or None for a bug (keep its traceback)."""
    text = " ".join(str(error).split())  # never more than one line
    if isinstance(error, UserError):
        return text
    if _is(error, "iris_core.config", "ConfigError"):
        return f"invalid configuration: {text}"
    if _is(error, "yaml", "YAMLError"):
        return (
            f"invalid configuration: cannot parse a value ({_yaml_problem(error)}); "
            "check the brackets and quotes of the overrides, e.g. key=[1,2]"
        )
    if isinstance(error, ModuleNotFoundError) and (error.name or "").split(".")[0] in EXTRAS:
        module = (error.name or "").split(".")[0]
        return f"{module} is not installed: pip install -e '.[{EXTRAS[module]}]'"
    if isinstance(error, OSError) and error.errno in _OS_HINTS:
        return describe_os_error(error)
    for module, name in (
        ("pipelines.flows.lock", "CampaignRunningError"),
        ("pipelines.flows.prepare", "WorkspaceError"),
        ("pipelines.flows.stages", "StageError"),
        ("pipelines.stages.common", "StageError"),
        ("pipelines.storage.errors", "StoreError"),
        ("pipelines.tracking.registry", "RegistryError"),
        ("pipelines.viewer.models", "ModelNotFoundError"),
        ("iris_core.training.train_component", "NonFiniteLossError"),
    ):
        if _is(error, module, name):
            return text
    return None
