"""The denoiser protocol: ``D(x, sigma, **extra_args) -> x0 estimate`` (Karras form)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

__all__ = ["Denoiser", "LearnedVariance"]


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
        from .wrappers import present_as_network

        return present_as_network(self, process, prediction, **kwargs)
