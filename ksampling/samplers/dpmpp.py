"""DPM-Solver++ in data-prediction form: k-diffusion's dpmpp_* samplers.

Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic
Models" (arXiv:2211.01095). In the VE state space ``x = x0 + σ n`` with ``λ = −log σ`` and
``h = λ_next − λ`` the exact solution of the probability-flow ODE is

    x(σ_next) = (σ_next/σ) x(σ) + σ_next ∫_λ^λ_next e^{λ'} D(x(λ'); σ(λ')) dλ',

and freezing ``D`` over the step gives DPM-Solver++(1), i.e. DDIM:

    x_next = (σ_next/σ) x − (e^{−h} − 1) D(x; σ).

Higher orders replace the frozen ``D`` by a finite-difference extrapolation of earlier model
outputs (multistep, "2M"/"3M") or of an intermediate model call (singlestep, "2S"). The SDE
variants integrate the reverse SDE with the same exponential integrator (SDE-DPM-Solver++,
Lu et al. 2022, §5; ``η`` scales the stochasticity, ``η = 1`` is the reverse-time SDE):

    x_next = (σ_next/σ) e^{−ηh} x + (1 − e^{−(1+η)h}) D + σ_next √(1 − e^{−2ηh}) S_noise z.

Every per-step scalar is computed on the host by :meth:`coefficients`; the steps only combine
tensors with them. A step that ends at σ = 0 is the first-order step, which returns ``D``.

The weights of ``x`` and ``D`` in these updates add up to 1 (``σ_next/σ + 1 − e^{−h}`` and
``e^{−(1+η)h} + 1 − e^{−(1+η)h}``), so each update ``ratio · x + phi · D`` is the linear
interpolation ``x + phi (D − x)``: one ``torch.lerp`` instead of three tensor operations.
"""

from __future__ import annotations

import math

import torch

from .base import register
from .common import Multistep, Stochastic, ancestral_step, degenerate_ratio, log_sigma_step, step_order
from .dpm_solver import dpmpp_multistep_terms, dpmpp_step_ratios
from .validation import check_choice, check_real

__all__ = ["dpmpp_first_order"]


def dpmpp_first_order(sigma: float, sigma_target: float) -> tuple[float, float]:
    """Weights of DPM-Solver++(1) from ``sigma`` to ``sigma_target``:
    ``x_target = ratio · x + phi · D`` with ``ratio = σ_target/σ`` and ``phi = −expm1(−h)``,
    ``h = log(σ/σ_target)`` (``ratio = 0``, ``phi = 1`` for a step to 0: ``x_target = D``)."""
    h = log_sigma_step(sigma, sigma_target)
    return sigma_target / sigma, -math.expm1(-h)


@register
class DPMPP2SAncestral(Stochastic):
    """DPM-Solver++(2S) with ancestral noise (k-diffusion ``sample_dpmpp_2s_ancestral``).

    With ``σ_down, σ_up`` from :func:`~ksampling.samplers.common.ancestral_step`,
    ``h = log(σ/σ_down)`` and the midpoint ``σ_s = σ e^{−h/2}`` (Lu et al. 2022, Algorithm 1
    with r = 1/2):

        u = (σ_s/σ) x − (e^{−h/2} − 1) D(x; σ),
        x_next = (σ_down/σ) x − (e^{−h} − 1) D(u; σ_s) + S_noise σ_up z.

    A step with σ_down = 0 is one Euler step (``x_next = D``). At ``eta = 0`` this is the
    deterministic DPM-Solver++(2S).
    """

    name = "dpmpp_2s_ancestral"
    order = 2
    nfe_per_step = 2
    paper = "Lu et al. 2022, DPM-Solver++ (arXiv:2211.01095), Algorithm 1"

    def coefficients(self, sigmas, i):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, self.eta)
        coeffs = dict(denoise_only=sigma_down == 0.0, noise_std=self.s_noise * sigma_up)
        if sigma_down > 0:
            h = log_sigma_step(sigma, sigma_down)
            sigma_mid = sigma * math.exp(-h / 2)
            coeffs.update(
                sigma_mid=sigma_mid,
                phi_mid=dpmpp_first_order(sigma, sigma_mid)[1],
                phi_down=dpmpp_first_order(sigma, sigma_down)[1],
            )
        return coeffs

    def step(self, ctx, x, step):
        denoised = ctx.denoise(x, step.sigma)
        if step.denoise_only:
            x = denoised
        else:
            # u = (σ_s/σ) x + (1 − e^{−h/2}) D,  x_down = (σ_down/σ) x + (1 − e^{−h}) D(u; σ_s)
            x_mid = torch.lerp(x, denoised, step.phi_mid)
            x = torch.lerp(x, ctx.denoise(x_mid, step.sigma_mid), step.phi_down)
        return self.add_noise(ctx, x, step)


@register
class DPMPPSDE(Stochastic):
    """DPM-Solver++ (stochastic), k-diffusion ``sample_dpmpp_sde``: a two-stage singlestep
    SDE solver with the intermediate point at ``λ_s = λ + r h``.

    Each stage is an ancestral DPM-Solver++(1) step (``σ_down, σ_up`` of the stage):

        u = (σ_down,s/σ) x + (1 − σ_down,s/σ) D(x; σ) + S_noise σ_up,s z_1,
        D' = (1 − 1/(2r)) D(x; σ) + 1/(2r) D(u; σ_s),
        x_next = (σ_down/σ) x + (1 − σ_down/σ) D' + S_noise σ_up z_2,

    with ``z_1, z_2`` the noise of the steps σ → σ_s and σ → σ_next, which the Brownian tree
    (the default noise) makes consistent with each other. The step to σ = 0 is an Euler step
    (``x_next = D``). At ``eta = 0`` and ``r = 1/2`` this equals ``dpmpp_2s_ancestral(eta=0)``.
    """

    name = "dpmpp_sde"
    order = 2
    nfe_per_step = 2
    default_noise = "brownian"
    paper = "Lu et al. 2022, DPM-Solver++ (arXiv:2211.01095); k-diffusion sample_dpmpp_sde"

    def __init__(self, eta: float = 1.0, s_noise: float = 1.0, r: float = 1 / 2):
        super().__init__(eta, s_noise)
        self.r = check_real("r (the intermediate point λ + r·h)", r, low=0.0, high=1.0, low_open=True)

    def coefficients(self, sigmas, i):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        if sigma_next == 0.0:
            return dict(denoise_only=True)
        h = log_sigma_step(sigma, sigma_next)
        sigma_mid = sigma * math.exp(-self.r * h)
        mid_down, mid_up = ancestral_step(sigma, sigma_mid, self.eta)
        down, up = ancestral_step(sigma, sigma_next, self.eta)
        return dict(
            denoise_only=False,
            sigma_mid=sigma_mid,
            phi_mid=dpmpp_first_order(sigma, mid_down)[1],
            mid_noise_std=self.s_noise * mid_up,
            phi_down=dpmpp_first_order(sigma, down)[1],
            noise_std=self.s_noise * up,
            weight_mid=1 / (2 * self.r),
        )

    def step(self, ctx, x, step):
        denoised = ctx.denoise(x, step.sigma)
        if step.denoise_only:
            return denoised
        x_mid = torch.lerp(x, denoised, step.phi_mid)  # (σ_down,s/σ) x + (1 − σ_down,s/σ) D
        if step.mid_noise_std > 0:
            x_mid = ctx.add_noise(x_mid, step.mid_noise_std, step.sigma, step.sigma_mid)
        # D' = (1 − 1/(2r)) D + 1/(2r) D(u; σ_s)
        denoised_prime = torch.lerp(denoised, ctx.denoise(x_mid, step.sigma_mid), step.weight_mid)
        x = torch.lerp(x, denoised_prime, step.phi_down)  # (σ_down/σ) x + (1 − σ_down/σ) D′
        return self.add_noise(ctx, x, step)


@register
class DPMPP2M(Multistep):
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2), k-diffusion ``sample_dpmpp_2m``.

    With ``h = λ_next − λ``, ``h_last = λ − λ_prev`` and ``r = h_last / h``:

        D' = (1 + 1/(2r)) D_i − 1/(2r) D_{i−1},
        x_next = (σ_next/σ) x − (e^{−h} − 1) D'.

    As σ_next/σ = e^{−h}, ``x_next = lerp(x, lerp(D_i, D_{i−1}, −1/(2r)), 1 − e^{−h})``.
    The first step (no history) and the step to σ = 0 are first order.
    """

    name = "dpmpp_2m"
    order = 2
    nfe_per_step = 1
    paper = "Lu et al. 2022, DPM-Solver++ (arXiv:2211.01095), Algorithm 2"

    def coefficients(self, sigmas, i):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        _, phi = dpmpp_first_order(sigma, sigma_next)  # the weight of x, σ_next/σ, is 1 − phi
        weight_old = 0.0
        if i > 0 and sigma_next > 0:
            h_last, h = log_sigma_step(sigmas[i - 1], sigma), log_sigma_step(sigma, sigma_next)
            if not degenerate_ratio(h_last, h):  # else first order: D_{i−1} is too close or too far
                r = h_last / h
                weight_old = -1 / (2 * r)
        return dict(phi=phi, weight_old=weight_old)

    def step(self, ctx, x, step):
        denoised = ctx.denoise(x, step.sigma)
        denoised_prime = denoised  # D′
        if step.weight_old != 0.0:
            # D′ = (1 + 1/(2r)) D_i − 1/(2r) D_{i−1} = lerp(D_i, D_{i−1}, −1/(2r))
            denoised_prime = torch.lerp(denoised, self.history[0], step.weight_old)
        self.remember(denoised, 1)
        return torch.lerp(x, denoised_prime, step.phi)  # x_next = (σ_next/σ) x + (1 − e^{−h}) D′


_Multistep = Multistep  # its former name here, for branches written against it


class _MultistepSDE(Stochastic, Multistep):
    default_noise = "brownian"

    def sde_coefficients(self, sigma: float, sigma_next: float) -> dict:
        """The first-order SDE step: ``x_next = decay · x + phi · D + noise_std · z`` with
        ``decay = (σ_next/σ) e^{−ηh} = e^{−(1+η)h} = 1 − phi``, ``phi = 1 − e^{−(1+η)h}``
        (so the step is ``lerp(x, D, phi)`` plus noise),
        ``noise_std = S_noise σ_next √(1 − e^{−2ηh})``."""
        h = log_sigma_step(sigma, sigma_next)
        h_eta = h * (1 + self.eta)
        return dict(
            h=h,
            h_eta=h_eta,
            phi=-math.expm1(-h_eta),
            noise_std=self.s_noise * sigma_next * math.sqrt(-math.expm1(-2 * self.eta * h)),
        )


@register
class DPMPP2MSDE(_MultistepSDE):
    """DPM-Solver++(2M) SDE, k-diffusion ``sample_dpmpp_2m_sde``.

    With ``h = λ_next − λ``, ``r = h_last / h`` and ``φ = 1 − e^{−(1+η)h}``:

        x_next = (σ_next/σ) e^{−ηh} x + φ D_i + c (D_i − D_{i−1}) / r
                 + S_noise σ_next √(1 − e^{−2ηh}) z,

    where ``c = φ/2`` (``solver_type="midpoint"``) or ``c = 1 − φ/((1+η)h)`` (``"heun"``,
    the φ₂ ("taylor") correction of the official DPM-Solver++ code). At ``eta = 0`` the midpoint variant is
    exactly ``dpmpp_2m``; the heun variant is a different second-order method. The first
    step is first order and the step to σ = 0 returns ``D``.
    """

    name = "dpmpp_2m_sde"
    order = 2
    nfe_per_step = 1
    paper = "Lu et al. 2022, DPM-Solver++ (arXiv:2211.01095), SDE-DPM-Solver++(2M)"

    def __init__(self, eta: float = 1.0, s_noise: float = 1.0, solver_type: str = "midpoint"):
        super().__init__(eta=eta, s_noise=s_noise)
        self.solver_type = check_choice("solver_type", solver_type, ("midpoint", "heun"))

    def coefficients(self, sigmas, i):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        if sigma_next == 0.0:
            return dict(denoise_only=True, weight_diff=0.0, noise_std=0.0)
        c = self.sde_coefficients(sigma, sigma_next)
        weight_diff = 0.0
        h_last = log_sigma_step(sigmas[i - 1], sigma) if i > 0 else 0.0
        if i > 0 and not degenerate_ratio(h_last, c["h"]):  # else first order (see common.step_order)
            r = h_last / c["h"]
            if self.solver_type == "heun":
                weight_diff = (c["phi"] / -c["h_eta"] + 1) / r
            else:
                weight_diff = 0.5 * c["phi"] / r
        return dict(denoise_only=False, weight_diff=weight_diff, **c)

    def step(self, ctx, x, step):
        denoised = ctx.denoise(x, step.sigma)
        if step.denoise_only:
            return denoised
        x_next = torch.lerp(x, denoised, step.phi)  # e^{−(1+η)h} x + φ D
        if step.weight_diff != 0.0:
            x_next = torch.add(x_next, denoised - self.history[0], alpha=step.weight_diff)  # + c (D_i − D_{i−1})/r
        self.remember(denoised, 1)
        return self.add_noise(ctx, x_next, step)


@register
class DPMPP3MSDE(_MultistepSDE):
    """DPM-Solver++(3M) SDE, k-diffusion ``sample_dpmpp_3m_sde``.

    With ``h_η = (1+η) h``, ``r₀ = h_{i−1}/h``, ``r₁ = h_{i−2}/h``,
    ``φ₂ = (e^{−h_η} − 1)/h_η + 1`` and ``φ₃ = φ₂/h_η − 1/2``:

        d₀ = (D_i − D_{i−1})/r₀,  d₁ = (D_{i−1} − D_{i−2})/r₁,
        D₁ = d₀ + (d₀ − d₁) r₀/(r₀ + r₁),  D₂ = (d₀ − d₁)/(r₀ + r₁),
        x_next = e^{−h_η} x + (1 − e^{−h_η}) D_i + φ₂ D₁ − φ₃ D₂ + S_noise σ_next √(1 − e^{−2ηh}) z.

    The second step uses only ``φ₂ d₀`` (second order), the first is first order, and the
    step to σ = 0 returns ``D`` (also on a one-step grid, where k-diffusion raises
    ``UnboundLocalError``). At ``eta = 0`` it is the deterministic DPM-Solver++(3M) of the
    official code: ``dpmpp_3m(official_coefficients=True, lower_order_final=False)``.

    Order: ``D₂ ≈ h² D''/2``, whose Taylor weight is ``2hφ₃(−h)``; the weight used here (and
    in the official DPM-Solver and diffusers code) is ``φ₃ = −hφ₃(−h)`` in magnitude half of
    it, which leaves an O(h³) local error: measured on Gaussian data it converges with order
    2, so ``order = 2``. We keep k-diffusion's coefficients for parity; ``dpmpp_3m`` has the
    third-order ones.
    """

    name = "dpmpp_3m_sde"
    order = 2
    nfe_per_step = 1
    paper = "Lu et al. 2022, DPM-Solver++ (arXiv:2211.01095), multistep order 3"

    def coefficients(self, sigmas, i):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        if sigma_next == 0.0:
            return dict(denoise_only=True, step_order=1, noise_std=0.0)
        c = self.sde_coefficients(sigma, sigma_next)
        h, h_eta = c["h"], c["h_eta"]
        phi_2 = math.expm1(-h_eta) / h_eta + 1
        phi_3 = phi_2 / h_eta - 0.5
        # the history stops at a degenerate step ratio (common.step_order)
        order_i = step_order(i, len(sigmas) - 1, 3, step_size=lambda j: log_sigma_step(sigmas[j], sigmas[j + 1]))
        # the weights b2 = φ₂, b3 = −φ₃ of dpm_solver.dpmpp_multistep_terms
        return dict(denoise_only=False, step_order=order_i, b2=phi_2, b3=-phi_3, **c, **dpmpp_step_ratios(sigmas, i, order_i, h))

    def step(self, ctx, x, step):
        denoised = ctx.denoise(x, step.sigma)
        history = self.remember(denoised, 3)
        if step.denoise_only:
            return denoised
        x_next = torch.lerp(x, denoised, step.phi)  # e^{−h_η} x + (1 − e^{−h_η}) D_i
        if step.step_order >= 2:
            x_next = dpmpp_multistep_terms(x_next, history, step)  # + φ₂ D₁ − φ₃ D₂
        return self.add_noise(ctx, x_next, step)
