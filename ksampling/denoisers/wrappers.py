"""Wrap a network as the denoiser D(x; σ): :class:`NetworkDenoiser` calls it with its own
input and time (:mod:`~ksampling.denoisers.processes`) and turns its output into D by the
table of :mod:`~ksampling.denoisers.predictions`.
"""

from __future__ import annotations

import math
import warnings

import torch

from .base import Denoiser, LearnedVariance, sigma_check_due
from .predictions import (  # noqa: F401  (re-exported: the names of this module before the split)
    LEARNED_VARIANCES,
    PREDICTIONS,
    PresentedNetwork,
    _check_learned_variance,
    _check_prediction,
    _check_process,
    _dims,
    denoised_from_prediction,
    prediction_from_denoised,
    present_as_network,
)
from .processes import NoiseProcess, VPDiscrete

__all__ = ["PREDICTIONS", "LEARNED_VARIANCES", "NetworkDenoiser", "present_as_network", "eps_ddpm", "v_ddpm"]


def _sigma_batch(sigma, x: torch.Tensor) -> torch.Tensor:
    """σ as a ``[B]`` tensor on x's device (a number or a 0-d / 1-element tensor is broadcast).
    A number is checked (finite, >= 0) on the host for free; a tensor is not read."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.ndim < 1:
        raise ValueError("x must have a batch dimension")
    batch = x.shape[0]
    if not isinstance(sigma, torch.Tensor):
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)):
            raise TypeError(f"sigma must be a tensor of shape [B] or a number, got {type(sigma).__name__}")
        return x.new_full((batch,), _check_sigma_values(float(sigma), float(sigma)))
    if sigma.numel() == 1 and sigma.ndim <= 1:
        return sigma.reshape(1).expand(batch)
    if sigma.ndim != 1 or sigma.shape[0] != batch:
        raise ValueError(f"sigma must have shape [B] = [{batch}] (one noise level per sample), got {tuple(sigma.shape)}")
    return sigma


def _checked_sigma_batch(sigma, x: torch.Tensor) -> tuple[torch.Tensor, float | None]:
    """``(σ as a [B] tensor, the largest σ or None)``, every σ checked to be finite and >= 0.

    A tensor is checked with one transfer of its min and max, unless the caller already
    validated it (the sampling loop does, so it makes no per-call host sync; see
    :func:`~ksampling.denoisers.base.sigmas_checked_by_caller`); the largest σ is then None.
    """
    batch = _sigma_batch(sigma, x)
    if not isinstance(sigma, torch.Tensor):
        return batch, float(sigma)
    if not sigma_check_due(batch):
        return batch, None
    low, high = torch.stack(torch.aminmax(batch)).tolist()  # one transfer; NaN propagates
    return batch, _check_sigma_values(low, high)


def _check_sigma_values(low: float, high: float) -> float:
    """Raise unless every σ in [low, high] is a noise level (finite, >= 0); return ``high``."""
    if math.isnan(low) or math.isnan(high):
        raise ValueError("sigma contains NaN; a noise level must be a finite number >= 0")
    if low < 0:
        raise ValueError(f"sigma = {low:g} is negative; a noise level must be a finite number >= 0")
    if math.isinf(high):
        raise ValueError("sigma is inf; a noise level must be a finite number >= 0")
    return high


class NetworkDenoiser(Denoiser):
    """D(x; σ) from a network trained on ``process`` that predicts ``prediction``.

    ``network(x_net, t, **extra_args)`` gets ``x_net = x · process.input_scale(σ)`` and
    ``t = process.sigma_to_t(σ)``; its output F becomes D by the table of
    :mod:`~ksampling.denoisers.predictions`.

    ``learned_variance`` (improved DDPM, Nichol & Dhariwal 2021): ``"learned"`` (log Σ) or
    ``"learned_range"`` (v ∈ [−1, 1] mixing log β and log β̃): the network then returns twice
    the channels of x on dim 1, the prediction first and the variance output second.
    :meth:`denoise_with_variance` returns both (the ``ddpm`` solver uses the variance);
    ``forward`` returns D only.

    σ must be finite and >= 0 (a ``ValueError`` otherwise). Above the process's ``sigma_max``
    the network is outside its training range (a discrete VP network is given its last
    training time; for an ε-network D's error then grows like σ/σ_max, 0.7 at σ = 300 and 49
    at σ = 10⁴ against σ_max = 157 on Gaussian data): more than 1% above it, a
    ``UserWarning`` says so (:meth:`check_sigma_range`). Direct calls check every σ (one host transfer);
    :func:`ksampling.sample` checks its grid once instead, so its loop makes no host sync.
    """

    #: how far above ``sigma_max`` (relative) σ may go before :meth:`check_sigma_range` warns:
    #: a grid computed in float32 from the network's own σ_max rounds above it by ~1e-7.
    SIGMA_MAX_TOLERANCE = 0.01

    def __init__(self, network, process: NoiseProcess, prediction: str = "eps", learned_variance: str | None = None):
        super().__init__()
        if not callable(network):
            raise TypeError(f"network must be callable, got {type(network).__name__}")
        self.network = network
        self.process = _check_process(process)
        self.prediction = _check_prediction(prediction, process)
        self.learned_variance = _check_learned_variance(learned_variance)
        self.sigma_min = process.sigma_min
        self.sigma_max = process.sigma_max

    def forward(self, x: torch.Tensor, sigma, **extra_args) -> torch.Tensor:
        return self.denoise_with_variance(x, sigma, **extra_args)[0]

    def denoise_with_variance(self, x: torch.Tensor, sigma, **extra_args):
        """``(D, LearnedVariance | None)``: the denoised estimate and, for networks with a
        learned variance, their raw variance output."""
        sigma, largest = _checked_sigma_batch(sigma, x)
        if largest is not None:
            self.check_sigma_range(largest)
        t = self.process.sigma_to_t(sigma)
        x_net = x * _dims(self.process.input_scale(sigma).to(x.dtype), x.ndim)
        output = self.network(x_net, t, **extra_args)
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"the network must return a tensor, got {type(output).__name__}")
        variance = None
        if self.learned_variance is not None:
            if output.ndim < 2 or output.shape[1] != 2 * x.shape[1]:
                raise ValueError(
                    f"learned_variance={self.learned_variance!r} needs a network output with 2 × {x.shape[1]} "
                    f"channels on dim 1, got shape {tuple(output.shape)}"
                )
            output, value = output.chunk(2, dim=1)
            variance = LearnedVariance(self.learned_variance, value)
        if output.shape != x.shape:
            raise ValueError(f"the network returned shape {tuple(output.shape)}, expected x's shape {tuple(x.shape)}")
        return denoised_from_prediction(self.prediction, output, x, sigma, self.process, t), variance

    def check_sigma_range(self, sigma: float) -> None:
        """Warn if the noise level ``sigma`` (a float) lies more than
        :attr:`SIGMA_MAX_TOLERANCE` above the process's ``sigma_max``."""
        if sigma > self.sigma_max * (1 + self.SIGMA_MAX_TOLERANCE):
            warnings.warn(
                f"sigma = {sigma:g} is above the network's training range (sigma_max = {self.sigma_max:g} for "
                f"{self.process!r}), where its denoised estimate is unreliable (a discrete VP network is given "
                "the time of sigma_max). Start the grid at denoiser.sigma_max.",
                UserWarning,
                stacklevel=2,
            )

    def extra_repr(self) -> str:
        extra = f", learned_variance={self.learned_variance!r}" if self.learned_variance else ""
        return f"process={self.process!r}, prediction={self.prediction!r}{extra}"


def eps_ddpm(network, alphas_cumprod, time: str = "interpolate", learned_variance: str | None = None) -> NetworkDenoiser:
    """D(x; σ) for a discrete DDPM ε-network given its ``alphas_cumprod``
    (k-diffusion's ``DiscreteEpsDDPMDenoiser``; ``time="round"`` is its ``quantize=True``)."""
    return NetworkDenoiser(network, VPDiscrete(alphas_cumprod=alphas_cumprod, time=time), "eps", learned_variance)


def v_ddpm(network, alphas_cumprod, time: str = "interpolate") -> NetworkDenoiser:
    """D(x; σ) for a discrete v-network (k-diffusion's ``DiscreteVDDPMDenoiser``)."""
    return NetworkDenoiser(network, VPDiscrete(alphas_cumprod=alphas_cumprod, time=time), "v")
