"""Classifier-free guidance (Ho & Salimans 2022), optionally limited to a σ interval
(Kynkäänniemi et al. 2024, "Applying Guidance in a Limited Interval Improves Sample and
Distribution Quality in Diffusion Models").

    D_w(x; σ) = D(x; σ, ∅) + w(σ) · (D(x; σ, c) − D(x; σ, ∅)),
    w(σ) = scale if lo ≤ σ ≤ hi else 1.

Guidance on D equals guidance on ε (and on v, score, flow): each is affine in D at fixed x, σ.
"""

from __future__ import annotations

import math

import torch

from .base import Denoiser
from .wrappers import _dims, _sigma_batch

__all__ = ["ClassifierFreeGuidance"]


def _concat(cond, uncond, batch: int, cond_key: str, uncond_key: str):
    """cat([cond, uncond]) on dim 0: tensors, or dicts of tensors concatenated per key.
    A batch of 1 is broadcast to the batch of x (one prompt for all samples)."""
    if isinstance(cond, torch.Tensor) and isinstance(uncond, torch.Tensor):
        parts = []
        for name, value in ((cond_key, cond), (uncond_key, uncond)):
            if value.ndim == 0 or value.shape[0] not in (1, batch):
                raise ValueError(
                    f"{name} must have the batch of x ({batch}) or 1 on dim 0, got shape {tuple(value.shape)}"
                )
            parts.append(value.expand(batch, *value.shape[1:]))
        if parts[0].shape != parts[1].shape:
            raise ValueError(
                f"{cond_key} and {uncond_key} must have the same shape, got {tuple(cond.shape)} and {tuple(uncond.shape)}"
            )
        return torch.cat(parts)
    if isinstance(cond, dict) and isinstance(uncond, dict):
        if set(cond) != set(uncond):
            raise ValueError(f"{cond_key} and {uncond_key} must have the same keys, got {sorted(cond)} and {sorted(uncond)}")
        return {
            key: _concat(cond[key], uncond[key], batch, f"{cond_key}[{key!r}]", f"{uncond_key}[{key!r}]") for key in cond
        }
    raise TypeError(
        f"{cond_key} and {uncond_key} must both be tensors or both dicts of tensors, "
        f"got {type(cond).__name__} and {type(uncond).__name__}"
    )


class ClassifierFreeGuidance(Denoiser):
    """Classifier-free guidance around a conditional denoiser, in one batched model call.

    ``forward(x, sigma, **extra_args)`` takes the conditioning from ``extra_args[cond_key]``
    and ``extra_args[uncond_key]`` (tensors with the batch, or 1, on dim 0, or dicts of such tensors),
    calls ``denoiser`` once on ``[x; x]`` with ``cond_key = cat([cond, uncond])`` (other extra
    arguments are passed through unchanged) and returns ``D_u + w (D_c − D_u)``, where w is
    ``scale`` for the samples whose σ lies in ``sigma_interval = (lo, hi)`` (inclusive; default:
    everywhere) and 1 elsewhere. The choice is made per sample with ``torch.where``, without
    host syncs. ``scale = 1`` without an interval is plain conditional sampling and costs a
    single unbatched call.

    A learned variance (:meth:`denoise_with_variance`) is taken from the conditional half,
    as in GLIDE / ADM.
    """

    def __init__(self, denoiser, scale: float, sigma_interval=None, cond_key: str = "cond", uncond_key: str = "uncond"):
        super().__init__()
        if not callable(denoiser):
            raise TypeError(f"denoiser must be callable, got {type(denoiser).__name__}")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise TypeError(f"scale must be a number, got {type(scale).__name__}")
        if not math.isfinite(scale):
            raise ValueError(f"scale must be finite, got {scale}")
        if sigma_interval is not None:
            try:
                lo, hi = (float(v) for v in sigma_interval)
            except (TypeError, ValueError):
                raise ValueError(f"sigma_interval must be a pair (lo, hi) of numbers, got {sigma_interval!r}") from None
            if math.isnan(lo) or math.isnan(hi) or lo < 0 or not lo <= hi:
                raise ValueError(f"sigma_interval must satisfy 0 <= lo <= hi, got {sigma_interval!r}")
            sigma_interval = (lo, hi)
        for name, key in (("cond_key", cond_key), ("uncond_key", uncond_key)):
            if not isinstance(key, str) or not key:
                raise TypeError(f"{name} must be a non-empty string, got {key!r}")
        if cond_key == uncond_key:
            raise ValueError("cond_key and uncond_key must differ")
        self.denoiser = denoiser
        self.scale = float(scale)
        self.sigma_interval = sigma_interval
        self.cond_key = cond_key
        self.uncond_key = uncond_key
        self.sigma_min = getattr(denoiser, "sigma_min", 0.0)
        self.sigma_max = getattr(denoiser, "sigma_max", math.inf)

    def forward(self, x: torch.Tensor, sigma, **extra_args) -> torch.Tensor:
        return self._guided(x, sigma, extra_args, with_variance=False)[0]

    def denoise_with_variance(self, x: torch.Tensor, sigma, **extra_args):
        """``(guided D, the conditional half's LearnedVariance or None)``."""
        return self._guided(x, sigma, extra_args, with_variance=True)

    def check_sigma_range(self, sigma: float) -> None:
        """The wrapped denoiser's check of a grid's largest σ against its training range
        (:meth:`~ksampling.denoisers.NetworkDenoiser.check_sigma_range`), where it has one."""
        check = getattr(self.denoiser, "check_sigma_range", None)
        if callable(check):
            check(sigma)

    def denoise_with_uncond(self, x: torch.Tensor, sigma, **extra_args):
        """``(guided D, unconditional D_∅)`` from one batched call, what the CFG++ solvers
        need (Chung et al. 2024). Both halves are evaluated even at ``scale = 1``; for CFG++
        ``scale`` is its λ, typically in (0, 1]."""
        guided, _, uncond = self._guided(x, sigma, extra_args, with_variance=False, with_uncond=True)
        return guided, uncond

    def _guided(self, x, sigma, extra_args, with_variance, with_uncond=False):
        sigma = _sigma_batch(sigma, x)
        if self.cond_key not in extra_args:
            raise TypeError(f"classifier-free guidance needs the conditioning as extra_args[{self.cond_key!r}]")
        if self.uncond_key not in extra_args:
            raise TypeError(f"classifier-free guidance needs the unconditional input as extra_args[{self.uncond_key!r}]")
        rest = dict(extra_args)
        cond, uncond = rest.pop(self.cond_key), rest.pop(self.uncond_key)
        call_variance = with_variance and hasattr(self.denoiser, "denoise_with_variance")

        def call(x_in, sigma_in, conditioning):
            kwargs = {**rest, self.cond_key: conditioning}
            if call_variance:
                return self.denoiser.denoise_with_variance(x_in, sigma_in, **kwargs)
            return self.denoiser(x_in, sigma_in, **kwargs), None

        if self.scale == 1.0 and self.sigma_interval is None and not with_uncond:
            return call(x, sigma, cond)

        batch = x.shape[0]
        both, variance = call(torch.cat([x, x]), torch.cat([sigma, sigma]), _concat(cond, uncond, batch, self.cond_key, self.uncond_key))
        denoised_cond, denoised_uncond = both[:batch], both[batch:]
        if variance is not None:
            variance = type(variance)(variance.kind, variance.value[:batch])
        if self.sigma_interval is None:
            weight = self.scale
        else:
            lo, hi = self.sigma_interval
            inside = (sigma >= lo) & (sigma <= hi)
            scaled = torch.full_like(sigma, self.scale, dtype=x.dtype)
            weight = _dims(torch.where(inside, scaled, torch.ones_like(scaled)), x.ndim)
        guided = denoised_uncond + weight * (denoised_cond - denoised_uncond)
        return (guided, variance, denoised_uncond) if with_uncond else (guided, variance)

    def extra_repr(self) -> str:
        return f"scale={self.scale:g}, sigma_interval={self.sigma_interval}, cond_key={self.cond_key!r}"
