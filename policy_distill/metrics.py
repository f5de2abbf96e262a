"""Held-out metrics of a student against its teacher: policy closeness and gradient fidelity."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import Tensor

from policy_distill.losses import LogProbFn, input_jacobian, kl_divergence


def policy_entropy(log_probs: np.ndarray) -> np.ndarray:
    """``[N, A]`` log-probabilities (a recording's teacher policy) -> ``[N]`` entropies in nats,
    computed in float64 with 0 log 0 = 0."""
    logp = np.asarray(log_probs, dtype=np.float64)
    p = np.exp(logp)
    return -np.where(p > 0, p * logp, 0.0).sum(axis=1)


DEAD_TOLERANCE = 1e-3
"""How near a dead student's gradient cosine is to 0 and its relative L2 error to 1. Dead Pong
students ended at cosine 0 exactly, 2e-5 (alpha 0.003) or -2e-4 (KL only at 5%); the live
students of every search so far at 0.009 or more (KL-only ones, which hardly match the
teacher's gradients). The relative L2 error alone does not tell them apart: a live one ended at
0.999."""


def has_no_input_gradient(metrics: dict[str, float]) -> bool:
    """Whether held-out metrics (:func:`gradient_fidelity`'s ``grad_cosine`` and ``grad_rel_l2``)
    show a student with (almost) no input-gradient: cosine 0 and relative L2 error 1 within
    ``DEAD_TOLERANCE``, as when every unit of a ReLU layer is dead. Its policy then no longer
    depends on the frame (a constant policy), whichever action its argmax picks: under bf16 the
    rounding of a constant output can differ between rows of a batch, so a dead student's argmax
    may still take two near-tied actions (``actions_used`` 2, Pong at lr 2e-3)."""
    cosine, rel_l2 = metrics.get("grad_cosine"), metrics.get("grad_rel_l2")
    return (
        cosine is not None
        and rel_l2 is not None
        and abs(cosine) < DEAD_TOLERANCE
        and abs(rel_l2 - 1.0) < DEAD_TOLERANCE
    )


@torch.no_grad()
def policy_metrics(
    student: LogProbFn,
    batches: Callable[[], Iterable[tuple[Tensor, Tensor]]],
) -> dict[str, float]:
    """Action-prediction error and KL over held-out data.

    Args:
        student: ``log_probs`` of the student.
        batches: Returns ``[(x [B, 4, 84, 84] float, teacher_logp [B, A]), ...]`` covering the
            test split.

    Returns:
        ``action_error``: fraction of frames where argmax student != argmax teacher;
        ``kl``: mean KL(pi_student || pi_teacher), the paper's test D_KL;
        ``actions_used``: how many actions are the student's argmax on some frame (1: it has
        collapsed to a constant policy).
    """
    wrong, kl_sum, count = 0.0, 0.0, 0
    used: set[int] = set()
    for x, teacher_logp in batches():
        student_logp = student(x)
        choice = student_logp.argmax(-1)
        wrong += (choice != teacher_logp.argmax(-1)).sum().item()
        kl_sum += kl_divergence(student_logp, teacher_logp).item() * len(x)
        count += len(x)
        used.update(choice.unique().tolist())
    return {
        "action_error": wrong / max(count, 1),
        "kl": kl_sum / max(count, 1),
        "actions_used": float(len(used)),
    }


FIDELITY_CHUNK = 32
"""Frames whose student Jacobian :func:`gradient_fidelity` holds at once."""


def gradient_fidelity(student: LogProbFn, x: Tensor, teacher_jacobian: Tensor) -> dict[str, float]:
    """How close the student's input-gradients of log pi are to the teacher's, over all actions.

    Per frame b, with J the full Jacobian ``[A, D]`` flattened to one vector:
    cosine = <J_s, J_t> / (|J_s| |J_t|), relative L2 error = |J_s - J_t| / |J_t|;
    both averaged over frames.

    Args:
        x: ``[B, 4, 84, 84] float`` fixed held-out frames.
        teacher_jacobian: ``[A, B, 4, 84, 84]`` from :func:`input_jacobian` of the teacher.
    """
    cosines, rels = [], []
    # In chunks of frames, reducing over (action, pixel) in place: the whole [A, B, 4, 84, 84]
    # student Jacobian and its flattened copies took ~350 MB at 128 frames, the largest
    # allocation of a distill run (it set the peak resident memory of `make distill`).
    for start in range(0, x.shape[0], FIDELITY_CHUNK):
        _, j_s = input_jacobian(student, x[start : start + FIDELITY_CHUNK], create_graph=False)
        j_t = teacher_jacobian[:, start : start + FIDELITY_CHUNK]
        dims = (0, *range(2, j_s.dim()))  # all but the frame
        dot = (j_s * j_t).sum(dims)
        norm_s, norm_t = j_s.pow(2).sum(dims).sqrt(), j_t.pow(2).sum(dims).sqrt()
        cosines.append(dot / (norm_s * norm_t).clamp_min(1e-12))
        rels.append((j_s - j_t).pow(2).sum(dims).sqrt() / norm_t.clamp_min(1e-12))
    cosine, rel = torch.cat(cosines), torch.cat(rels)
    return {"grad_cosine": cosine.mean().item(), "grad_rel_l2": rel.mean().item()}


def gradient_maps(
    x: Tensor, teacher_jacobian: Tensor, student_jacobian: Tensor, teacher_logp: Tensor
) -> Tensor:
    """An image grid for TensorBoard: per row, newest frame | teacher |grad| | student |grad|.

    The gradient is that of log pi(a*|s) for the teacher's most likely action a*, summed in
    absolute value over the stacked frames, each map scaled to its own maximum so the two
    networks' attention patterns compare even where their scales differ.

    Args:
        x: ``[N, 4, H, W]`` frames; jacobians ``[A, N, 4, H, W]``; teacher_logp ``[N, A]``.

    Returns:
        ``[1, N*H, 3*W]`` float image in [0, 1].
    """
    best = teacher_logp.argmax(-1)
    rows = []
    for n in range(x.shape[0]):
        maps = [x[n, -1]]
        for jac in (teacher_jacobian, student_jacobian):
            saliency = jac[best[n], n].abs().sum(0)
            maps.append(saliency / saliency.max().clamp_min(1e-12))
        rows.append(torch.cat(maps, dim=1))
    return torch.cat(rows, dim=0)[None].float().clamp(0, 1)
