"""Atomic writes and safe, self-describing checkpoints.

Every checkpoint the toolkit writes is a plain dict of tensors, numbers, strings, lists and
dicts, so it loads with ``torch.load(weights_only=True)``: nothing is ever unpickled. Each one
names its own ``format`` so that a teacher is never mistaken for a student or a trainer state.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import platform
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import torch

from policy_distill.errors import UserError


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, record: Any) -> None:
    atomic_write_bytes(path, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
        detail = f" ({found.group(1)})" if found else ""
        raise UserError(
            f"{label} holds pickled Python objects{detail}, which are never loaded for safety; {pickled_fix}"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise UserError(f"{label} is truncated or corrupted ({type(e).__name__}); {corrupt_fix}") from None


def safe_torch_load(path: str | Path, *, what: str) -> Any:
    """Load a checkpoint file with ``weights_only=True``, turning every failure into a UserError.

    Args:
        path: The file.
        what: What the caller expected, for the message ("teacher checkpoint").
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {str(path)!r} does not exist; check the path")
    return torch_load_weights_only(
        path,
        label=f"{what} {str(path)!r}",
        pickled_fix="export it as a plain state dict of tensors",
        corrupt_fix="re-download or re-create it",
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
