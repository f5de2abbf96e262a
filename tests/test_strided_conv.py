"""StridedConv2d is nn.Conv2d with a faster input gradient: same outputs, same gradients of
every order the losses take, same parameters, and the native path wherever it does not apply."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import forward_ad

from policy_distill.strided_conv import StridedConv2d, depth_to_space, space_to_depth_weight

FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def twins(in_ch: int, out_ch: int, k: int, s: int, **kwargs) -> tuple[nn.Conv2d, StridedConv2d]:
    torch.manual_seed(0)
    native = nn.Conv2d(in_ch, out_ch, k, stride=s, **kwargs).double()
    fast = StridedConv2d(in_ch, out_ch, k, stride=s, **kwargs).double()
    fast.load_state_dict(native.state_dict())
    return native, fast


def input_gradient_loss(
    layer: nn.Module, x: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Sobolev pattern: an input gradient taken with create_graph, then a loss on it."""
    x = x.detach().requires_grad_(True)
    y = torch.tanh(layer(x))  # a non-linearity, so the double backward reaches the weights twice
    (gx,) = torch.autograd.grad((y * v).sum(), x, create_graph=True)
    return gx, (gx - 0.3).pow(2).sum()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(("in_ch", "k", "s", "side"), [(4, 8, 4, 84), (16, 4, 2, 20), (3, 6, 3, 15)])
def test_outputs_and_gradients_of_every_order_equal_nn_conv2d(fmt, in_ch, k, s, side) -> None:
    native, fast = twins(in_ch, 5, k, s)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, in_ch, side, side, generator=g, dtype=torch.float64).contiguous(
        memory_format=FORMATS[fmt]
    )
    for layer in (native, fast):
        layer.to(memory_format=FORMATS[fmt])
    out_side = (side - k) // s + 1
    v = torch.randn(3, 5, out_side, out_side, generator=g, dtype=torch.float64)

    assert torch.equal(native(x), fast(x))
    gx_native, loss_native = input_gradient_loss(native, x, v)
    gx_fast, loss_fast = input_gradient_loss(fast, x, v)
    torch.testing.assert_close(gx_fast, gx_native, rtol=1e-10, atol=1e-12)
    # The gradient lands in the input's memory format (a layout change costs a whole copy).
    assert gx_fast.is_contiguous(memory_format=FORMATS[fmt])
    # Second order: the loss on the input gradient, differentiated w.r.t. the weights and bias.
    native_grads = torch.autograd.grad(loss_native, list(native.parameters()))
    fast_grads = torch.autograd.grad(loss_fast, list(fast.parameters()))
    for a, b in zip(native_grads, fast_grads):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
    # First order in the weights (the KL step's path) is the native one.
    xr = x.detach().requires_grad_(True)
    for layer in (native, fast):
        layer.zero_grad()
        (layer(xr) * v).sum().backward()
    torch.testing.assert_close(fast.weight.grad, native.weight.grad, rtol=1e-10, atol=1e-12)


def test_forward_mode_tangents_equal_nn_conv2d() -> None:
    """The jvp estimator pushes tangents through the network (also when x requires grad)."""
    native, fast = twins(4, 5, 8, 4)
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 4, 84, 84, generator=g, dtype=torch.float64)
    u = torch.randn(2, 4, 84, 84, generator=g, dtype=torch.float64)
    tangents = []
    for layer in (native, fast):
        with forward_ad.dual_level():
            out = layer(forward_ad.make_dual(x.clone().requires_grad_(True), u))
            tangents.append(forward_ad.unpack_dual(out).tangent)
    torch.testing.assert_close(tangents[1], tangents[0], rtol=1e-10, atol=1e-12)


def test_layers_it_does_not_apply_to_are_exactly_nn_conv2d() -> None:
    """Padding, a kernel that is not a multiple of the stride, an input the kernel does not
    tile, or no input gradient: the native path, so nothing changes."""
    cases = [(dict(padding=1), 84), ({}, 85)]
    for kwargs, side in cases:
        native, fast = twins(4, 5, 8, 4, **kwargs)
        x = torch.rand(2, 4, side, side, dtype=torch.float64, requires_grad=True)
        assert not fast._qualifies(x)
        (gn,) = torch.autograd.grad(native(x).sum(), x)
        (gf,) = torch.autograd.grad(fast(x).sum(), x)
        assert torch.equal(gn, gf)
    _, odd = twins(4, 5, 5, 2)
    assert not odd._qualifies(torch.rand(1, 4, 21, 21, requires_grad=True))
    _, fast = twins(4, 5, 8, 4)
    assert not fast._qualifies(torch.rand(1, 4, 84, 84))  # the KL step: frames need no gradient
    assert fast._qualifies(torch.rand(1, 4, 84, 84, requires_grad=True))
    assert set(fast.state_dict()) == {"weight", "bias"}


def test_the_dense_weight_over_rearranged_input_is_the_strided_convolution() -> None:
    """The identity the backward rests on, checked forward: rearrange the input into s*s*C
    channels in the module's order, convolve densely, and get the strided convolution."""
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 4, 84, 84, generator=g, dtype=torch.float64)
    w = torch.randn(6, 4, 8, 8, generator=g, dtype=torch.float64)
    s = 4
    # depth_to_space's inverse, written out: channel (i*s + j)*C + c <- pixel (i, j) of channel c.
    blocks = x.reshape(2, 4, 21, s, 21, s).permute(0, 3, 5, 1, 2, 4).reshape(2, s * s * 4, 21, 21)
    torch.testing.assert_close(F.conv2d(blocks, space_to_depth_weight(w, s)), F.conv2d(x, w, stride=s))
    for fmt in FORMATS.values():
        assert torch.equal(depth_to_space(blocks.contiguous(memory_format=fmt), s, 4), x)


def test_bf16_autocast_gives_the_input_gradient_in_the_inputs_dtype() -> None:
    native, fast = twins(4, 5, 8, 4)
    native.float()
    fast.float()
    x = torch.rand(2, 4, 84, 84, requires_grad=True)
    grads = []
    for layer in (native, fast):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(x)
        (gx,) = torch.autograd.grad(y.float().sum(), x)
        grads.append(gx)
    assert grads[1].dtype == torch.float32
    torch.testing.assert_close(grads[1], grads[0], rtol=2e-2, atol=2e-2)


def test_a_pruned_input_gradient_is_not_computed(monkeypatch) -> None:
    """The training step's backward asks only for the parameters: the dense input gradient
    (a transposed convolution and a rearrangement) is skipped there, and still computed, equal
    to nn.Conv2d's, when the input's gradient is asked for, of a leaf or of a non-leaf input."""
    import policy_distill.strided_conv as strided_conv

    calls = []
    real = F.conv_transpose2d

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(strided_conv.F, "conv_transpose2d", counting)
    native, fast = twins(4, 5, 8, 4)
    leaf = torch.rand(2, 4, 84, 84, dtype=torch.float64, requires_grad=True)
    for make_input in (lambda: leaf, lambda: leaf * 2.0):
        calls.clear()
        torch.autograd.backward(fast(make_input()).sum(), inputs=[fast.weight])
        assert not calls and leaf.grad is None
        (gx,) = torch.autograd.grad(fast(make_input()).sum(), leaf)
        assert len(calls) == 1
        torch.testing.assert_close(gx, torch.autograd.grad(native(make_input()).sum(), leaf)[0])
        fast(make_input()).sum().backward()  # a plain backward accumulates into every leaf, the input too
        assert len(calls) == 2 and leaf.grad is not None
        leaf.grad = None
        fast.zero_grad()


def test_the_training_steps_pattern_gives_nn_conv2ds_parameter_gradients() -> None:
    """As distill's step: an input gradient with create_graph, then a backward that asks for the
    parameters only (where the layer skips the input's gradient): the same parameter gradients."""
    native, fast = twins(4, 5, 8, 4)
    g = torch.Generator().manual_seed(5)
    x = torch.rand(2, 4, 84, 84, generator=g, dtype=torch.float64)
    v = torch.randn(2, 5, 20, 20, generator=g, dtype=torch.float64)
    grads = []
    for layer in (native, fast):
        _, loss = input_gradient_loss(layer, x, v)
        params = list(layer.parameters())
        kl_like = layer(x.clone().requires_grad_(True)).pow(2).sum()  # the forward graph's path
        torch.autograd.backward(loss + kl_like, inputs=params)
        grads.append([p.grad.clone() for p in params])
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
