"""The benchmark problems: a denoiser D(x; σ), a sigma range, initial noise and the true answer.

==============  ==========================================================================
``gauss-iso``   16-D Gaussian, isotropic (std 0.5): closed-form ODE solution
``gauss-aniso`` 16-D Gaussian, full covariance with variances 1e-3 … 1 in a random basis:
                closed form; stiff near σ_min along the narrow directions
``gmm-2d``      2-D mixture of 8 Gaussians on a ring (std 0.1, unequal weights)
``gmm-64d``     64-D mixture of 16 Gaussians (random means, std 0.1–0.3, random weights)
``digits``      the ideal denoiser over scikit-learn's 1797 8×8 digits scaled to [−1, 1]
                (the exact D of the empirical distribution; samples are training images)
``digits-net``  a small EDM-preconditioned network trained by the suite on the digits
                (:mod:`benchmarks.digits_net`; trained once and cached)
==============  ==========================================================================

All use EDM's range σ ∈ [0.002, 80]. The initial noise of sample ``i`` is drawn from its own
generator seeded with ``seed + i`` (:func:`initial_noise`), so a sample does not depend on
the batch it was drawn in. The true answer at σ_min is the closed form where it exists and a
DOP853 solution otherwise (:mod:`benchmarks.reference`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from ksampling.denoisers import analytic

from .digits_net import digits_data, load_or_train

__all__ = ["Problem", "PROBLEMS", "EXACT_PROBLEMS", "get_problem", "initial_noise", "digits_data"]

SIGMA_MIN = 0.002
SIGMA_MAX = 80.0


@dataclass
class Problem:
    """One benchmark problem. ``denoiser(x, sigma_batch)`` is D(x; σ) in float64."""

    name: str
    description: str
    kind: str  # "gaussian", "mixture", "empirical" or "network"
    shape: tuple[int, ...]  # of one sample
    denoiser: Callable
    data_std: float  # root mean per-coordinate variance of the data: the scale of "relative" errors
    fingerprint: str  # changes whenever the problem's definition changes (reference cache key)
    sigma_min: float = SIGMA_MIN
    sigma_max: float = SIGMA_MAX
    #: closed-form ODE solution ``exact_solution(x_T, sigma_T, sigma)`` (Gaussian data)
    exact_solution: Callable | None = None
    #: (mean, cov) of the data (Gaussian data), numpy float64
    gaussian: tuple[np.ndarray, np.ndarray] | None = None
    #: log p_σ(x) per sample of the data convolved with N(0, σ²) (mixtures)
    log_prob: Callable | None = None
    #: mixture means and weights (for the mode-proportion metric), numpy
    modes: tuple[np.ndarray, np.ndarray] | None = None
    #: exact samples of the data: ``sample_data(n, generator)``
    sample_data: Callable | None = None
    image_shape: tuple[int, int] | None = None
    extra: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(np.prod(self.shape))

    def target_gaussian(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and covariance of the data convolved with N(0, σ_min² I): the law of x(σ_min)."""
        mean, cov = self.gaussian
        return mean, cov + self.sigma_min**2 * np.eye(len(mean))


def initial_noise(problem: Problem, seeds: Sequence[int], *, dtype=torch.float64, device="cpu") -> torch.Tensor:
    """x_T = σ_max · n, sample i's n drawn from ``torch.Generator().manual_seed(seeds[i])`` (on
    the CPU, so that the noise is the same on every device)."""
    rows = [torch.randn(problem.shape, generator=torch.Generator().manual_seed(int(s)), dtype=torch.float64)
            for s in seeds]
    return (torch.stack(rows) * problem.sigma_max).to(device=device, dtype=dtype)


def _fingerprint(*arrays) -> str:
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(np.ascontiguousarray(np.asarray(a, dtype=np.float64)).tobytes())
    return digest.hexdigest()[:16]


def _t(a, device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a), dtype=torch.float64, device=device)


def _gaussian_problem(name, description, mean, cov, device) -> Problem:
    denoiser = analytic.Gaussian(_t(mean, device), cov=_t(cov, device))
    return Problem(
        name=name,
        description=description,
        kind="gaussian",
        shape=(len(mean),),
        denoiser=denoiser,
        data_std=float(np.sqrt(np.trace(cov) / len(mean))),
        fingerprint=_fingerprint(mean, cov),
        exact_solution=denoiser.ode_solution,
        gaussian=(np.asarray(mean, np.float64), np.asarray(cov, np.float64)),
        sample_data=denoiser.sample,
    )


def gauss_iso(device="cpu") -> Problem:
    rng = np.random.default_rng(1)
    dim = 16
    mean = rng.normal(0.0, 0.5, dim)
    return _gaussian_problem("gauss-iso", "16-D Gaussian, isotropic, std 0.5", mean, 0.25 * np.eye(dim), device)


def gauss_aniso(device="cpu") -> Problem:
    rng = np.random.default_rng(2)
    dim = 16
    mean = rng.normal(0.0, 0.5, dim)
    basis, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    variances = np.logspace(-3, 0, dim)
    cov = (basis * variances) @ basis.T
    return _gaussian_problem(
        "gauss-aniso", "16-D Gaussian, variances 1e-3..1 in a random basis", mean, (cov + cov.T) / 2, device
    )


def _mixture_problem(name, description, weights, means, std, device) -> Problem:
    """Mixture of isotropic Gaussians; ``std`` a scalar or one per component."""
    means = np.asarray(means, np.float64)
    weights = np.asarray(weights, np.float64) / np.sum(weights)
    variances = np.broadcast_to(np.asarray(std, np.float64) ** 2, weights.shape).copy()
    mixture = analytic.GaussianMixture(_t(weights, device), _t(means, device), var=_t(variances, device))
    centre = weights @ means
    total_var = np.sum(weights * (np.sum((means - centre) ** 2, axis=1) + means.shape[1] * variances))
    return Problem(
        name=name,
        description=description,
        kind="mixture",
        shape=(means.shape[1],),
        denoiser=mixture,
        data_std=float(np.sqrt(total_var / means.shape[1])),
        fingerprint=_fingerprint(weights, means, variances),
        log_prob=mixture.log_prob,
        modes=(means, weights),
        sample_data=mixture.sample,
    )


def gmm_2d(device="cpu") -> Problem:
    angles = 2 * np.pi * np.arange(8) / 8
    means = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    weights = np.arange(1, 9, dtype=np.float64)
    return _mixture_problem("gmm-2d", "2-D, 8 Gaussians (std 0.1) on the unit circle, weights 1:2:..:8",
                            weights, means, 0.1, device)


def gmm_64d(device="cpu") -> Problem:
    rng = np.random.default_rng(3)
    means = rng.normal(0.0, 0.5, (16, 64))
    weights = rng.uniform(0.5, 1.5, 16)
    stds = rng.uniform(0.1, 0.3, 16)
    return _mixture_problem("gmm-64d", "64-D, 16 isotropic Gaussians (std 0.1-0.3), random means and weights",
                            weights, means, stds, device)


def digits(device="cpu") -> Problem:
    data = digits_data()
    denoiser = analytic.Empirical(_t(data, device))
    return Problem(
        name="digits",
        description="ideal denoiser over the 1797 scikit-learn digits (8x8, [-1, 1])",
        kind="empirical",
        shape=(64,),
        denoiser=denoiser,
        data_std=float(np.sqrt(data.var(axis=0).mean())),
        fingerprint=_fingerprint(data),
        image_shape=(8, 8),
    )


def digits_net(device="cpu", *, progress: bool = True) -> Problem:
    denoiser, meta = load_or_train(device=device, progress=progress)
    data = digits_data()
    return Problem(
        name="digits-net",
        description=f"EDM-preconditioned network trained on the digits ({meta['config']})",
        kind="network",
        shape=(64,),
        denoiser=denoiser,
        data_std=float(np.sqrt(data.var(axis=0).mean())),
        fingerprint=meta["fingerprint"],
        image_shape=(8, 8),
        extra={"network": meta},
    )


PROBLEMS: dict[str, Callable[..., Problem]] = {
    "gauss-iso": gauss_iso,
    "gauss-aniso": gauss_aniso,
    "gmm-2d": gmm_2d,
    "gmm-64d": gmm_64d,
    "digits": digits,
    "digits-net": digits_net,
}
#: the problems whose denoiser is exact (no training needed)
EXACT_PROBLEMS = ("gauss-iso", "gauss-aniso", "gmm-2d", "gmm-64d", "digits")


def get_problem(name: str, device="cpu", **kwargs) -> Problem:
    try:
        builder = PROBLEMS[name]
    except KeyError:
        raise ValueError(f"unknown problem {name!r}; known problems: {', '.join(PROBLEMS)}") from None
    return builder(device=device, **kwargs)
