"""Checks a command runs before any work or write: each raises :class:`~pipelines.errors.UserError`
with one line naming the cause and what to change, and none of them writes anything.

``iris train`` checks the env ids (the game's registration and ROM), the device, the workspace
folder (a folder, writable, some free space) and the campaign lock; other commands check what they
use. Cheap: the env check imports gymnasium and ale-py (no emulator is started), the device check
imports torch only when CUDA is asked for.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import importlib.util
import os
import shutil
import socket
import warnings
from pathlib import Path

from iris_core.config import EnvSpec, IrisConfig
from pipelines.errors import UserError
from pipelines.workspace import Workspace

# A campaign writes far more; this only catches a disk that is already (nearly) full.
MIN_FREE_BYTES = 64 * 2**20
# pipelines.tracking.backend.DATABASE_FILE, without importing MLflow to fail fast.
DATABASE_FILE = "mlflow.db"


def check_device(device: str, key: str = "common.device") -> None:
    """``cuda`` / ``cuda:<n>`` must name a GPU that torch can use."""
    kind, _, index = device.partition(":")
    if kind != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        raise UserError(
            f"{key}={device}: CUDA requested but not available on this machine "
            f"(torch {torch.__version__} finds no usable GPU); set {key}=cpu or {key}=auto"
        )
    count = torch.cuda.device_count()
    if index and int(index) >= count:
        raise UserError(
            f"{key}={device}: CUDA requested but not available: this machine has {count} GPU(s), "
            f"cuda:0..cuda:{count - 1}; set {key}=cuda:0 or {key}=auto"
        )


def check_env(spec: EnvSpec, key: str) -> None:
    """The env ``spec`` names can be built here: an installed Crafter, or a registered Atari game
    whose ROM ale-py ships (looked up, no emulator started)."""
    if spec.kind == "crafter":
        if importlib.util.find_spec("crafter") is None:
            raise UserError(f"{key}: the crafter package is not installed: pip install -e .")
        return
    if spec.kind != "atari" or not spec.id:
        return
    try:
        import ale_py
        import gymnasium
        from ale_py import roms
    except ModuleNotFoundError as error:
        raise UserError(f"{key}.id={spec.id}: {error.name} is not installed: pip install -e .") from None
    gymnasium.register_envs(ale_py)
    try:
        registered = gymnasium.spec(spec.id)
    except gymnasium.error.Error as error:
        suggestion = " ".join(str(error).split())
        raise UserError(
            f"{key}.id={spec.id}: no such Atari game ({suggestion}); "
            "use an ale-py id <Game>NoFrameskip-v4, e.g. BreakoutNoFrameskip-v4"
        ) from None
    game = registered.kwargs.get("game")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Rom ... not supported": reported below
        try:
            rom = roms.get_rom_path(str(game)) if game else None
        except OSError as error:
            raise UserError(f"{key}.id={spec.id}: the ROM of {game!r} is unusable: {error}") from None
    if rom is None or not Path(rom).is_file():
        raise UserError(
            f"{key}.id={spec.id}: ale-py {ale_py.__version__} has no ROM for {game!r}; "
            "reinstall ale-py or choose another game"
        )


def check_config(config: IrisConfig) -> None:
    """The device and both envs of an experiment."""
    check_device(config.common.device)
    check_env(config.env.train, "env.train")
    check_env(config.env.test, "env.test")


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _cannot_write(folder: Path) -> str | None:
    """Why nothing can be created in ``folder`` (an existing folder), or None."""
    if os.access(folder, os.W_OK | os.X_OK):
        return None
    with contextlib.suppress(OSError):
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return os.strerror(errno.EROFS)
    return os.strerror(errno.EACCES)


def check_folder(path: Path, what: str, *, min_free_bytes: int = MIN_FREE_BYTES) -> None:
    """``path`` is a folder this process can create things in (or can be created), on a disk with
    at least ``min_free_bytes`` free."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file, not a folder: choose a folder")
    base = _existing_ancestor(path)
    if not base.is_dir():
        raise UserError(f"{what} {path}: {base} is a file, not a folder: choose another path")
    reason = _cannot_write(base)
    if reason is not None:
        raise UserError(f"{what} {path}: cannot write in {base}: {reason}; choose another folder")
    free = shutil.disk_usage(base).free
    if free < min_free_bytes:
        raise UserError(
            f"{what} {path}: only {free / 2**20:.1f} MiB free on its disk "
            f"(at least {min_free_bytes // 2**20} MiB needed): free space or choose another folder"
        )


def check_output_file(path: Path, what: str) -> None:
    """``path`` can be written as a file: not a folder, in a folder (or one that can be created)
    that this process can write in."""
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder: give a file name (e.g. {path / 'params.yaml'})")
    base = _existing_ancestor(path.parent)
    if not base.is_dir():
        raise UserError(f"{what} {path}: {base} is a file, not a folder: choose another path")
    reason = _cannot_write(base)
    if reason is not None:
        raise UserError(f"{what} {path}: cannot write in {base}: {reason}; choose another location")


def check_campaign_free(workspace: Path) -> None:
    """No campaign holds the workspace's lock now (the flow takes the lock itself; this only
    fails early, before anything starts). Reads the lock file; creates nothing."""
    path = Workspace(workspace).campaign_lock
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # no lock file: nobody holds it
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown holder"
            raise UserError(
                f"a campaign is already running in {workspace} ({owner}); "
                "wait for it to finish or cancel its flow run"
            ) from None
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def check_tracking_store(workspace: Path) -> None:
    """The workspace has an MLflow store to read (or ``$MLFLOW_TRACKING_URI`` names one): a
    command that only reads runs or models must not create an empty database."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return
    if not (workspace / DATABASE_FILE).is_file():
        raise UserError(
            f"no MLflow store in {workspace} ({DATABASE_FILE}): pass --workspace of a campaign "
            "(run `iris train` first) or set MLFLOW_TRACKING_URI"
        )


def check_port_free(port: int, option: str) -> None:
    """Nothing listens on 127.0.0.1:``port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as error:
            raise UserError(
                f"port {port} on 127.0.0.1 is not free ({error.strerror}): pass {option} <another port>"
            ) from None


def check_module(module: str, extra: str, purpose: str, otherwise: str = "") -> None:
    """An optional extra is installed and imports (the command would import it next anyway)."""
    try:
        importlib.import_module(module)
    except ImportError as error:
        detail = "" if isinstance(error, ModuleNotFoundError) else f" ({' '.join(str(error).split())})"
        raise UserError(
            f"{purpose} needs {module}, which is not installed{detail}: pip install -e '.[{extra}]'"
            + (f" ({otherwise})" if otherwise else "")
        ) from None
