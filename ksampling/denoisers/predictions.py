r"""Prediction types: turn a network's output into the denoiser D(x; σ), and back.

A network of a :class:`~ksampling.denoisers.processes.NoiseProcess` is called as
``network(x_net, t, **extra_args)`` with ``x_net = x · input_scale(σ)`` and
``t = sigma_to_t(σ)``. Whatever it predicts is a reparameterisation of D (DESIGN.md): with
``x = x0 + σ n`` in the VE state space, ``α`` the process's signal coefficient
(``x_net = α x0 + s n``, ``s = σ α``) and ``F`` the network's output,

| kind | what an ideal network outputs | D(x; σ) |
|---|---|---|
| eps | ε̂ = E[n \| x] (Ho et al. 2020) | `x − σ F` |
| x0 | E[x0 \| x] ("sample") | `F` |
| v | α ε̂ − s x̂0 (Salimans & Ho 2022) | `(x − σ F/α) / (1 + σ²)` |
| score | ∇ log p(x_net), the network's own space (Song et al. 2021) | `x + σ² α F` (ε̂ = −s F) |
| flow | n̂ − x̂0, the rectified-flow velocity | `(x − σ F)/(1 + σ) = x_t − t F` |
| mean | μ of q(x_{t−1} \| x_t, x̂0) (DDPM's μ-parameterisation) | `(F − c1 x_net)/c0` |

For the VP process (α = 1/√(1+σ²)) the v row is ``α² x − σ α F`` and the score row is
``x + σ² α F = x − σ ε̂`` (score-SDE VP networks predict ∇ log p of ``x_vp``, −ε/s; for VE,
α = 1, the VE-space score). For flow, ``x_t = x/(1+σ)`` and ``t = σ/(1+σ)``. The mean uses the
posterior of the network's training step t → t − 1 (:meth:`VPDiscrete.posterior`), so it needs
a discrete VP process.
"""

from __future__ import annotations

import torch
from torch import nn

from .processes import NoiseProcess

__all__ = ["PREDICTIONS", "LEARNED_VARIANCES", "denoised_from_prediction", "prediction_from_denoised", "present_as_network"]

PREDICTIONS = ("eps", "x0", "v", "score", "flow", "mean")
LEARNED_VARIANCES = (None, "learned", "learned_range")


def _check_process(process) -> NoiseProcess:
    if not isinstance(process, NoiseProcess):
        raise TypeError(f"process must be a ksampling.denoisers.NoiseProcess (VE, VPDiscrete, ...), got {type(process).__name__}")
    return process


def _check_prediction(prediction, process) -> str:
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {', '.join(map(repr, PREDICTIONS))}; got {prediction!r}")
    if prediction == "mean" and not process.discrete:
        raise ValueError(
            "prediction='mean' needs a discrete VP process (VPDiscrete): the mean of the reverse step is "
            f"defined by its previous training step; got {type(process).__name__}"
        )
    return prediction


def _check_learned_variance(learned_variance):
    if learned_variance not in LEARNED_VARIANCES:
        raise ValueError(f"learned_variance must be one of {LEARNED_VARIANCES}; got {learned_variance!r}")
    return learned_variance


def _dims(value: torch.Tensor, ndim: int) -> torch.Tensor:
    return value.reshape(value.shape + (1,) * (ndim - value.ndim))


def denoised_from_prediction(kind, output, x, sigma, process, t=None):
    """D(x; σ) from a network output of ``kind`` (see the module's table). ``sigma`` is ``[B]``."""
    s = _dims(sigma, x.ndim)
    if kind == "eps":
        return torch.addcmul(x, s, output, value=-1)  # x − σ·ε in one pass
    if kind == "x0":
        return output
    if kind == "v":
        return (x - s * output / _dims(process.alpha(sigma), x.ndim)) / (1 + s**2)
    if kind == "score":
        return x + s**2 * _dims(process.alpha(sigma), x.ndim) * output
    if kind == "flow":
        return (x - s * output) / (1 + s)
    if kind == "mean":
        c0, c1, _ = process.posterior(process.sigma_to_t(sigma) if t is None else t)
        x_net = x * _dims(process.input_scale(sigma), x.ndim)
        return (output - _dims(c1.to(x.dtype), x.ndim) * x_net) / _dims(c0.to(x.dtype), x.ndim)
    raise ValueError(f"unknown prediction {kind!r}")


def prediction_from_denoised(kind, denoised, x, sigma, process, t=None):
    """The output of an ideal ``kind`` network given the exact D (the inverse of
    :func:`denoised_from_prediction`). Needs σ > 0 for eps, v, score and flow."""
    s = _dims(sigma, x.ndim)
    if kind == "eps":
        return (x - denoised) / s
    if kind == "x0":
        return denoised
    if kind == "v":
        eps = (x - denoised) / s
        return _dims(process.alpha(sigma), x.ndim) * (eps - s * denoised)
    if kind == "score":
        return -(x - denoised) / (s**2 * _dims(process.alpha(sigma), x.ndim))
    if kind == "flow":
        return (x - denoised) / s - denoised
    if kind == "mean":
        c0, c1, _ = process.posterior(process.sigma_to_t(sigma) if t is None else t)
        x_net = x * _dims(process.input_scale(sigma), x.ndim)
        return _dims(c0.to(x.dtype), x.ndim) * denoised + _dims(c1.to(x.dtype), x.ndim) * x_net
    raise ValueError(f"unknown prediction {kind!r}")


class PresentedNetwork(nn.Module):
    """A denoiser dressed as a ``prediction``-type network of ``process`` (see
    :func:`present_as_network`)."""

    def __init__(self, denoiser, process: NoiseProcess, prediction: str, learned_variance: str | None = None):
        super().__init__()
        if not callable(denoiser):
            raise TypeError(f"denoiser must be callable, got {type(denoiser).__name__}")
        self.denoiser = denoiser
        self.process = _check_process(process)
        self.prediction = _check_prediction(prediction, process)
        self.learned_variance = _check_learned_variance(learned_variance)
        if learned_variance == "learned" and not process.discrete:
            raise ValueError(
                "learned_variance='learned' can only be presented for a discrete VP process (its log β̃ needs "
                f"the previous training step); got {type(process).__name__}. Use 'learned_range'."
            )

    def forward(self, x_net: torch.Tensor, t: torch.Tensor, **extra_args) -> torch.Tensor:
        # The network knows only its own time: a rounded index stands for σ_k, and it reads
        # its input as α(σ_k) x0 + s(σ_k) n, whatever σ the caller had in mind.
        sigma = self.process.t_to_sigma(t).to(x_net.dtype)
        x = x_net / _dims(self.process.input_scale(sigma), x_net.ndim)
        denoised = self.denoiser(x, sigma, **extra_args)
        output = prediction_from_denoised(self.prediction, denoised, x, sigma, self.process, t)
        if self.learned_variance is None:
            return output
        if self.learned_variance == "learned_range":
            # v = −1 selects log β̃, the variance of the true posterior q(x_{t−1} | x_t, x0)
            value = -torch.ones_like(output)
        else:
            _, _, log_beta_tilde = self.process.posterior(t)
            value = _dims(log_beta_tilde.to(output.dtype), output.ndim).expand_as(output)
        return torch.cat([output, value], dim=1)


def present_as_network(denoiser, process: NoiseProcess, prediction: str, learned_variance: str | None = None) -> nn.Module:
    """The inverse of :class:`NetworkDenoiser`: a module ``network(x_net, t, **extra_args)``
    that outputs what an ideal ``prediction``-type network of ``process`` would, given the
    exact denoiser, so that ``NetworkDenoiser(present_as_network(D, p, k), p, k)(x, σ) == D(x, σ)``
    (for a rounded discrete time: at the training sigmas; elsewhere it answers for σ_k).

    With ``learned_variance`` the output carries a second half of channels: ``v = −1``
    (``learned_range``, i.e. β̃) or log β̃ of the training step (``learned``, discrete VP
    only, clipped at index 0 as improved DDPM does).
    """
    return PresentedNetwork(denoiser, process, prediction, learned_variance)
