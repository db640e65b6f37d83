"""SEEDS: Stochastic Explicit Exponential Derivative-free Solvers (Gonzalez et al. 2023,
arXiv:2305.14267, NeurIPS 2023), data prediction, as ComfyUI's ``seeds_2`` / ``seeds_3``.

In the VE state space with λ = −log σ, ``h = λ_next − λ`` and ``h_η = (1 + η) h``, the
reverse SDE with stochasticity η has the exact first-order (SDE-DPM-Solver++) transfer from
σ to σ_s = σ e^{−r h}

    x_s = e^{−r h_η} x + (1 − e^{−r h_η}) D + σ_s √(1 − e^{−2 r h η}) ξ,

and the later stages combine model outputs with the exponential weights
``e_1(z) = e^z − 1`` and ``e_2(z) = (e^z − 1 − z)/z`` at ``z = −r h_η`` (the paper's
``h φ_1`` and ``h φ_2``). The noise of each stage is the Brownian increment of the sub-interval,
carried forward: the noise of stage k+1 is ``e^{(r_k − r_{k+1}) h η}`` times that of stage k
plus fresh noise of variance ``1 − e^{2 (r_k − r_{k+1}) h η}``, so all stages see one
Brownian path (the paper's Proposition on the noise decomposition).

A step to σ = 0 is ``x ← D``. ``eta = 0`` gives the deterministic exponential integrators
(DPM-Solver++(2S) / DPM-Solver-3 in data prediction).
"""

from __future__ import annotations

import math

import torch

from .base import check_choice, register
from .common import Stochastic, phi
from .validation import check_fraction

__all__ = ["SEEDS2", "SEEDS3"]

PAPER = "Gonzalez et al. 2023, SEEDS: Exponential SDE Solvers for Fast High-Quality Sampling from Diffusion Models (arXiv:2305.14267)"


def _e1(z: float) -> float:
    """e^z − 1 (h φ_1 in the paper's notation, for z = −h_η)."""
    return math.expm1(z)


def _e2(z: float) -> float:
    """(e^z − 1 − z)/z = z φ_2(z) (h φ_2 in the paper's notation)."""
    return z * phi(2, z)


class _SEEDS(Stochastic):
    paper = PAPER

    def stage_coefficients(self, sigma: float, h: float, fractions: list[float]) -> dict:
        """For the stage ends σ e^{−r h}, r in ``fractions`` (the last is 1): the stage's σ,
        its decay e^{−r h_η}, and the noise's carry factor and fresh std over each sub-interval."""
        h_eta = h * (1 + self.eta)
        stages = []
        previous = 0.0
        for r in fractions:
            segment = (previous - r) * h * self.eta  # ≤ 0
            stages.append(
                dict(
                    sigma=sigma * math.exp(-r * h),
                    decay=math.exp(-r * h_eta),
                    noise_carry=math.exp(segment),
                    noise_fresh=math.sqrt(-math.expm1(2 * segment)),
                )
            )
            previous = r
        return dict(h_eta=h_eta, stages=stages)

    def add_stage_noise(self, ctx, x, noise, stage, sigma_from):
        """x + σ_stage S_noise ξ_stage, with ξ the Brownian noise carried across the stages."""
        if not self.draws_noise:
            return x, None
        fresh = ctx.noise(sigma_from, stage["sigma"])
        noise = fresh * stage["noise_fresh"] if noise is None else torch.add(
            noise * stage["noise_carry"], fresh, alpha=stage["noise_fresh"]
        )
        return torch.add(x, noise, alpha=stage["sigma"] * self.s_noise), noise


@register
class SEEDS2(_SEEDS):
    """SEEDS-2 (Gonzalez et al. 2023, Algorithm "SEEDS-2", data prediction), ComfyUI's
    ``seeds_2``: with u = x at σ_s = σ e^{−r h} from the first-order transfer (plus noise),

        ``phi_1``: x_next = e^{−h_η} x − e_1(−h_η) [(1 − 1/(2r)) D + 1/(2r) D(u; σ_s)] + noise,
        ``phi_2``: x_next = e^{−h_η} x − [(e_1 − e_2/r) D + (e_2/r) D(u; σ_s)](−h_η) + noise,

    e_1(z) = e^z − 1, e_2(z) = (e^z − 1 − z)/z. Order 2 at ``eta = 0`` (measured 1.98 on
    Gaussian data, σ 80 → 1e-3, Karras grid, N = 64 … 256); ``r = 1`` with
    ``phi_2`` is ComfyUI's ``exp_heun_2_x0`` (``_sde`` with eta > 0).

    Parity with a transcription of ComfyUI's ``sample_seeds_2`` on the same inputs and noise:
    6e-16 relative (float64, ``tests/test_new_methods.py``).
    """

    name = "seeds_2"
    order = 2
    nfe_per_step = 2

    def __init__(self, eta: float = 1.0, s_noise: float = 1.0, r: float = 0.5, solver_type: str = "phi_1"):
        super().__init__(eta=eta, s_noise=s_noise)
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r <= 1:
            raise ValueError(f"r must be a number in (0, 1] (the stage at λ + r·h), got {r!r}")
        self.r = float(r)
        self.solver_type = check_choice("solver_type", solver_type, ("phi_1", "phi_2"))

    def coefficients(self, sigmas, i):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        if sigma_next == 0.0:
            return dict(denoise_only=True)
        h = math.log(sigma / sigma_next)
        coeffs = self.stage_coefficients(sigma, h, [self.r, 1.0])
        h_eta, r = coeffs["h_eta"], self.r
        first = -_e1(-r * h_eta)
        if self.solver_type == "phi_1":
            weight = -_e1(-h_eta)
            weights = [weight * (1 - 1 / (2 * r)), weight / (2 * r)]
        else:
            b2 = _e2(-h_eta) / r
            weights = [-(_e1(-h_eta) - b2), -b2]
        return dict(denoise_only=False, first_weight=first, weights=weights, **coeffs)

    def step(self, ctx, x, step):
        denoised = ctx.denoise(x, step.sigma)
        if step.denoise_only:
            return denoised
        mid, end = step.stages
        # u = e^{−r h_η} x + (1 − e^{−r h_η}) D + σ_s √(1 − e^{−2rhη}) ξ_1
        x_mid = torch.add(x * mid["decay"], denoised, alpha=step.first_weight)
        x_mid, noise = self.add_stage_noise(ctx, x_mid, None, mid, step.sigma)
        denoised_mid = ctx.denoise(x_mid, mid["sigma"])
        x = x * end["decay"] + denoised * step.weights[0] + denoised_mid * step.weights[1]
        x, _ = self.add_stage_noise(ctx, x, noise, end, mid["sigma"])
        return x


@register
class SEEDS3(_SEEDS):
    """SEEDS-3 (Gonzalez et al. 2023, Algorithm "SEEDS-3", data prediction), ComfyUI's
    ``seeds_3``: stages at σ_k = σ e^{−r_k h} (r_1 = 1/3, r_2 = 2/3),

        u_1 = e^{−r_1 h_η} x − e_1(−r_1 h_η) D + noise,
        u_2 = e^{−r_2 h_η} x − [(e_1 − a) D + a D(u_1; σ_1)](−r_2 h_η) + noise,  a = (r_2/r_1) e_2(−r_2 h_η),
        x_next = e^{−h_η} x − [(e_1 − b) D + b D(u_2; σ_2)](−h_η) + noise,       b = e_2(−h_η)/r_2,

    e_1(z) = e^z − 1, e_2(z) = (e^z − 1 − z)/z. Order 3 at ``eta = 0`` (measured 2.93, as
    for ``seeds_2``).

    Parity with a transcription of ComfyUI's ``sample_seeds_3`` on the same inputs and noise:
    9e-16 relative (float64, ``tests/test_new_methods.py``).
    """

    name = "seeds_3"
    order = 3
    nfe_per_step = 3

    def __init__(self, eta: float = 1.0, s_noise: float = 1.0, r_1: float = 1 / 3, r_2: float = 2 / 3):
        super().__init__(eta=eta, s_noise=s_noise)
        self.r_1 = check_fraction("r_1", r_1)
        self.r_2 = check_fraction("r_2", r_2)
        if not self.r_1 < self.r_2:
            raise ValueError(f"r_1 must be smaller than r_2, got r_1={r_1}, r_2={r_2}")

    def coefficients(self, sigmas, i):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        if sigma_next == 0.0:
            return dict(denoise_only=True)
        h = math.log(sigma / sigma_next)
        coeffs = self.stage_coefficients(sigma, h, [self.r_1, self.r_2, 1.0])
        h_eta, r_1, r_2 = coeffs["h_eta"], self.r_1, self.r_2
        a = r_2 / r_1 * _e2(-r_2 * h_eta)
        b = _e2(-h_eta) / r_2
        return dict(
            denoise_only=False,
            first_weight=-_e1(-r_1 * h_eta),
            second_weights=[-(_e1(-r_2 * h_eta) - a), -a],
            weights=[-(_e1(-h_eta) - b), -b],
            **coeffs,
        )

    def step(self, ctx, x, step):
        denoised = ctx.denoise(x, step.sigma)
        if step.denoise_only:
            return denoised
        first, second, end = step.stages
        x_1 = torch.add(x * first["decay"], denoised, alpha=step.first_weight)
        x_1, noise = self.add_stage_noise(ctx, x_1, None, first, step.sigma)
        denoised_1 = ctx.denoise(x_1, first["sigma"])
        x_2 = x * second["decay"] + denoised * step.second_weights[0] + denoised_1 * step.second_weights[1]
        x_2, noise = self.add_stage_noise(ctx, x_2, noise, second, first["sigma"])
        denoised_2 = ctx.denoise(x_2, second["sigma"])
        x = x * end["decay"] + denoised * step.weights[0] + denoised_2 * step.weights[1]
        x, _ = self.add_stage_noise(ctx, x, noise, end, second["sigma"])
        return x
