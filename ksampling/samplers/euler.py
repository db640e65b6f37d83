"""Euler and Heun on the probability-flow ODE dx/dσ = (x − D(x; σ)) / σ, with EDM's churn.

Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models",
Algorithm 2: before each step, optionally raise the noise level from σ to
σ̂ = σ (1 + γ) by adding fresh noise of variance σ̂² − σ², then integrate from σ̂ to σ_next.
"""

from __future__ import annotations

import math

import torch

from .base import Solver, register
from .validation import check_nonnegative
from .common import churn_gamma


class _ChurnSolver(Solver):
    """The churn shared by euler, heun and edm: S_churn, S_tmin, S_tmax, S_noise."""

    def __init__(self, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0):
        self.s_churn = check_nonnegative("s_churn", s_churn)
        self.s_tmin = check_nonnegative("s_tmin", s_tmin)
        self.s_tmax = check_nonnegative("s_tmax", s_tmax, allow_inf=True)
        self.s_noise = check_nonnegative("s_noise", s_noise)

    @property
    def draws_noise(self) -> bool:
        return self.s_churn > 0

    def coefficients(self, sigmas, i):
        sigma = sigmas[i]
        gamma = churn_gamma(sigma, len(sigmas) - 1, self.s_churn, self.s_tmin, self.s_tmax)
        sigma_hat = sigma * (gamma + 1)
        return dict(
            sigma_hat=sigma_hat,
            churn_std=math.sqrt(sigma_hat**2 - sigma**2) if gamma > 0 else 0.0,
            # the Euler step from σ̂ to σ_next moves x̂ this fraction of the way to D (see Euler)
            euler_weight=1 - sigmas[i + 1] / sigma_hat,
        )

    def churn(self, ctx, x, step):
        """x̂ = x + sqrt(σ̂² − σ²) · S_noise · ε."""
        if step.churn_std == 0.0:
            return x
        return ctx.add_noise(x, self.s_noise * step.churn_std, step.sigma, step.sigma_next)


@register
class Euler(_ChurnSolver):
    """Euler's method: x_next = x̂ + (σ_next − σ̂) · (x̂ − D(x̂; σ̂)) / σ̂,
    i.e. x_next = D + (σ_next/σ̂)(x̂ − D): a linear interpolation from x̂ towards D with
    weight 1 − σ_next/σ̂ (one ``torch.lerp``).

    Equals DDIM with η = 0 (Song et al. 2021) in the VE state space.
    """

    name = "euler"
    order = 1
    nfe_per_step = 1
    paper = "Karras et al. 2022, Algorithm 2 (Euler steps)"

    def step(self, ctx, x, step):
        x = self.churn(ctx, x, step)
        # x_next = D + (σ_next/σ̂)(x̂ − D)  (Euler; lerp form)
        return torch.lerp(x, ctx.denoise(x, step.sigma_hat), step.euler_weight)


@register
class Heun(_ChurnSolver):
    """Heun's second-order method (Karras et al. 2022, Algorithm 2).

    d = (x̂ − D(x̂; σ̂)) / σ̂,  x' = x̂ + (σ_next − σ̂) d,
    d' = (x' − D(x'; σ_next)) / σ_next,  x_next = x̂ + (σ_next − σ̂) (d + d') / 2;
    the step to σ_next = 0 is an Euler step (the ODE's right side is undefined at 0).

    With Δσ = σ_next − σ̂ this is x' = lerp(x̂, D, −Δσ/σ̂) and
    x_next = lerp(x̂, D, −Δσ/(2σ̂)) + (Δσ/(2σ_next)) (x' − D'): four tensor operations.
    """

    name = "heun"
    order = 2
    nfe_per_step = 2
    paper = "Karras et al. 2022, Algorithm 2"

    def coefficients(self, sigmas, i):
        coeffs = super().coefficients(sigmas, i)
        sigma_hat, sigma_next = coeffs["sigma_hat"], sigmas[i + 1]
        dt = sigma_next - sigma_hat
        coeffs["half_euler_weight"] = -dt / (2 * sigma_hat)  # x̂ + (Δσ/2) d = lerp(x̂, D, −Δσ/(2σ̂))
        coeffs["half_dt_over_sigma_next"] = dt / (2 * sigma_next) if sigma_next > 0 else 0.0
        return coeffs

    def step(self, ctx, x, step):
        x = self.churn(ctx, x, step)
        denoised = ctx.denoise(x, step.sigma_hat)
        x_euler = torch.lerp(x, denoised, step.euler_weight)  # x' = x̂ + Δσ d
        if step.to_zero:
            return x_euler
        denoised_next = ctx.denoise(x_euler, step.sigma_next)
        # x_next = x̂ + (Δσ/2)(d + d'),  d = (x̂ − D)/σ̂,  d' = (x' − D')/σ_next
        return torch.add(
            torch.lerp(x, denoised, step.half_euler_weight), x_euler - denoised_next, alpha=step.half_dt_over_sigma_next
        )


@register
class EDM(Heun):
    """EDM's stochastic sampler: Heun with churn at the published defaults
    (Karras et al. 2022, Table 5, ImageNet-64: S_churn = 40, S_tmin = 0.05, S_tmax = 50,
    S_noise = 1.003). Set ``s_churn=0`` for the deterministic EDM sampler."""

    name = "edm"
    kind = "sde"
    paper = "Karras et al. 2022, Algorithm 2 (stochastic)"

    def __init__(self, s_churn: float = 40.0, s_tmin: float = 0.05, s_tmax: float = 50.0, s_noise: float = 1.003):
        super().__init__(s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise)
