"""Export a student for deployment: one self-contained file plus a JSON sidecar.

The exported graph takes what the environment gives, ``obs`` ``[B, 4, 84, 84] uint8`` (newest
frame last, raw 0-255 pixels: the division by 255 is inside), and returns ``log_probs``
``[B, A] float32``, the actions in the order the sidecar's ``action_meanings`` lists. The batch
dimension is dynamic. Formats:

- ``torchscript``: ``torch.jit.script`` of the network, run with ``torch.jit.load`` (torch alone:
  no policy-distill, no Python class definitions needed). Recent torch releases mark TorchScript
  deprecated (2.13 warns) but still save, load and run it; ONNX is the format for other runtimes.
- ``onnx``: ONNX opset 20 (torch's dynamo exporter; needs ``onnx`` and ``onnxscript``), run with
  ``onnxruntime`` or any ONNX runtime.

Before anything is written, the exported bytes are loaded back in their own runtime and their
log-probabilities compared with the checkpoint's on the same frames; a difference beyond
float32 tolerance is an error. The sidecar ``<file>.json`` records the settings record (and
the environment arguments that reproduce it), the action meanings, the input and output
contract, the check, and the provenance (checkpoint, teacher, dataset, versions).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from policy_distill.checkpoint import atomic_write_bytes, atomic_write_json, package_versions, sha256_file
from policy_distill.errors import UserError, check_fields, one_of
from policy_distill.policy import action_meanings, env_id, env_kwargs
from policy_distill.student import Student, load_student

EXPORT_FORMATS = ("torchscript", "onnx")
SIDECAR_FORMAT = "policy-distill/exported-student"
SUFFIXES = {"torchscript": ".torchscript.pt", "onnx": ".onnx"}
ONNX_OPSET = 20
INPUT_NAME, OUTPUT_NAME = "obs", "log_probs"
CHECK_FRAMES = 16
"""Random frames the exported file is checked on (plus one unbatched-size batch of 1)."""
RTOL = ATOL = 1e-4
"""Tolerance of the check: float32 kernels of different runtimes differ in the last bits
(measured differences are ~1e-7 on log-probabilities of order 1)."""


class PixelPolicy(nn.Module):
    """The exported graph: ``[B, C, H, W] uint8`` pixels -> ``[B, A] float32`` log-probabilities.

    Wraps any network with ``log_probs([B, C, H, W] float in [0, 1]) -> [B, A]`` (a student or a
    teacher network), with the conversion to [0, 1] inside, so that a deployed file takes the
    environment's observations as they come.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net.eval()

    def forward(self, obs: Tensor) -> Tensor:
        return self.net.log_probs(obs.to(torch.float32) / 255.0)


@contextlib.contextmanager
def _quiet_exporters() -> Iterator[None]:
    """Silence the exporters' progress lines and deprecation notices (we say what matters)."""
    onnx_logger = logging.getLogger("torch.onnx")
    level = onnx_logger.level
    onnx_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        onnx_logger.setLevel(level)


def _require_onnx() -> None:
    for module in ("onnx", "onnxscript"):
        try:
            __import__(module)
        except ImportError:
            raise UserError(
                f"--format onnx needs the packages onnx and onnxscript ({module} is not installed): "
                "pip install 'policy-distill[onnx]', or use `format` torchscript (torch alone)"
            ) from None


def export_bytes(net: nn.Module, fmt: str, *, stack: int = 4, frame_size: int = 84) -> bytes:
    """The self-contained file of ``PixelPolicy(net)`` in ``fmt`` (``torchscript`` or ``onnx``).

    Args:
        net: A network with ``log_probs([B, stack, size, size] float) -> [B, A]``, on the CPU.
        fmt: One of :data:`EXPORT_FORMATS`.
        stack, frame_size: The input's frame count and side (the settings record's).
    """
    if fmt not in EXPORT_FORMATS:
        raise UserError(f"unknown export format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}")
    module = PixelPolicy(net).eval()
    with _quiet_exporters():
        if fmt == "torchscript":
            buffer = io.BytesIO()
            torch.jit.save(torch.jit.script(module), buffer)
            return buffer.getvalue()
        _require_onnx()
        example = torch.zeros(2, stack, frame_size, frame_size, dtype=torch.uint8)
        program = torch.onnx.export(
            module,
            (example,),
            dynamo=True,
            opset_version=ONNX_OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            verbose=False,
        )
        # A student is a few MB: its weights fit in the protobuf, so one file holds everything.
        return program.model_proto.SerializeToString()


class ExportedPolicy:
    """An exported file run in its own runtime: ``log_probs(obs)`` with ``obs`` ``[B, 4, 84, 84]
    uint8`` (numpy or torch) -> ``[B, A] float32`` numpy log-probabilities.

    Args:
        source: The file's path or bytes.
        fmt: ``torchscript`` or ``onnx``; from the file name when not given.
        threads: Intra-op threads for onnxruntime (torch uses ``torch.get_num_threads()``).
    """

    def __init__(
        self, source: str | Path | bytes, fmt: str | None = None, *, threads: int | None = None
    ) -> None:
        if fmt is None:
            if isinstance(source, bytes):
                raise ValueError("give fmt when loading from bytes")
            fmt = "onnx" if str(source).endswith(".onnx") else "torchscript"
        self.fmt = fmt
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        if fmt == "torchscript":
            with _quiet_exporters():
                self._module = torch.jit.load(io.BytesIO(data), map_location="cpu")
        else:
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.log_severity_level = 3  # errors only
            if threads:
                options.intra_op_num_threads = threads
            self._session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])

    def log_probs(self, obs: np.ndarray | Tensor) -> np.ndarray:
        """``[B, 4, 84, 84] uint8`` -> ``[B, A] float32`` log-probabilities."""
        if self.fmt == "torchscript":
            x = obs if isinstance(obs, Tensor) else torch.from_numpy(obs)
            with torch.inference_mode():
                return self._module(x).numpy()
        x = obs.numpy() if isinstance(obs, Tensor) else obs
        return self._session.run(None, {INPUT_NAME: x})[0]


def _runtime_version(fmt: str) -> str:
    name = "torch" if fmt == "torchscript" else "onnxruntime"
    try:
        return f"{name} {version(name)}"
    except PackageNotFoundError:
        return f"{name} (version unknown)"


def check_export(
    data: bytes, fmt: str, net: nn.Module, *, stack: int = 4, frame_size: int = 84
) -> dict[str, Any]:
    """Run the exported bytes in their runtime and compare with ``net`` eager on the same frames.

    Returns the check's record for the sidecar; ``skipped`` says why when onnxruntime is missing.

    Raises:
        UserError: the log-probabilities differ beyond :data:`RTOL` / :data:`ATOL`.
    """
    if fmt == "onnx":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return {"skipped": "onnxruntime is not installed (pip install 'policy-distill[onnx]')"}
    exported = ExportedPolicy(data, fmt)
    generator = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (CHECK_FRAMES, stack, frame_size, frame_size), generator=generator)
    frames = frames.to(torch.uint8)
    eager = PixelPolicy(net).eval()
    worst = 0.0
    for batch in (frames, frames[:1]):  # a full batch and the batch of one a single env gives
        with torch.inference_mode():
            expected = eager(batch).numpy()
        got = exported.log_probs(batch.numpy())
        if got.shape != expected.shape or not np.allclose(got, expected, rtol=RTOL, atol=ATOL):
            diff = float(np.abs(got - expected).max()) if got.shape == expected.shape else float("inf")
            raise UserError(
                f"the exported {fmt} file's log-probabilities differ from the checkpoint's by up to "
                f"{diff:.3g} (shape {list(got.shape)}, tolerance {ATOL:g}); nothing was written: report it "
                "with your torch/onnx versions, or try the other `format`"
            )
        worst = max(worst, float(np.abs(got - expected).max()))
    return {
        "frames": CHECK_FRAMES + 1,
        "batch_sizes": [CHECK_FRAMES, 1],
        "max_abs_diff": worst,
        "rtol": RTOL,
        "atol": ATOL,
        "runtime": _runtime_version(fmt),
    }


def _json_safe(value: Any) -> Any:
    """Round-trip through JSON so that a sidecar holds only plain values (tensors become str)."""
    return json.loads(json.dumps(value, default=str))


def sidecar_record(
    student: Student, checkpoint: Path, model_path: Path, fmt: str, check: dict[str, Any]
) -> dict[str, Any]:
    """The sidecar's contents: what a deployment needs to feed the file and trust it."""
    settings, record = student.settings, student.record
    arch = record.get("arch", {})
    provenance_keys = ("step", "config", "metrics", "best_kl", "teacher", "dataset", "hardware")
    return _json_safe(
        {
            "format": SIDECAR_FORMAT,
            "format_version": 1,
            "model": {
                "file": model_path.name,
                "format": fmt,
                "sha256": sha256_file(model_path),
                "bytes": model_path.stat().st_size,
                **({"opset": ONNX_OPSET} if fmt == "onnx" else {}),
                "run_with": "torch.jit.load" if fmt == "torchscript" else "onnxruntime.InferenceSession",
            },
            "input": {
                "name": INPUT_NAME,
                "shape": ["batch", settings.stack, settings.frame_size, settings.frame_size],
                "dtype": "uint8",
                "layout": "grayscale frames stacked on axis 1, newest last",
                "values": "raw pixels 0-255 as the environment gives them (the model divides by 255)",
            },
            "output": {
                "name": OUTPUT_NAME,
                "shape": ["batch", settings.num_actions],
                "dtype": "float32",
                "values": "log-probabilities over action_meanings; act by argmax or by sampling exp()",
            },
            "game": settings.game,
            "num_actions": settings.num_actions,
            "action_meanings": list(action_meanings(settings.game)),
            "settings": settings.to_dict(),
            "env_id": env_id(settings),
            "env_kwargs": env_kwargs(settings),
            "architecture": {"name": "student", **arch},
            "parameters": sum(p.numel() for p in student.net.parameters()),
            "check": check,
            "provenance": {
                "checkpoint": {"path": str(checkpoint.resolve()), "sha256": sha256_file(checkpoint)},
                **{k: record[k] for k in provenance_keys if k in record},
                "trained_with": record.get("versions"),
                "exported_with": package_versions(),
            },
        }
    )


@dataclass(frozen=True)
class ExportResult:
    """Where an export wrote its files."""

    model: Path
    sidecar: Path
    fmt: str
    bytes: int
    check: dict[str, Any]


def default_output(checkpoint: str | Path, fmt: str) -> Path:
    """``runs/pong/<run>/best.pt`` -> ``runs/pong/<run>/best.torchscript.pt`` / ``best.onnx``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + SUFFIXES[fmt])


def export_student(
    checkpoint: str | Path, fmt: str = "torchscript", out: str | Path | None = None
) -> ExportResult:
    """Export a student checkpoint to ``out`` (default :func:`default_output`) plus ``<out>.json``.

    Both files are written atomically, with the umask's permissions (as any new file: an export is
    meant to be copied and served by others), and only after the exported file's log-probabilities
    matched the checkpoint's (see :func:`check_export`).

    Raises:
        UserError: a bad checkpoint or format, ONNX packages missing, or a failed check.
    """
    if fmt not in EXPORT_FORMATS:
        raise UserError(f"unknown export format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}")
    checkpoint = Path(checkpoint)
    student = load_student(checkpoint, device="cpu")
    out = Path(out) if out is not None else default_output(checkpoint, fmt)
    if out.resolve() == checkpoint.resolve():
        raise UserError(f"`out` {str(out)!r} is the checkpoint itself; choose another file name")
    settings = student.settings
    data = export_bytes(student.net, fmt, stack=settings.stack, frame_size=settings.frame_size)
    check = check_export(data, fmt, student.net, stack=settings.stack, frame_size=settings.frame_size)
    atomic_write_bytes(out, data)
    sidecar = out.with_name(out.name + ".json")
    atomic_write_json(sidecar, sidecar_record(student, checkpoint, out, fmt, check))
    return ExportResult(model=out, sidecar=sidecar, fmt=fmt, bytes=len(data), check=check)


@dataclass(frozen=True)
class ExportStudentConfig:
    """What to export, in which format, and where (the ``export-student`` command)."""

    checkpoint: str
    """Student checkpoint (runs/<game>/<run>/best.pt)."""
    format: str = "torchscript"
    """torchscript (torch alone) or onnx (needs policy-distill[onnx])."""
    out: str = ""
    """File to write (default beside the checkpoint: <name>.torchscript.pt or <name>.onnx)."""

    def __post_init__(self) -> None:
        check_fields("export settings", [one_of(self, "format", EXPORT_FORMATS)])
