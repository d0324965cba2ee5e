"""SSO, MuonSphere and SpikeAware see a convolution kernel (out, in, *kernel) as ONE (out, in * prod(kernel))
matrix (for SSO: on one sphere), never as a stack of per-tap or per-pixel matrices; the routing report says how
each parameter with more than 2 dims is seen."""

from __future__ import annotations

import math

import _svd_oracle as oracle
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from spectrakit.optim.spike_aware import SpikeAware
from spectrakit.optim.sso import SSO, MuonSphere, spectral_init_

pytestmark = pytest.mark.usefixtures("one_thread")


def _conv_and_flat_twin(conv: nn.Module, cls: type, steps: int = 3, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Train ``conv`` (built into the optimizer as a model) and a 2-D parameter holding its flattened kernel
    on the same loss; return both kernels, flattened."""
    conv_fn = {1: F.conv1d, 2: F.conv2d}[conv.weight.dim() - 2]
    twin = nn.Parameter(conv.weight.detach().flatten(1).clone().contiguous())
    opt, opt_twin = cls(conv, lr=0.05, **kwargs), cls([twin], lr=0.05, **kwargs)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.randn(2, conv.in_channels, *(5,) * (conv.weight.dim() - 2), generator=g)
        target = torch.randn(conv(x).shape, generator=g)
        opt.zero_grad()
        F.mse_loss(conv(x), target).backward()
        opt.step()
        opt_twin.zero_grad()
        F.mse_loss(conv_fn(x, twin.view(conv.weight.shape), padding=conv.padding), target).backward()
        opt_twin.step()
    return conv.weight.detach().flatten(1), twin.detach()


@pytest.mark.parametrize("cls", [SSO, MuonSphere], ids=lambda c: c.__name__)
@pytest.mark.parametrize("kernel", [1, 3])
def test_a_conv2d_kernel_is_one_flattened_matrix_on_one_sphere(cls: type, kernel: int) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, kernel, padding=kernel // 2, bias=False)
    got, expected = _conv_and_flat_twin(conv, cls)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    R = math.sqrt(6 / (4 * kernel * kernel))
    assert float(oracle.spectral_norm(got)) == pytest.approx(R, rel=0.06)
    assert float(got.abs().amax()) < 0.9 * R  # per pixel, every entry of a 1 x 1 kernel would end at +-R


@pytest.mark.parametrize("kernel", [1, 3])
def test_spike_aware_sees_a_conv2d_kernel_as_its_flattened_matrix(kernel: int) -> None:
    torch.manual_seed(6)
    conv = nn.Conv2d(4, 6, kernel, padding=kernel // 2, bias=False)
    got, expected = _conv_and_flat_twin(conv, SpikeAware, rank_fraction=0.25)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    assert f"seen as one 6 x {4 * kernel * kernel} matrix (flatten)" in SpikeAware(conv, lr=0.05).routing_report()


def test_a_conv1d_kernel_of_a_model_is_flattened_and_a_plain_3d_tensor_is_a_stack() -> None:
    torch.manual_seed(1)
    conv = nn.Conv1d(4, 6, 3, padding=1, bias=False)
    got, expected = _conv_and_flat_twin(conv, SSO)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    assert "seen as one 6 x 12 matrix (flatten)" in SSO(conv, lr=0.05).routing_report()
    experts = nn.Parameter(torch.randn(3, 6, 4))
    assert "a stack of 3 6 x 4 matrices, each on its own" in SSO([("experts", experts)], lr=0.05).routing_report()
    forced = SSO([{"params": [("experts", experts)], "flatten": True}], lr=0.05)
    assert "seen as one 3 x 24 matrix (flatten)" in forced.routing_report()


def test_flatten_false_keeps_the_per_pixel_stack_and_says_so() -> None:
    torch.manual_seed(2)
    conv = nn.Conv2d(4, 6, 1, bias=False)
    opt = SSO(conv, lr=0.05, flatten=False)
    assert "a stack of 24 1 x 1 matrices, each on its own" in opt.routing_report()
    F.mse_loss(conv(torch.randn(2, 4, 3, 3)), torch.randn(2, 6, 3, 3)).backward()
    opt.step()
    torch.testing.assert_close(conv.weight.detach().abs(), torch.ones(6, 4, 1, 1), atol=0.05 + 1e-5, rtol=0)


@pytest.mark.parametrize("cls", [SSO, SpikeAware], ids=lambda c: c.__name__)
def test_a_channels_last_kernel_takes_the_same_steps(cls: type) -> None:
    torch.manual_seed(3)
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=False)
    twin = nn.Conv2d(4, 6, 3, padding=1, bias=False).to(memory_format=torch.channels_last)
    with torch.no_grad():
        twin.weight.copy_(conv.weight)
    assert not twin.weight.is_contiguous()
    opts = [cls(conv, lr=0.05), cls(twin, lr=0.05)]
    g = torch.Generator().manual_seed(4)
    for _ in range(3):
        x, y = torch.randn(2, 4, 5, 5, generator=g), torch.randn(2, 6, 5, 5, generator=g)
        for model, opt in zip((conv, twin), opts):
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            opt.step()
    assert twin.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(twin.weight.detach(), conv.weight.detach(), atol=1e-6, rtol=0)


def test_spectral_init_puts_a_conv_kernel_on_the_sphere_of_its_flattened_matrix() -> None:
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv1d(8, 8, 5))
    spectral_init_(model, radius_scale=2.0)
    for conv in model:
        flat = conv.weight.detach().flatten(1).double()
        assert float(oracle.spectral_norm(flat)) == pytest.approx(2 * math.sqrt(8 / flat.shape[1]),
                                                                          rel=1e-5)
    kernel = torch.randn(8, 3, 3, 3)
    spectral_init_([kernel])
    assert float(oracle.spectral_norm(kernel.flatten(1))) == pytest.approx(math.sqrt(8 / 27),
                                                                                              rel=1e-5)
