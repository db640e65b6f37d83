"""CFG++ (Chung et al. 2024, "CFG++: Manifold-constrained Classifier Free Guidance for
Diffusion Models", arXiv:2406.08070) for seven solvers, as ComfyUI's ``*_cfg_pp`` samplers.

Classifier-free guidance extrapolates ``D_λ = D_∅ + λ (D_c − D_∅)``. CFG++ uses ``D_λ`` for
the denoised estimate but renoises along the *unconditional* direction: its DDIM step
(paper, Algorithm 1, in the VE state space) is

    x_next = D_λ + σ_next (x − D_∅) / σ,

instead of CFG's ``D_λ + σ_next (x − D_λ)/σ``. That is the base solver's step taken with
``D_∅`` plus the guidance ``g = D_λ − D_∅`` of the step's first model call::

    x_next = step_base(x; D_∅) + w_i · g,

with ``w_i = 1`` for Euler, Euler ancestral, DPM-Solver++(2S) ancestral and gradient
estimation. For ComfyUI's ``dpmpp_2m_cfg_pp`` (whose correction term is
``(1 − e^{−h})/(2r) (D_λ,i − D_∅,i−1)``) ``w_i = 1 + (1 − e^{−h})/(2r)`` on its
multistep steps, and for ``res_multistep(_ancestral)_cfg_pp`` (which adds g to x before
the exponential step) ``w_i = e^{−h}`` on its multistep steps. History terms are always
unconditional. With ``D_c = D_∅`` each of them is its base solver.

The model must provide ``denoise_with_uncond`` (:class:`ksampling.denoisers.ClassifierFreeGuidance`
does); its ``scale`` is CFG++'s λ, typically in (0, 1]. CFG++ at a fixed λ is equivalent to
CFG with a step-dependent scale (for Euler ``ω_i = λ σ_i / (σ_i − σ_{i+1})``), which grows
with the number of steps: unlike the base solvers it has no step-count-independent limit, so
it has no convergence order of its own; ``order`` is the base solver's.

Parity with transcriptions of ComfyUI's seven ``sample_*_cfg_pp`` on the same inputs, guided
model and noise: at most 5e-16 relative (float64, ``tests/test_new_methods.py``).
"""

from __future__ import annotations

import torch

from .adams import GradientEstimation
from .ancestral import EulerAncestral
from .base import register
from .dpmpp import DPMPP2M, DPMPP2SAncestral
from .res_multistep import RESMultistep, RESMultistepAncestral

__all__ = ["CFGPlusPlus"]

PAPER = "Chung et al. 2024, CFG++: Manifold-constrained Classifier Free Guidance for Diffusion Models (arXiv:2406.08070)"


class _Unconditional:
    """The solver's view of the context during a CFG++ step: ``denoise`` returns D_∅ and keeps
    the guidance g = D_λ − D_∅ of the step's first call; everything else is the context's."""

    __slots__ = ("ctx", "guidance")

    def __init__(self, ctx):
        self.ctx = ctx
        self.guidance = None

    def denoise(self, x, sigma):
        guided, uncond = self.ctx.denoise_with_uncond(x, sigma)
        if self.guidance is None:
            self.guidance = guided - uncond
        return uncond

    def __getattr__(self, name):
        return getattr(self.ctx, name)


class CFGPlusPlus:
    """Mixin: the base solver's step on D_∅, plus ``guidance_weight · (D_λ − D_∅)``."""

    needs_uncond = True

    def guidance_weight(self, coeffs: dict) -> float:
        """w_i of the module docstring, from the base solver's host-side coefficients."""
        return 1.0

    def coefficients(self, sigmas, i):
        coeffs = super().coefficients(sigmas, i)
        coeffs["guidance_weight"] = self.guidance_weight(coeffs)
        return coeffs

    def step(self, ctx, x, step):
        unconditional = _Unconditional(ctx)
        x = super().step(unconditional, x, step)
        return torch.add(x, unconditional.guidance, alpha=step.guidance_weight)


@register
class EulerAncestralCFGPP(CFGPlusPlus, EulerAncestral):
    """Euler ancestral with CFG++ (ComfyUI ``euler_ancestral_cfg_pp``):
    x_next = D_λ + σ_down (x − D_∅)/σ + S_noise σ_up z."""

    name = "euler_ancestral_cfg_pp"
    paper = PAPER


@register
class EulerCFGPP(CFGPlusPlus, EulerAncestral):
    """Euler (DDIM) with CFG++ (paper, Algorithm 1; ComfyUI ``euler_cfg_pp``):
    x_next = D_λ + σ_next (x − D_∅)/σ."""

    name = "euler_cfg_pp"
    kind = "ode"
    paper = PAPER

    def __init__(self):
        super().__init__(eta=0.0)


@register
class DPMPP2SAncestralCFGPP(CFGPlusPlus, DPMPP2SAncestral):
    """DPM-Solver++(2S) ancestral with CFG++ (ComfyUI ``dpmpp_2s_ancestral_cfg_pp``):
    u = (σ_s/σ) x + (1 − σ_s/σ) D_∅(x; σ),
    x_next = (σ_down/σ) x + (1 − σ_down/σ) D_∅(u; σ_s) + S_noise σ_up z + (D_λ − D_∅)(x; σ)."""

    name = "dpmpp_2s_ancestral_cfg_pp"
    paper = PAPER


@register
class DPMPP2MCFGPP(CFGPlusPlus, DPMPP2M):
    """DPM-Solver++(2M) with CFG++ (ComfyUI ``dpmpp_2m_cfg_pp``): with φ = 1 − e^{−h},
    x_next = e^{−h} (x − D_∅,i) + D_λ,i + φ/(2r) (D_λ,i − D_∅,i−1)
    (first step and step to 0: x_next = e^{−h}(x − D_∅) + D_λ)."""

    name = "dpmpp_2m_cfg_pp"
    paper = PAPER

    def guidance_weight(self, coeffs):
        # weight_old = −1/(2r) on multistep steps, 0 otherwise
        return 1.0 - coeffs["phi"] * coeffs["weight_old"]


class _RESCFGPP(CFGPlusPlus):
    def guidance_weight(self, coeffs):
        return 1.0 if coeffs["euler_step"] else coeffs["x_weight"]


@register
class RESMultistepCFGPP(_RESCFGPP, RESMultistep):
    """RES multistep with CFG++ (ComfyUI ``res_multistep_cfg_pp``):
    x_next = e^{−h} (x + D_λ,i − D_∅,i) + h [b_1 D_∅,i + b_2 D_∅,i−1];
    the first step is x_next = D_λ + σ_next (x − D_∅)/σ."""

    name = "res_multistep_cfg_pp"
    paper = PAPER


@register
class RESMultistepAncestralCFGPP(_RESCFGPP, RESMultistepAncestral):
    """RES multistep ancestral with CFG++ (ComfyUI ``res_multistep_ancestral_cfg_pp``):
    ``res_multistep_cfg_pp`` to σ_down, then S_noise σ_up z."""

    name = "res_multistep_ancestral_cfg_pp"
    paper = PAPER


@register
class GradientEstimationCFGPP(CFGPlusPlus, GradientEstimation):
    """Gradient estimation with CFG++ (ComfyUI ``gradient_estimation_cfg_pp``): with
    d_∅ = (x − D_∅)/σ, x_next = D_λ + σ_next d_∅ + (γ − 1)(σ_next − σ)(d_∅,i − d_∅,i−1);
    the step to σ = 0 is x_next = D_λ, as ComfyUI's (``gradient_estimation`` extrapolates there)."""

    name = "gradient_estimation_cfg_pp"
    paper = PAPER

    def coefficients(self, sigmas, i):
        coeffs = super().coefficients(sigmas, i)
        if sigmas[i + 1] == 0.0:
            # ComfyUI's step to σ = 0 denoises (x ← D_λ): no extrapolation there
            coeffs["weights"] = [-sigmas[i], 0.0]
        return coeffs
