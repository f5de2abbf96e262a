"""A strided convolution whose input gradient is computed as a dense (stride-1) one.

The Sobolev term needs the gradient of both networks with respect to their input frames, and
on CPUs the input gradient of the first layer, an 8x8 convolution with stride 4 over
``[B, 4, 84, 84]`` frames, is the slowest single kernel of the paper's (``vjp``) step: 33 ms
for 200 frames against 7 ms for the same layer's forward (AMD EPYC, AVX512, two cores,
channels_last; oneDNN's backward-data kernel for large strides). A stride-s convolution whose
kernel size is a multiple of s is a stride-1 convolution over the space-to-depth rearrangement
of its input (each s x s block of pixels becomes s*s channels), and the input gradient of that
dense convolution takes 7.5 ms on the same machine. :class:`StridedConv2d` keeps the native
forward and weight gradient and computes only the input gradient this way; the result is the
same gradient (to float rounding), with the same parameters and ``state_dict`` as
:class:`torch.nn.Conv2d`, and it stays differentiable for the student's double backward.
``benchmarks/distill_throughput.py`` measures what it saves in whole training steps.
"""

# No `from __future__ import annotations`: TorchScript (the torchscript export) reads these
# annotations at runtime.

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _is_channels_last(t: Tensor) -> bool:
    return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def memory_format_of(t: Tensor) -> torch.memory_format:
    """channels_last for a 4-D channels_last tensor, else contiguous."""
    return torch.channels_last if _is_channels_last(t) else torch.contiguous_format


def space_to_depth_weight(weight: Tensor, stride: int) -> Tensor:
    """``[O, C, k, k]`` -> ``[O, s*s*C, k/s, k/s]``: the same filter over space-to-depth input.

    Input channel ``(i*s + j)*C + c`` of the result is pixel ``(i, j)`` of channel c in each
    s x s block. This order (block offset outer, frame channel inner) keeps the frame's channels
    contiguous in a channels_last tensor, so :func:`depth_to_space` moves runs of ``s*C``
    floats instead of single ones.
    """
    out_channels, in_channels, k, _ = weight.shape
    m = k // stride
    return (
        weight.reshape(out_channels, in_channels, m, stride, m, stride)
        .permute(0, 3, 5, 1, 2, 4)
        .reshape(out_channels, stride * stride * in_channels, m, m)
    )


def depth_to_space(t: Tensor, stride: int, channels: int) -> Tensor:
    """``[B, s*s*C, H/s, W/s]`` in :func:`space_to_depth_weight`'s channel order -> ``[B, C, H, W]``.

    Differentiable; the result has ``t``'s memory format (channels_last or contiguous).
    """
    b, _, hs, ws = t.shape
    s = stride
    if _is_channels_last(t):
        # Physical [B, hs, ws, i, j, c] -> [B, hs, i, ws, j, c]: runs of s*C floats move together.
        nhwc = t.permute(0, 2, 3, 1).reshape(b, hs, ws, s, s, channels)
        return nhwc.permute(0, 1, 3, 2, 4, 5).reshape(b, hs * s, ws * s, channels).permute(0, 3, 1, 2)
    blocks = t.reshape(b, s, s, channels, hs, ws)
    return blocks.permute(0, 3, 4, 1, 5, 2).reshape(b, channels, hs * s, ws * s)


def _gradient_node(x: Tensor) -> Any:
    """The autograd node that receives ``x``'s gradient: its ``grad_fn``, or a leaf's accumulator
    (None where there is none to find, e.g. under ``torch.func``: the gradient is then computed)."""
    if x.grad_fn is not None:
        return x.grad_fn
    view_node = x.view_as(x).grad_fn
    return None if view_node is None else view_node.next_functions[0][0]


def _engine_wants(node: Any) -> bool:
    """Whether the running backward pass uses the gradient that flows into ``node``.

    ``torch.autograd.backward(loss, inputs=params)`` (the training step) prunes the input's
    branch, and native convolutions skip their input gradient there; a custom Function's
    ``needs_input_grad`` cannot see that pruning, so it asks the engine. The engine refuses to
    answer for a leaf differentiated by ``torch.autograd.grad``, which is then wanted.
    """
    will_execute = getattr(torch._C, "_will_engine_execute_node", None)
    if will_execute is None or node is None:
        return True
    try:
        return bool(will_execute(node))
    except RuntimeError:
        return True


class _DenseInputGradient(torch.autograd.Function):
    """Identity on ``y = conv(x.detach(), w)``; gives ``x`` its gradient by space-to-depth.

    ``y`` carries the native weight and bias gradients; this function adds the input's. Its
    backward is written in differentiable operations, so a ``create_graph`` backward (the
    student's input gradient) can be differentiated again.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, y: Tensor, stride: int, x_node: Any) -> Tensor:
        ctx.save_for_backward(weight)
        ctx.x_node = x_node
        ctx.save_for_forward(weight)
        ctx.stride = stride
        ctx.input_dtype = x.dtype
        ctx.channels = x.shape[1]
        # The input gradient comes back in the input's memory format, as nn.Conv2d's does.
        ctx.memory_format = memory_format_of(x)
        return y.view_as(y)

    @staticmethod
    def jvp(
        ctx: Any, x_tangent: Tensor | None, weight_tangent: Any, y_tangent: Tensor | None, *_: Any
    ) -> Tensor:
        (weight,) = ctx.saved_tensors
        out = y_tangent
        if x_tangent is not None:
            extra = F.conv2d(x_tangent, weight.to(x_tangent.dtype), None, ctx.stride)
            out = extra if out is None else out + extra
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, Tensor, None, None]:
        (weight,) = ctx.saved_tensors
        grad_x = None
        # In the training step's backward the input's gradient is pruned: skipping it saves the
        # transposed convolution and the rearrangement of a [B, 4, 84, 84] tensor (~10 ms of a
        # ~110 ms vjp step).
        if ctx.needs_input_grad[0] and _engine_wants(ctx.x_node):
            fmt = ctx.memory_format
            dense = space_to_depth_weight(weight, ctx.stride).to(grad.dtype).contiguous(memory_format=fmt)
            grad_blocks = F.conv_transpose2d(grad.contiguous(memory_format=fmt), dense)
            grad_x = depth_to_space(grad_blocks, ctx.stride, ctx.channels).to(ctx.input_dtype)
        return grad_x, None, grad, None, None


class StridedConv2d(nn.Conv2d):
    """:class:`torch.nn.Conv2d` whose input gradient is computed by space-to-depth.

    Same constructor, parameters, ``state_dict`` and forward as ``nn.Conv2d``. When the input
    needs a gradient and the layer qualifies (square stride s > 1, kernel a multiple of s, no
    padding, dilation or groups, and an input the kernel tiles exactly: ``(H - k) % s == 0``),
    the backward computes the input gradient as a stride-1 transposed convolution over
    ``[B, s*s*C, H/s, W/s]``, then rearranges it back. Otherwise it is exactly ``nn.Conv2d``.
    """

    @torch.jit.unused
    def _qualifies(self, x: Tensor) -> bool:
        s, k = self.stride[0], self.kernel_size[0]
        return (
            x.requires_grad
            and torch.is_grad_enabled()
            and self.stride[0] == self.stride[1] > 1
            and self.kernel_size[0] == self.kernel_size[1]
            and k % s == 0
            and self.padding == (0, 0)
            and self.dilation == (1, 1)
            and self.groups == 1
            and x.dim() == 4
            and (x.shape[-2] - k) % s == 0
            and (x.shape[-1] - k) % s == 0
        )

    @torch.jit.unused
    def _forward_with_dense_input_gradient(self, x: Tensor) -> Tensor:
        y = F.conv2d(x.detach(), self.weight, self.bias, self.stride)
        return _DenseInputGradient.apply(x, self.weight, y, self.stride[0], _gradient_node(x))

    def forward(self, x: Tensor) -> Tensor:
        # TorchScript (the torchscript export) takes the native path: it has no gradients to speed up.
        if not torch.jit.is_scripting() and self._qualifies(x):
            return self._forward_with_dense_input_gradient(x)
        return self._conv_forward(x, self.weight, self.bias)
