"""Precision follows the hardware: ``auto`` is bf16 only with native bf16 units."""

from __future__ import annotations

import pytest
import torch

from policy_distill import devices
from policy_distill.errors import UserError

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("capability", "avx512_bf16", "amx", "expected"),
    [
        ("AVX2", False, False, "fp32"),  # emulated bf16: ~10x slower than fp32, measured
        ("AVX512", False, False, "fp32"),
        ("AVX512", True, False, "bf16"),
        ("AVX512", True, True, "bf16"),
        ("AVX512", False, True, "bf16"),
        ("DEFAULT", False, False, "fp32"),
    ],
)
def test_auto_precision_on_cpus(monkeypatch, capability, avx512_bf16, amx, expected) -> None:
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert devices.resolve_precision("auto", CPU) == expected
    # An explicit choice always wins, whatever the hardware.
    assert devices.resolve_precision("fp32", CPU) == "fp32"
    assert devices.resolve_precision("bf16", CPU) == "bf16"
    assert devices.cpu_capability().startswith(capability)
    assert ("+bf16" in devices.cpu_capability()) == avx512_bf16


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_precision_on_cuda(monkeypatch, native, expected) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native)
    assert devices.resolve_precision("auto", torch.device("cuda")) == expected


def test_unknown_precision_is_refused() -> None:
    with pytest.raises(UserError, match="precision 'fp16' is not one of auto, fp32, bf16"):
        devices.resolve_precision("fp16", CPU)
