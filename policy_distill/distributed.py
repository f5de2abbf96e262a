"""Data-parallel distillation under ``torchrun``: this process's place in the job and the
collective operations the training step needs (see :class:`World`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from policy_distill.losses import DistillLoss


@dataclass(frozen=True)
class World:
    """This process's place in a ``torchrun`` job of ``size`` > 1 processes (from its env vars).

    Data-parallel by hand rather than through ``DistributedDataParallel``. DDP's reducer is armed
    by the wrapped module's ``forward``, once per ``backward``; the loss calls ``student.log_probs``
    (not ``forward``), the ``fd`` estimator runs the student K + 1 times per backward and ``jvp``
    runs it under forward-mode AD. (Checked with torch 2.13 and gloo: a DDP-wrapped student whose
    forward the ``vjp`` loss does go through survives the double backward and syncs gradients.)
    Averaging the parameter gradients with one ``all_reduce`` after the backward is what DDP's
    reducer does, for every estimator alike, only not overlapped with the backward (the student has
    ~0.7M parameters: one 2.7 MB message per step).
    """

    rank: int
    size: int
    local_rank: int

    @classmethod
    def from_env(cls) -> World | None:
        """The world torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK); None for one process."""
        size = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if size <= 1:
            return None
        return cls(int(os.environ.get("RANK", "0")), size, int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, batch_size: int) -> slice:
        """This rank's contiguous share of a global batch (``batch_size`` divisible by ``size``)."""
        per_rank = batch_size // self.size
        return slice(self.rank * per_rank, (self.rank + 1) * per_rank)

    def direction_generator(self, seed: int, step: int, device: torch.device) -> torch.Generator:
        """This rank's generator of the Sobolev directions of ``step``: a stream of its own, from
        (seed, rank, step), so that it needs no checkpointed state to resume exactly."""
        state = np.random.SeedSequence([seed, self.rank, step]).generate_state(2, np.uint32)
        return torch.Generator(device=device).manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)

    def mean_loss(self, loss: DistillLoss) -> DistillLoss:
        """The global batch's loss terms (detached): each rank's share's mean, averaged."""
        import torch.distributed as dist

        terms = torch.stack([loss.total, loss.kl, loss.sobolev]).detach().float()
        dist.all_reduce(terms)
        terms /= self.size
        return DistillLoss(total=terms[0], kl=terms[1], sobolev=terms[2])

    def average_gradients(self, params: list[Tensor]) -> None:
        """Replace every parameter's gradient with its mean over the ranks (one all_reduce):
        equal shares make it the gradient of the global batch's mean loss."""
        import torch.distributed as dist
        from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

        grads = [p.grad for p in params if p.grad is not None]
        flat = _flatten_dense_tensors(grads)
        dist.all_reduce(flat)
        flat /= self.size
        for grad, mean in zip(grads, _unflatten_dense_tensors(flat, grads)):
            grad.copy_(mean)

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (a picklable object)."""
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]
