"""Atomic writes and safe, self-describing checkpoints.

Every checkpoint the toolkit writes is a plain dict of tensors, numbers, strings, lists and
dicts, so it loads with ``torch.load(weights_only=True)``: nothing is ever unpickled. Each one
names its own ``format`` so that a teacher is never mistaken for a student or a trainer state.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import pickle
import platform
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import torch

from policy_distill.errors import UserError


def current_umask() -> int:
    """The process's umask (read from /proc where possible: setting it to read it is racy)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _temporary_beside(path: Path) -> str:
    """A new empty file beside ``path`` (``.<name>.<pid>.<random>.tmp``), with the permissions a
    plain ``open`` would give it (mkstemp's are 0600 whatever the umask)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
    finally:
        os.close(fd)
    return tmp


def fsync_path(path: str | Path) -> None:
    """Flush a file's (or a directory's entries') data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half.

    The file gets the umask's permissions (0644 under the usual 022), is flushed to the disk
    before the rename, and the directory entry after it.
    """
    path = Path(path)
    tmp = _temporary_beside(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_path(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, record: Any) -> None:
    atomic_write_bytes(path, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through a temporary file, flushed to the disk, and a rename (permissions
    as :func:`atomic_write_bytes`)."""
    path = Path(path)
    tmp = _temporary_beside(path)
    try:
        torch.save(obj, tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def pid_alive(pid: int) -> bool:
    """True if a process ``pid`` exists on this machine (one of another user's counts too)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_TEMPORARY = re.compile(r"^\.(?P<name>.+?)\.(?:(?P<pid>\d+)\.)?[^.]+\.tmp$")


def remove_stale_temporaries(directory: str | Path, *, also_own_pid_less: bool = False) -> list[Path]:
    """Delete the temporary files (``.<name>.<pid>.<random>.tmp``) of dead processes in ``directory``.

    A file written by an older version has no pid in its name; it is removed only with
    ``also_own_pid_less`` (the caller holds the directory's lock, so no live writer can own it).
    Prints one line per file removed; returns them.
    """
    directory = Path(directory)
    removed = []
    if not directory.is_dir():
        return removed
    for entry in directory.iterdir():
        found = _TEMPORARY.match(entry.name)
        if not found or not entry.is_file():
            continue
        pid = found.group("pid")
        if (pid is not None and not pid_alive(int(pid))) or (pid is None and also_own_pid_less):
            size = entry.stat().st_size
            entry.unlink(missing_ok=True)
            print(f"removed {entry}, a temporary file left by a process that died ({size / 1e6:.1f} MB)")
            removed.append(entry)
    return removed


def os_error_text(e: OSError) -> str:
    """``No space left on device`` etc.: the reason of an OSError, without its traceback."""
    return e.strerror or type(e).__name__


def check_writable_directory(directory: str | Path, *, what: str, fix: str) -> Path:
    """Create ``directory`` (with its parents) and write a probe file in it, before any work.

    Args:
        directory: Where the command will write.
        what: Names it in messages ("run directory").
        fix: What the user can do, e.g. "pass another `run`".

    Raises:
        UserError: a path component is a regular file, the place is read-only, or the disk is full.
    """
    directory = Path(directory)
    for parent in [directory, *directory.parents]:
        if parent.exists() and not parent.is_dir():
            raise UserError(f"cannot write the {what} {str(directory)!r}: {str(parent)!r} is a file; {fix}")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-probe.{os.getpid()}.tmp"
        with open(probe, "wb") as f:
            f.write(b"0" * 4096)
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write the {what} {str(directory)!r} ({os_error_text(e)}); {fix}") from None
    return directory


def check_free_space(directory: str | Path, needed_bytes: int, *, what: str, fix: str) -> None:
    """Refuse to start a job whose output (``needed_bytes``) will not fit on ``directory``'s disk."""
    free = shutil.disk_usage(directory).free
    if free < needed_bytes:
        raise UserError(
            f"the {what} needs about {needed_bytes / 1e9:.2f} GB but {str(directory)!r} has "
            f"{free / 1e9:.2f} GB free; {fix}"
        )


class DirectoryLock:
    """An exclusive ``fcntl.flock`` on ``<path>``, held while the process lives (or until ``release``).

    The kernel drops the lock when the process dies, so a crash never leaves a stale lock; the
    file keeps the holder's pid for the message another process gets.
    """

    def __init__(self, lock_file: str | Path, *, what: str, fix: str) -> None:
        self.path = Path(lock_file)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~current_umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise UserError(
                f"the {what} is in use by another process (pid {holder}, lock {str(self.path)!r}); "
                f"wait for it to finish or stop it, or {fix}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd: int | None = fd

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> DirectoryLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def torch_load_weights_only(
    source: str | Path | BinaryIO, *, label: str, pickled_fix: str, corrupt_fix: str
) -> Any:
    """``torch.load(weights_only=True)`` with every failure turned into a one-line UserError.

    Args:
        source: A path or a binary file object (e.g. a member of a zip).
        label: Names the file in messages ("teacher checkpoint 'x.pt'").
        pickled_fix, corrupt_fix: The fix each message suggests.
    """
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found or "global" in str(e).lower():  # a class or function reference, not random bytes
            detail = f" ({found.group(1)})" if found else ""
            raise UserError(
                f"{label} holds pickled Python objects{detail}, which are never loaded for safety; "
                f"{pickled_fix}"
            ) from None
        raise UserError(
            f"{label} is not a PyTorch checkpoint (truncated, corrupted or another kind of file); "
            f"{corrupt_fix}"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise UserError(f"{label} is truncated or corrupted ({type(e).__name__}); {corrupt_fix}") from None


def safe_torch_load(path: str | Path, *, what: str, corrupt_fix: str = "re-download or re-create it") -> Any:
    """Load a checkpoint file with ``weights_only=True``, turning every failure into a UserError.

    Args:
        path: The file.
        what: What the caller expected, for the message ("teacher checkpoint").
        corrupt_fix: The fix for a truncated or corrupted file.
    """
    path = Path(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.pt"))[:3]
        hint = f" (it holds {', '.join(inside)})" if inside else ""
        raise UserError(f"{what} {str(path)!r} is a directory{hint}; pass the checkpoint file inside it")
    if not path.is_file():
        raise UserError(f"{what} {str(path)!r} does not exist; check the path")
    if not os.access(path, os.R_OK):
        raise UserError(
            f"{what} {str(path)!r} is not readable by this user (permission denied); "
            "ask its owner to make it readable (chmod a+r)"
        )
    return torch_load_weights_only(
        path,
        label=f"{what} {str(path)!r}",
        pickled_fix="export it as a plain state dict of tensors",
        corrupt_fix=corrupt_fix,
    )


def require_format(record: Any, expected: str, path: str | Path, *, what: str) -> dict[str, Any]:
    """Check that a loaded checkpoint is a dict whose ``format`` is ``expected``."""
    if not isinstance(record, dict) or record.get("format") != expected:
        found = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise UserError(
            f"{str(path)!r} is not a {what} (format {found!r}, expected {expected!r}); "
            f"pass a file written by policy-distill's {what.split()[0]} command"
        )
    return record


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def package_versions() -> dict[str, str]:
    """Versions of the packages whose behaviour a result depends on."""
    from importlib.metadata import PackageNotFoundError, version

    # str(): torch.__version__ is a TorchVersion object, which weights_only loading refuses.
    out = {"python": platform.python_version(), "torch": str(torch.__version__)}
    for name in ("ale-py", "gymnasium", "numpy", "policy-distill"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "unknown"
    return out


def hardware_description() -> str:
    """One line naming the device and CPU, for model cards and reports."""
    cpu = platform.processor() or platform.machine()
    cores = os.cpu_count()
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} + {cores} CPU cores"
    return f"CPU only, {cores} cores ({cpu})"
