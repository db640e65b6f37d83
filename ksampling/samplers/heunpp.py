"""Heun++ (ComfyUI's ``heunpp2``): Heun's method with a third derivative one step ahead and
σ-dependent weights."""

from __future__ import annotations

import torch

from .base import register
from .euler import _ChurnSolver

__all__ = ["HeunPP2"]


@register
class HeunPP2(_ChurnSolver):
    """Heun++ (ComfyUI's ``heunpp2``, from Carzit's sd-webui-samplers-scheduler): after EDM's
    churn (σ̂, x̂ as in ``euler``), with d(x, s) = (x − D(x; s))/s and Δσ = σ_{i+1} − σ̂,

        x' = x̂ + Δσ d̂,  x'' = x' + (σ_{i+2} − σ_{i+1}) d(x', σ_{i+1}),
        x_next = x̂ + Δσ (w_1 d̂ + w_2 d(x', σ_{i+1}) + w_3 d(x'', σ_{i+2})),
        w_2 = σ_{i+1}/(3σ_0),  w_3 = σ_{i+2}/(3σ_0),  w_1 = 1 − w_2 − w_3;

    the second-to-last step uses only d̂ and d(x', σ_{i+1}) with w_2 = σ_{i+1}/(2σ_0), and the
    last step is an Euler step. The weights of the later derivatives shrink with σ, so the
    method is Heun-like at high noise and Euler-like at low noise: first order (measured
    1.0 on Gaussian data). Three model calls per step.

    Parity with a transcription of ComfyUI's ``sample_heunpp2`` on the same inputs and noise:
    4e-16 relative (float64, ``tests/test_new_methods.py``).
    """

    name = "heunpp2"
    order = 1
    nfe_per_step = 3
    paper = "Heun++: Carzit, sd-webui-samplers-scheduler (MIT), as ComfyUI's sample_heunpp2; Karras et al. 2022 (churn)"

    def coefficients(self, sigmas, i):
        coeffs = super().coefficients(sigmas, i)
        n_steps, sigma_first = len(sigmas) - 1, sigmas[0]
        stages = min(3, n_steps - i)
        dt = sigmas[i + 1] - coeffs["sigma_hat"]
        if stages == 3:
            w2, w3 = sigmas[i + 1] / (3 * sigma_first), sigmas[i + 2] / (3 * sigma_first)
            weights = [1 - w2 - w3, w2, w3]
            coeffs.update(sigma_third=sigmas[i + 2], dt_second=sigmas[i + 2] - sigmas[i + 1])
        elif stages == 2:
            w2 = sigmas[i + 1] / (2 * sigma_first)
            weights = [1 - w2, w2]
        else:
            weights = [1.0]
        coeffs.update(stages=stages, derivative_weights=[dt * w for w in weights])
        return coeffs

    def step(self, ctx, x, step):
        x = self.churn(ctx, x, step)
        denoised = ctx.denoise(x, step.sigma_hat)
        x_euler = torch.lerp(x, denoised, step.euler_weight)  # x' = x̂ + Δσ d̂
        if step.stages == 1:
            return x_euler
        derivatives = [(x - denoised) / step.sigma_hat]
        derivatives.append((x_euler - ctx.denoise(x_euler, step.sigma_next)) / step.sigma_next)
        if step.stages == 3:
            x_ahead = torch.add(x_euler, derivatives[1], alpha=step.dt_second)
            derivatives.append((x_ahead - ctx.denoise(x_ahead, step.sigma_third)) / step.sigma_third)
        for derivative, weight in zip(derivatives, step.derivative_weights):
            x = torch.add(x, derivative, alpha=weight)
        return x
