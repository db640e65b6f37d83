"""The denoiser protocol: ``D(x, sigma, **extra_args) -> x0 estimate`` (Karras form)."""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from .predictions import present_as_network

__all__ = ["Denoiser", "LearnedVariance", "sigmas_checked_by_caller", "sigma_check_due"]

# Whether the sigmas a denoiser is called with were validated by its caller (the sampling loop
# checks its grid once, on the host). A context variable, so that it is per thread and per task
# and nothing global is left changed if a run is interrupted.
_SIGMAS_CHECKED: ContextVar[bool] = ContextVar("ksampling_sigmas_checked", default=False)


@contextmanager
def sigmas_checked_by_caller():
    """Within this block, denoisers skip their per-call check of σ (finite, >= 0), which on a
    GPU is a host sync: the caller promises that every σ passed to the model is valid.

    A :class:`~ksampling.samplers.loop.Plan` (so :func:`ksampling.sample`) enters it around
    each run: its grid was validated on the host when the plan was made, and so was the
    largest σ against the network's training range (``model.check_sigma_range``, which
    :class:`~ksampling.denoisers.NetworkDenoiser` has), once, without a per-call sync.
    """
    token = _SIGMAS_CHECKED.set(True)
    try:
        yield
    finally:
        _SIGMAS_CHECKED.reset(token)


def sigma_check_due(sigma: torch.Tensor) -> bool:
    """Whether a denoiser should check a σ tensor on the host: not inside
    :func:`sigmas_checked_by_caller`, not while ``torch.compile`` traces and not while a CUDA
    graph is captured (where reading a value back is impossible)."""
    if _SIGMAS_CHECKED.get() or torch.compiler.is_compiling():
        return False
    return not (sigma.is_cuda and torch.cuda.is_current_stream_capturing())


@dataclass
class LearnedVariance:
    """A network's learned variance of the reverse step (improved DDPM, Nichol & Dhariwal 2021).

    ``kind == "learned"``: ``value`` is log Σ in the network's (VP) space.
    ``kind == "learned_range"``: ``value`` is v ∈ [−1, 1]; log Σ = ((v+1)/2) log β + (1 − (v+1)/2) log β̃
    with β, β̃ of the step being taken (the DDPM sampler computes them for its grid).
    """

    kind: Literal["learned", "learned_range"]
    value: torch.Tensor


class Denoiser(nn.Module):
    """Base class of every wrapper: ``forward(x, sigma, **extra_args)`` returns D(x; σ).

    ``x`` is in the VE state space (``x = x0 + σ n``), ``sigma`` has shape ``[B]``.
    Subclasses that know their noise range set ``sigma_min`` and ``sigma_max``.
    Wrappers whose network also predicts a variance implement
    ``denoise_with_variance(x, sigma, **extra_args) -> (D, LearnedVariance | None)``.
    """

    sigma_min: float = 0.0
    sigma_max: float = float("inf")

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, **extra_args) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def as_network(self, process, prediction: str, **kwargs) -> nn.Module:
        """Present this denoiser as a network of the given kind: a module
        ``network(x_in, t, **extra_args)`` that returns what an ideal ``prediction``-type
        network of ``process`` would (so that wrapping it gives back this denoiser)."""
        return present_as_network(self, process, prediction, **kwargs)
