"""Ancestral samplers: a deterministic step to σ_down, then fresh noise of scale σ_up.

With ``σ_up = η · sqrt(σ_next² (σ² − σ_next²) / σ²)`` and ``σ_down² = σ_next² − σ_up²``
(:func:`ksampling.samplers.common.ancestral_step`), η = 1 is DDPM's posterior
q(x_{t−1} | x_t, x̂0) and η = 0 is DDIM, both written in the VE state space x = x0 + σ n.
"""

from __future__ import annotations

import math

import torch

from .base import Solver, register
from .validation import check_choice, check_nonnegative
from .common import Stochastic, ancestral_step


class _Ancestral(Stochastic):
    """A deterministic step to σ_down, then ``add_noise`` adds S_noise σ_up z."""

    def coefficients(self, sigmas, i):
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], self.eta)
        return dict(
            sigma_down=sigma_down,
            sigma_up=sigma_up,
            noise_std=self.s_noise * sigma_up,
            # the Euler/DDIM step σ → σ_down moves x this fraction of the way to D
            euler_weight=1 - sigma_down / sigmas[i],
        )


@register
class EulerAncestral(_Ancestral):
    """Euler step to σ_down, then noise: x_next = x + (σ_down − σ) (x − D)/σ + S_noise σ_up z,
    the deterministic part written as D + (σ_down/σ)(x − D) (one ``torch.lerp``)."""

    name = "euler_ancestral"
    order = 1
    paper = "k-diffusion (Crowson 2022); Ho et al. 2020 at eta = 1"

    def step(self, ctx, x, step):
        # x_down = D + (σ_down/σ)(x − D)  (Euler to σ_down; lerp form)
        return self.add_noise(ctx, torch.lerp(x, ctx.denoise(x, step.sigma), step.euler_weight), step)


@register
class DDIM(_Ancestral):
    """DDIM (Song et al. 2021, eq. 12) in the VE state space:

    ε̂ = (x − D(x; σ)) / σ,   x_next = D + sqrt(σ_next² − σ_up²) · ε̂ + σ_up · z,

    with σ_up = η sqrt(σ_next² (σ² − σ_next²) / σ²), i.e. DDIM's σ_t(η) divided by
    √ᾱ_{t−1}. Deterministic (and equal to Euler) at η = 0, the default; η = 1 is DDPM.
    Since σ_down = sqrt(σ_next² − σ_up²), the deterministic part D + σ_down ε̂ is
    D + (σ_down/σ)(x − D), one ``torch.lerp``.
    """

    name = "ddim"
    order = 1
    kind = "ode"
    paper = "Song, Meng & Ermon 2021, Denoising Diffusion Implicit Models"

    def __init__(self, eta: float = 0.0, s_noise: float = 1.0):
        if isinstance(eta, (int, float)) and not isinstance(eta, bool) and eta > 1:
            raise ValueError(f"eta must be in [0, 1] for ddim, got {eta}")
        super().__init__(eta=eta, s_noise=s_noise)

    def step(self, ctx, x, step):
        # x_next = D + σ_down ε̂ + σ_up z = D + (σ_down/σ)(x − D) + σ_up z  (lerp form)
        return self.add_noise(ctx, torch.lerp(x, ctx.denoise(x, step.sigma), step.euler_weight), step)


@register
class DDPM(Solver):
    """DDPM ancestral sampling (Ho et al. 2020, Algorithm 2) on any grid.

    For the step σ → σ_next the forward process has, in VP terms, ᾱ = 1/(1+σ²) and
    β = 1 − ᾱ/ᾱ_next; the posterior q(x_next | x, x̂0) has mean (VE state space)
    ``x̂0 + (σ_next²/σ²)(x − x̂0)`` and variance

    * ``"small"`` (β̃, the posterior's own): σ_next² (σ² − σ_next²) / σ²;
    * ``"large"`` (β): β (1 + σ_next²) = (σ² − σ_next²)(1 + σ_next²)/(1 + σ²);
    * ``"learned"``: the network's variance (improved DDPM, Nichol & Dhariwal 2021):
      ``learned`` gives log Σ, ``learned_range`` a mix v of log β and log β̃,
      log Σ = v log β + (1 − v) log β̃, with β, β̃ of this (possibly respaced) step.
      Falls back to ``"small"`` when the model gives no variance.

    The default ``"auto"`` is ``"learned"`` when the model has a learned variance, else
    ``"small"``.
    """

    name = "ddpm"
    order = 1
    kind = "sde"
    paper = "Ho, Jain & Abbeel 2020; Nichol & Dhariwal 2021 (learned variances)"

    def __init__(self, variance: str = "auto", s_noise: float = 1.0):
        self.variance = check_choice("variance", variance, ("auto", "small", "large", "learned"))
        self.s_noise = check_nonnegative("s_noise", s_noise)

    def coefficients(self, sigmas, i):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        # With q = σ_next/σ: β = (σ² − σ_next²)/(1 + σ²) = (1 − q²)/(1 + 1/σ²) and
        # β̃ = β (1 − ᾱ_next)/(1 − ᾱ) = (1 − q²) σ_next²/(1 + σ_next²), written without σ²,
        # which overflows from σ = 1e154.
        shrink = 1 - (sigma_next / sigma) ** 2  # 1 − q²
        # VP-space variances to VE space: divide by ᾱ_next, i.e. multiply by 1 + σ_next²
        ve_std_scale = math.hypot(1.0, sigma_next)  # √(1 + σ_next²)
        log_beta = math.log(shrink) - math.log1p((1 / sigma) ** 2)
        return dict(
            to_denoised=shrink,  # mean = D + (σ_next²/σ²)(x − D) = lerp(x, D, 1 − q²)
            log_beta=log_beta,
            log_beta_tilde=math.log(shrink) + 2 * (math.log(sigma_next) - math.log(ve_std_scale)) if sigma_next > 0 else -math.inf,
            ve_std_scale=ve_std_scale,
            std_small=sigma_next * math.sqrt(shrink),  # √(β̃ (1 + σ_next²))
            std_large=math.exp(0.5 * log_beta) * ve_std_scale,  # √(β (1 + σ_next²))
        )

    def step(self, ctx, x, step):
        use_learned = self.variance in ("auto", "learned")
        if use_learned:
            denoised, learned = ctx.denoise_with_variance(x, step.sigma)
        else:
            denoised, learned = ctx.denoise(x, step.sigma), None
        mean = torch.lerp(x, denoised, step.to_denoised)  # x̂0 + (σ_next²/σ²)(x − x̂0)
        if step.to_zero:
            return mean
        if learned is not None:  # a per-element std: the one noise line that is not ctx.add_noise
            noise = ctx.noise(step.sigma, step.sigma_next)
            return torch.addcmul(mean, noise, self._learned_std(learned, step), value=self.s_noise)
        std = step.std_large if self.variance == "large" else step.std_small
        return ctx.add_noise(mean, self.s_noise * std, step.sigma, step.sigma_next)

    @staticmethod
    def _learned_std(learned, step) -> torch.Tensor:
        if learned.kind == "learned_range":
            frac = (learned.value + 1) / 2
            log_var = frac * step.log_beta + (1 - frac) * step.log_beta_tilde
        else:
            log_var = learned.value
        return torch.exp(0.5 * log_var) * step.ve_std_scale
