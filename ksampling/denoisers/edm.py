"""EDM preconditioning (Karras et al. 2022, "Elucidating the Design Space", Table 1 and §5).

A network F trained with EDM's preconditioning is called on a unit-variance input and a
log-scale noise label, and its output is mixed with a skip connection:

    D(x; σ) = c_skip(σ) x + c_out(σ) F(c_in(σ) x; c_noise(σ))

    c_skip = σ_d² / (σ² + σ_d²)     c_out = σ σ_d / √(σ² + σ_d²)
    c_in   = 1 / √(σ² + σ_d²)       c_noise = ¼ ln σ

with σ_d the standard deviation of the data (0.5 for images in [−1, 1]). The training loss
is λ(σ) ‖D(x0 + σ n; σ) − x0‖² with λ(σ) = (σ² + σ_d²)/(σ σ_d)² and ln σ ~ N(P_mean, P_std²).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .base import Denoiser
from .wrappers import _checked_sigma_batch, _dims

__all__ = ["EDMPrecond", "edm_scalings", "edm_loss_weight", "edm_training_sigmas", "edm_loss", "present_as_edm_network"]


def _check_sigma_data(sigma_data) -> float:
    if isinstance(sigma_data, bool) or not isinstance(sigma_data, (int, float)):
        raise TypeError(f"sigma_data must be a number, got {type(sigma_data).__name__}")
    if not (math.isfinite(sigma_data) and sigma_data > 0):
        raise ValueError(f"sigma_data must be a finite number > 0, got {sigma_data}")
    return float(sigma_data)


def edm_scalings(sigma: torch.Tensor, sigma_data: float = 0.5):
    """``(c_skip, c_out, c_in, c_noise)`` of EDM's preconditioning at noise level(s) σ
    (Karras et al. 2022, Table 1), with the shape of ``sigma``."""
    sigma_data = _check_sigma_data(sigma_data)
    total = sigma**2 + sigma_data**2
    c_skip = sigma_data**2 / total
    c_out = sigma * sigma_data * torch.rsqrt(total)
    c_in = torch.rsqrt(total)
    c_noise = torch.log(sigma) / 4
    return c_skip, c_out, c_in, c_noise


def edm_loss_weight(sigma: torch.Tensor, sigma_data: float = 0.5) -> torch.Tensor:
    """λ(σ) = (σ² + σ_d²)/(σ σ_d)² = 1/c_out²: the weight that gives the network's own target
    unit variance at every σ (Karras et al. 2022, eq. 8 and Table 1)."""
    sigma_data = _check_sigma_data(sigma_data)
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def _check_log_normal(P_mean, P_std):
    for name, value in (("P_mean", P_mean), ("P_std", P_std)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if P_std < 0:
        raise ValueError(f"P_std must be >= 0, got {P_std}")


def edm_training_sigmas(
    n: int, generator: torch.Generator, P_mean: float = -1.2, P_std: float = 1.2, *, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``n`` training noise levels from EDM's distribution ln σ ~ N(P_mean, P_std²)
    (Karras et al. 2022, Table 1), drawn from ``generator`` (on the generator's device)."""
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator (the global RNG is never used), got {type(generator).__name__}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    _check_log_normal(P_mean, P_std)
    normal = torch.randn(n, generator=generator, device=generator.device, dtype=dtype)
    return torch.exp(P_mean + P_std * normal)


class EDMPrecond(Denoiser):
    """D(x; σ) = c_skip x + c_out · network(c_in x, c_noise, **extra_args) (see the module).

    ``sigma_min`` / ``sigma_max`` only describe the supported range (EDM's defaults are 0
    and ∞); they are not enforced.
    """

    def __init__(self, network, sigma_data: float = 0.5, sigma_min: float = 0.0, sigma_max: float = math.inf):
        super().__init__()
        if not callable(network):
            raise TypeError(f"network must be callable, got {type(network).__name__}")
        self.network = network
        self.sigma_data = _check_sigma_data(sigma_data)
        for name, value in (("sigma_min", sigma_min), ("sigma_max", sigma_max)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if not sigma_min < sigma_max:
            raise ValueError(f"sigma_min must be < sigma_max, got {sigma_min} and {sigma_max}")
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)

    def forward(self, x: torch.Tensor, sigma, **extra_args) -> torch.Tensor:
        sigma = _checked_sigma_batch(sigma, x)[0]
        c_skip, c_out, c_in, c_noise = edm_scalings(sigma, self.sigma_data)
        output = self.network(x * _dims(c_in, x.ndim), c_noise, **extra_args)
        if not isinstance(output, torch.Tensor) or output.shape != x.shape:
            got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise ValueError(f"the network returned {got}, expected a tensor of x's shape {tuple(x.shape)}")
        return _dims(c_skip, x.ndim) * x + _dims(c_out, x.ndim) * output

    def extra_repr(self) -> str:
        return f"sigma_data={self.sigma_data:g}"


def edm_loss(
    precond_denoiser: EDMPrecond,
    x0: torch.Tensor,
    generator: torch.Generator,
    P_mean: float = -1.2,
    P_std: float = 1.2,
    **extra_args,
) -> torch.Tensor:
    """EDM's training loss per sample (Karras et al. 2022, eq. 2 with Table 1's choices):

    σ = exp(P_mean + P_std ξ), ξ ~ N(0, 1);  n ~ N(0, I);
    loss_i = λ(σ_i) · mean over the sample's elements of (D(x0 + σ n; σ) − x0)².

    Returns a ``[B]`` tensor (average it for the batch loss). All randomness comes from
    ``generator``, which must live on x0's device.
    """
    if not isinstance(precond_denoiser, EDMPrecond):
        raise TypeError(f"precond_denoiser must be an EDMPrecond, got {type(precond_denoiser).__name__}")
    if not isinstance(x0, torch.Tensor) or not x0.is_floating_point() or x0.ndim < 1:
        raise TypeError("x0 must be a floating-point tensor with a batch dimension")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if generator.device.type != x0.device.type:
        raise ValueError(f"generator is on {generator.device}, x0 on {x0.device}: they must match")
    sigma = edm_training_sigmas(x0.shape[0], generator, P_mean, P_std, dtype=x0.dtype).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    shape = (-1,) + (1,) * (x0.ndim - 1)
    denoised = precond_denoiser(x0 + noise * sigma.reshape(shape), sigma, **extra_args)
    weight = edm_loss_weight(sigma, precond_denoiser.sigma_data)
    return weight * (denoised - x0).pow(2).reshape(x0.shape[0], -1).mean(dim=1)


class _EDMPresentedNetwork(nn.Module):
    def __init__(self, denoiser, sigma_data: float):
        super().__init__()
        self.denoiser = denoiser
        self.sigma_data = _check_sigma_data(sigma_data)

    def forward(self, x_in: torch.Tensor, c_noise: torch.Tensor, **extra_args) -> torch.Tensor:
        sigma = torch.exp(4 * c_noise)
        c_skip, c_out, c_in, _ = edm_scalings(sigma, self.sigma_data)
        shape = (-1,) + (1,) * (x_in.ndim - 1)
        x = x_in / c_in.reshape(shape)
        return (self.denoiser(x, sigma, **extra_args) - c_skip.reshape(shape) * x) / c_out.reshape(shape)


def present_as_edm_network(denoiser, sigma_data: float = 0.5) -> nn.Module:
    """A module ``network(c_in x, c_noise, **extra_args)`` returning F = (D − c_skip x)/c_out,
    what an ideal EDM-preconditioned network outputs, so that
    ``EDMPrecond(present_as_edm_network(D, σ_d), σ_d)(x, σ) == D(x, σ)``."""
    if not callable(denoiser):
        raise TypeError(f"denoiser must be callable, got {type(denoiser).__name__}")
    return _EDMPresentedNetwork(denoiser, sigma_data)
