"""Known answers of the held-out policy metrics (``policy_metrics``), computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from policy_distill.metrics import has_no_input_gradient, policy_metrics


def lookup_student(probs: list[list[float]]):
    """A student whose frame ``x[b] = [i]`` gets the log of ``probs[i]``: known outputs, no network."""
    table = torch.tensor(probs).log()
    return lambda x: table[x[:, 0].long()]


def frames(*indices: int) -> torch.Tensor:
    return torch.tensor([[float(i)] for i in indices])


def kl(p: list[float], q: list[float]) -> float:
    return sum(pa * math.log(pa / qa) for pa, qa in zip(p, q))


AGREE, DISAGREE, TEACHER = [0.2, 0.8], [0.8, 0.2], [0.4, 0.6]
"""Two student outputs, one with the teacher's argmax (action 1) and one without, and the teacher's."""


def test_action_error_and_kl_are_per_frame_means_over_uneven_batches() -> None:
    # Frames 0, 1 and 3 agree with the teacher, frame 2 does not; batches of 3 frames and 1.
    student = lookup_student([AGREE, AGREE, DISAGREE, AGREE])
    teacher_logp = torch.tensor([TEACHER]).log()
    batches = [(frames(0, 1, 2), teacher_logp.expand(3, 2)), (frames(3), teacher_logp)]

    metrics = policy_metrics(student, lambda: batches)

    # Per frame: 1 wrong of 4 = 0.25 (a mean of per-batch means would give (1/3 + 0) / 2 = 1/6).
    assert metrics["action_error"] == pytest.approx(0.25)
    assert metrics["actions_used"] == 2  # AGREE's argmax on three frames, DISAGREE's on one
    # KL(student || teacher), as documented: 0.0915 per agreeing frame, 0.3348 for the other.
    expected_kl = (3 * kl(AGREE, TEACHER) + kl(DISAGREE, TEACHER)) / 4  # 0.1523
    assert metrics["kl"] == pytest.approx(expected_kl, rel=1e-5)
    # The counter-examples differ from it by far more than the tolerance.
    reverse_kl = (3 * kl(TEACHER, AGREE) + kl(TEACHER, DISAGREE)) / 4  # 0.1740
    per_batch_kl = ((2 * kl(AGREE, TEACHER) + kl(DISAGREE, TEACHER)) / 3 + kl(AGREE, TEACHER)) / 2  # 0.1321
    assert min(abs(reverse_kl - expected_kl), abs(per_batch_kl - expected_kl)) > 0.01


def test_action_error_compares_argmaxes_not_sampled_actions() -> None:
    # The teacher barely prefers action 1 and the student clearly does: the argmaxes agree on
    # every frame, so the error is exactly 0. Comparing with an action sampled from the teacher
    # would be wrong on ~49% of the 200 frames, and with one sampled from the student on ~30%.
    student = lookup_student([[0.3, 0.7]])
    teacher_logp = torch.tensor([[0.49, 0.51]]).log().expand(100, 2)
    batches = [(frames(*[0] * 100), teacher_logp)] * 2

    assert policy_metrics(student, lambda: batches)["action_error"] == 0.0

    # And a student preferring the teacher's less likely action is wrong on every frame.
    contrary = lookup_student([[0.7, 0.3]])
    assert policy_metrics(contrary, lambda: batches)["action_error"] == 1.0
    assert policy_metrics(contrary, lambda: batches)["actions_used"] == 1  # one action everywhere


def test_no_input_gradient_needs_both_cosine_zero_and_relative_error_one() -> None:
    """A dead student's fidelity is cosine 0 and relative L2 error 1; the relative error alone
    does not tell it from a live KL-only student (0.999 with cosine 0.009)."""
    assert has_no_input_gradient({"grad_cosine": 2e-5, "grad_rel_l2": 1.0001})
    assert not has_no_input_gradient({"grad_cosine": 0.009, "grad_rel_l2": 0.999})
    assert not has_no_input_gradient({"grad_cosine": 0.0, "grad_rel_l2": 0.9})
    assert not has_no_input_gradient({"kl": 4.5})  # no fidelity measured: not judged dead
