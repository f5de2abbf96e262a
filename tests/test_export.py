"""export-student: the exported file reproduces the checkpoint's log-probabilities in its own runtime,
carries a complete sidecar, and nothing is written when the check fails (policy_distill/export.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import warnings

import numpy as np
import pytest
import torch

from agents.networks import TeacherNet
from policy_distill.checkpoint import sha256_file
from policy_distill.cli import build_parser
from policy_distill.errors import ConfigError, UserError
from policy_distill.export import (
    ATOL,
    ExportedPolicy,
    PixelPolicy,
    check_export,
    export_bytes,
    export_student,
)
from policy_distill.settings import EnvSettings
from policy_distill.student import StudentArch, StudentNet, load_student

HAS_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, write_student_file):
    """A randomly initialised Breakout student (4 actions) with the provenance a run records."""
    provenance = {"teacher": {"name": "breakout", "sha256": "ab" * 32}, "versions": {"torch": "x"}}
    path = tmp_path_factory.mktemp("run") / "best.pt"
    return write_student_file(
        path, EnvSettings("breakout"), seed=0, step=7, metrics={"kl": 0.5}, **provenance
    )


@pytest.fixture(scope="module")
def frames() -> torch.Tensor:
    """``[5, 4, 84, 84] uint8`` random frames (an odd batch size the export never saw)."""
    return torch.randint(0, 256, (5, 4, 84, 84), generator=torch.Generator().manual_seed(1)).to(torch.uint8)


def _check_exported_matches(model_log_probs, checkpoint, frames) -> None:
    student = load_student(checkpoint)
    for batch in (frames, frames[:1]):  # the batch dimension is dynamic
        with torch.no_grad():
            expected = student.log_probs(batch).numpy()
        got = model_log_probs(batch)
        assert got.shape == expected.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_torchscript_export_matches_the_checkpoint_and_runs_with_torch_alone(checkpoint, frames) -> None:
    out = checkpoint.parent / "deploy" / "policy.pt"
    result = export_student(checkpoint, "torchscript", out)
    assert result.model == out and out.is_file() and result.sidecar.name == "policy.pt.json"
    assert result.check["max_abs_diff"] <= ATOL and result.check["runtime"].startswith("torch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 marks TorchScript deprecated
        module = torch.jit.load(str(out))  # plain torch: no policy-distill class is needed
    with torch.inference_mode():
        _check_exported_matches(lambda x: module(x).numpy(), checkpoint, frames)
    sidecar = json.loads(result.sidecar.read_text())
    assert (
        sidecar["format"] == "policy-distill/exported-student" and sidecar["model"]["format"] == "torchscript"
    )
    assert sidecar["model"]["sha256"] == sha256_file(out) and sidecar["model"]["file"] == "policy.pt"
    assert sidecar["input"]["dtype"] == "uint8" and sidecar["input"]["shape"] == ["batch", 4, 84, 84]
    assert sidecar["output"]["shape"] == ["batch", 4]
    assert sidecar["action_meanings"] == ["NOOP", "FIRE", "RIGHT", "LEFT"]
    assert sidecar["settings"] == EnvSettings("breakout").to_dict() and sidecar["env_id"] == "ALE/Breakout-v5"
    assert sidecar["env_kwargs"]["repeat_action_probability"] == 0.0
    provenance = sidecar["provenance"]
    assert provenance["checkpoint"]["sha256"] == sha256_file(checkpoint)
    assert provenance["teacher"]["name"] == "breakout" and provenance["step"] == 7
    assert provenance["trained_with"] == {"torch": "x"} and "torch" in provenance["exported_with"]
    assert sidecar["parameters"] == sum(p.numel() for p in load_student(checkpoint).parameters())


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_exported_files_take_the_umasks_permissions(checkpoint, tmp_path, umask) -> None:
    """Not the atomic writer's private 0600: an export is meant to be copied and served by others."""
    old = os.umask(umask)
    try:
        result = export_student(checkpoint, "torchscript", tmp_path / "policy.pt")
    finally:
        os.umask(old)
    for path in (result.model, result.sidecar):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy.pt", "policy.pt.json"]


@pytest.mark.skipif(
    not HAS_ONNX, reason="onnx, onnxscript and onnxruntime are not installed (policy-distill[onnx])"
)
def test_onnx_export_matches_the_checkpoint_in_onnxruntime(checkpoint, frames) -> None:
    import onnxruntime

    result = export_student(checkpoint, "onnx")
    assert result.model == checkpoint.with_name("best.onnx") and result.check["runtime"].startswith(
        "onnxruntime"
    )
    session = onnxruntime.InferenceSession(str(result.model), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["obs"] and session.get_inputs()[
        0
    ].type == "tensor(uint8)"
    _check_exported_matches(lambda x: session.run(None, {"obs": x.numpy()})[0], checkpoint, frames)
    assert json.loads(result.sidecar.read_text())["model"]["opset"] == 20


def test_a_wrong_export_is_refused_and_nothing_is_written(checkpoint, tmp_path, monkeypatch) -> None:
    torch.manual_seed(5)
    other = export_bytes(StudentNet(StudentArch(num_actions=4)), "torchscript")
    with pytest.raises(UserError, match="differ from the checkpoint's"):
        check_export(other, "torchscript", load_student(checkpoint).net)
    import policy_distill.export as export_module

    monkeypatch.setattr(export_module, "export_bytes", lambda *a, **k: other)
    out = tmp_path / "never.pt"
    with pytest.raises(UserError, match="nothing was written"):
        export_student(checkpoint, "torchscript", out)
    assert not out.exists() and not (tmp_path / "never.pt.json").exists()


def test_the_exported_graph_takes_pixels_for_a_teacher_network_too() -> None:
    torch.manual_seed(0)
    net = TeacherNet(6).eval()
    exported = ExportedPolicy(export_bytes(net, "torchscript"), "torchscript")
    obs = torch.randint(0, 256, (3, 4, 84, 84), dtype=torch.uint8)
    with torch.no_grad():
        expected = net.log_probs(obs.float() / 255).numpy()
        np.testing.assert_allclose(PixelPolicy(net)(obs).numpy(), expected, rtol=0, atol=0)
    np.testing.assert_allclose(exported.log_probs(obs.numpy()), expected, rtol=1e-5, atol=1e-5)


def _cli(argv: list[str]) -> dict:
    args = build_parser().parse_args(argv)  # the toolkit's own command line
    return args.func(args)


def test_command_line(checkpoint, tmp_path, capsys) -> None:
    out = tmp_path / "cli.pt"
    result = _cli(["export-student", "--checkpoint", str(checkpoint), "--out", str(out), "--json"])
    assert result["model"] == str(out) and result["format"] == "torchscript" and out.is_file()
    assert "wrote" in capsys.readouterr().out
    with pytest.raises(UserError, match="is not a student checkpoint"):
        torch.save({"format": "policy-distill/teacher"}, tmp_path / "t.pt")
        _cli(["export-student", "--checkpoint", str(tmp_path / "t.pt")])
    with pytest.raises(UserError, match="does not exist"):
        _cli(["export-student", "--checkpoint", str(tmp_path / "missing.pt")])
    with pytest.raises(UserError, match="is the checkpoint itself"):
        _cli(["export-student", "--checkpoint", str(checkpoint), "--out", str(checkpoint)])
    with pytest.raises(ConfigError, match="format must be one of torchscript, onnx, got 'tflite'"):
        _cli(["export-student", "--checkpoint", str(checkpoint), "--format", "tflite"])


def test_onnx_without_its_packages_is_a_one_line_error(checkpoint, tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # makes `import onnxscript` fail
    with pytest.raises(UserError, match=r"pip install 'policy-distill\[onnx\]', or use `format` torchscript"):
        export_student(checkpoint, "onnx", tmp_path / "x.onnx")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert "onnxruntime is not installed" in check_export(b"", "onnx", StudentNet(StudentArch(4)))["skipped"]
