"""Error measures of the steps-vs-quality suite (host side, numpy float64).

* pathwise: RMSE between a sampler's output and the reference solution of the
  probability-flow ODE from the same initial noise (:func:`rmse`), also divided by the
  data's scale (the root mean per-coordinate variance of the data);
* distribution level: for Gaussian data every sampler here is affine in its initial noise and
  in the noise it draws, so its output is exactly Gaussian; :func:`affine_output_moments`
  recovers that Gaussian's mean and covariance by probing the sampler with basis vectors, and
  :func:`gaussian_w2` / :func:`gaussian_kl` (from :mod:`ksampling.denoisers.analytic`; KL is
  ``inf`` for a sampler that collapsed a direction) compare it with the true marginal. For mixtures:
  the negative log-likelihood of samples under the true density, and the total variation
  between the true mode weights and the fraction of samples nearest each mode;
* :func:`fit_order`: the convergence order, minus the slope of log error against log NFE.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch

# The exact distances between Gaussians live with the analytic denoisers (one implementation).
from ksampling.denoisers.analytic import gaussian_kl, gaussian_w2

__all__ = [
    "rmse",
    "median_sample_error",
    "gaussian_w2",
    "gaussian_kl",
    "fit_order",
    "affine_output_moments",
    "ProbeNoise",
    "CorrelatedNoise",
    "brownian_correlation",
    "mixing_matrix",
    "mode_total_variation",
]


def _np(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().to("cpu", torch.float64).numpy()
    return np.asarray(a, dtype=np.float64)


def rmse(x, reference) -> float:
    """sqrt(mean((x − reference)²)) over every sample and coordinate."""
    x, reference = _np(x), _np(reference)
    if x.shape != reference.shape:
        raise ValueError(f"x has shape {x.shape} but reference has shape {reference.shape}")
    return float(np.sqrt(np.mean((x - reference) ** 2)))


def median_sample_error(x, reference) -> float:
    """The median over samples of each sample's RMS error: unlike :func:`rmse` not dominated by
    the few trajectories of a multimodal problem that end in another mode."""
    x, reference = _np(x), _np(reference)
    per_sample = np.sqrt(np.mean((x - reference).reshape(len(x), -1) ** 2, axis=1))
    return float(np.median(per_sample))


def fit_order(nfe: Sequence[float], errors: Sequence[float]) -> float | None:
    """Minus the least-squares slope of log(error) against log(NFE): the empirical order.

    Points with a non-positive or non-finite error are dropped; ``None`` with fewer than 2.
    """
    pairs = [(n, e) for n, e in zip(nfe, errors) if n and e and math.isfinite(e) and e > 0]
    if len({n for n, _ in pairs}) < 2:
        return None
    log_n = np.log([n for n, _ in pairs])
    log_e = np.log([e for _, e in pairs])
    slope = np.polyfit(log_n, log_e, 1)[0]
    return float(-slope)


class ProbeNoise:
    """A ``noise_sampler`` that feeds basis vectors to a probe batch (see
    :func:`affine_output_moments`): on its k-th call, sample ``offset + m·d + j`` gets
    ``mixing[k, m] · e_j`` and every other sample gets 0. With ``mixing = I`` the calls are
    independent standard normals; with ``mixing = L``, ``L Lᵀ = C``, they have correlation C."""

    def __init__(self, like: torch.Tensor, dim: int, offset: int, mixing: np.ndarray):
        self.like = like
        self.dim = dim
        self.offset = offset
        self.mixing = np.asarray(mixing, dtype=np.float64)
        self.calls = 0

    def __call__(self, sigma=None, sigma_next=None) -> torch.Tensor:
        noise = torch.zeros_like(self.like)
        k = self.calls
        self.calls += 1
        if k < self.mixing.shape[0]:
            flat = noise.view(noise.shape[0], -1)
            eye = torch.eye(self.dim, dtype=noise.dtype, device=noise.device)
            for m, weight in enumerate(self.mixing[k]):
                if weight != 0.0:
                    start = self.offset + m * self.dim
                    flat[start : start + self.dim] = eye * float(weight)
        return noise


class CorrelatedNoise:
    """A ``noise_sampler`` whose k-th call returns ``Σ_m mixing[k, m] ξ_m``, ξ_m standard normal
    drawn up front, per sample, from that sample's own generator.

    With ``mixing`` a factor of :func:`brownian_correlation` of a run's noise intervals this
    has exactly the law of a Brownian-tree noise sampler's draws for that run, at the cost of
    one draw per sample instead of a tree descent per call and sample.
    """

    def __init__(self, like: torch.Tensor, generators: Sequence[torch.Generator], mixing: np.ndarray):
        if len(generators) != like.shape[0]:
            raise ValueError(f"need one generator per sample: {len(generators)} for a batch of {like.shape[0]}")
        self.mixing = torch.as_tensor(np.asarray(mixing, dtype=np.float64), dtype=like.dtype, device=like.device)
        n_blocks = self.mixing.shape[1]
        self.xi = torch.stack([
            torch.randn((n_blocks, *like.shape[1:]), generator=g, device=g.device, dtype=like.dtype) for g in generators
        ]).to(like.device)  # [B, M, ...]
        self.calls = 0

    def __call__(self, sigma=None, sigma_next=None) -> torch.Tensor:
        k = self.calls
        self.calls += 1
        if k >= self.mixing.shape[0]:
            raise RuntimeError(f"the sampler drew noise more often ({k + 1} times) than planned ({self.mixing.shape[0]})")
        return torch.tensordot(self.xi, self.mixing[k], dims=([1], [0]))


def brownian_correlation(intervals: Sequence[tuple[float, float]]) -> np.ndarray:
    """Correlation of the noise a Brownian-tree noise sampler returns for the calls
    ``(a_k, b_k)``: each call gives ``(W(b) − W(a)) / sqrt|b − a|``, so

    C[k, l] = s_k s_l |[a_k, b_k] ∩ [a_l, b_l]| / sqrt(|b_k − a_k| |b_l − a_l|),  s = sign(b − a).
    """
    n = len(intervals)
    corr = np.zeros((n, n))
    for k, (a_k, b_k) in enumerate(intervals):
        lo_k, hi_k = sorted((a_k, b_k))
        for l, (a_l, b_l) in enumerate(intervals):
            lo_l, hi_l = sorted((a_l, b_l))
            overlap = max(0.0, min(hi_k, hi_l) - max(lo_k, lo_l))
            sign = np.sign(b_k - a_k) * np.sign(b_l - a_l)
            corr[k, l] = sign * overlap / math.sqrt((hi_k - lo_k) * (hi_l - lo_l))
    return corr


def mixing_matrix(corr: np.ndarray) -> np.ndarray:
    """L with L Lᵀ = corr (symmetric PSD), dropping null directions: shape [K, rank]."""
    w, v = np.linalg.eigh((corr + corr.T) / 2)
    keep = w > 1e-12 * max(w.max(), 1.0)
    return v[:, keep] * np.sqrt(w[keep])


def affine_output_moments(
    run: Callable[[torch.Tensor, Callable | None], torch.Tensor],
    dim: int,
    sigma_max: float,
    noise_mixing: np.ndarray | None = None,
    *,
    dtype=torch.float64,
    device="cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Exact mean and covariance of a sampler's output when it is affine in its inputs.

    With a linear denoiser (Gaussian data) every solver here maps the initial noise
    ``x_T = σ_max n`` and its standard normal draws ``z_1 … z_K`` to
    ``x_0 = A x_T + Σ_k B_k z_k + c``. Write the draws as ``z = L ξ`` with ξ independent
    standard normal (``L = noise_mixing``: the identity for i.i.d. draws, a factor of their
    correlation for a Brownian tree, :func:`brownian_correlation`). Then ``x_0`` is Gaussian
    with mean ``c`` and covariance ``σ_max² A Aᵀ + Σ_m G_m G_mᵀ``, ``G_m = Σ_k L[k, m] B_k``.
    One batch of ``1 + d (1 + M)`` probes recovers them: probe 0 has ``x_T = 0`` and no noise
    (gives c), probes ``1..d`` have ``x_T = σ_max e_j`` (give σ_max A e_j + c) and the others
    ``x_T = 0`` and ξ_m = e_j (give G_m e_j + c).

    ``run(x_T, noise_sampler)`` must run the sampler on the probe batch with the given noise
    sampler (``None`` for a deterministic sampler) and return its output.
    """
    n_blocks = 0 if noise_mixing is None else np.asarray(noise_mixing).shape[1]
    batch = 1 + dim * (1 + n_blocks)
    x = torch.zeros(batch, dim, dtype=dtype, device=device)
    x[1 : 1 + dim] = torch.eye(dim, dtype=dtype, device=device) * sigma_max
    noise = ProbeNoise(x, dim, 1 + dim, noise_mixing) if noise_mixing is not None else None
    out = _np(run(x, noise)).reshape(batch, dim)
    if noise is not None and noise.calls != noise.mixing.shape[0]:
        raise RuntimeError(f"the sampler drew noise {noise.calls} times, expected {noise.mixing.shape[0]}")
    mean = out[0]
    columns = out[1:] - mean  # rows: σ_max A e_j and G_m e_j
    cov = columns.T @ columns
    return mean, (cov + cov.T) / 2


def mode_total_variation(x, means, weights) -> float:
    """½ Σ_k |w_k − f_k|, f_k the fraction of samples whose nearest mixture mean is mode k:
    how far the share of samples per mode is from the true weights (0 = right proportions)."""
    x = _np(x).reshape(len(x), -1)
    means = _np(means).reshape(len(means), -1)
    weights = _np(weights)
    dist = ((x[:, None, :] - means[None, :, :]) ** 2).sum(-1)
    counts = np.bincount(dist.argmin(1), minlength=len(means)) / len(x)
    return float(0.5 * np.abs(counts - weights / weights.sum()).sum())
