"""Host-side math shared by several solvers (plain Python floats, float64)."""

from __future__ import annotations

import math

__all__ = ["ancestral_step", "churn_gamma", "log_sigma_step"]


def ancestral_step(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """Split the step sigma -> sigma_next into a deterministic step to ``sigma_down`` and
    fresh noise of scale ``sigma_up``, with ``sigma_down² + sigma_up² = sigma_next²``.

    ``sigma_up = min(sigma_next, eta * sqrt(sigma_next² (sigma² - sigma_next²) / sigma²))``:
    at ``eta = 1`` this is the DDPM posterior variance (Ho et al. 2020) and at ``eta = 0`` the
    deterministic DDIM step (Song et al. 2021, eq. 12), written in the VE state space.
    """
    if eta == 0.0 or sigma_next == 0.0:
        return sigma_next, 0.0
    sigma_up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    sigma_down = math.sqrt(sigma_next**2 - sigma_up**2)
    return sigma_down, sigma_up


def churn_gamma(sigma: float, n_steps: int, s_churn: float, s_tmin: float, s_tmax: float) -> float:
    """EDM's churn factor (Karras et al. 2022, Algorithm 2): sigma_hat = sigma * (1 + gamma),
    gamma = min(S_churn / N, √2 − 1) for S_tmin <= sigma <= S_tmax, else 0."""
    if s_churn > 0 and s_tmin <= sigma <= s_tmax:
        return min(s_churn / n_steps, math.sqrt(2.0) - 1.0)
    return 0.0


def log_sigma_step(sigma: float, sigma_next: float) -> float:
    """h = λ_next − λ with λ = −log σ (infinite for a step to sigma = 0)."""
    return math.inf if sigma_next == 0.0 else math.log(sigma / sigma_next)
