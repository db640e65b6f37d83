"""RES multistep: the second-order exponential Adams–Bashforth method of Zhang et al. 2023."""

from __future__ import annotations

import math

from .base import Solver, register
from .dpm_solver import linear_combination, phi

__all__ = ["RESMultistep"]


@register
class RESMultistep(Solver):
    """Second-order exponential multistep method (Zhang, Song & Chen 2023,
    "Improved Order Analysis and Design of Exponential Integrator for Diffusion Models
    Sampling" (RES), the multistep scheme of their §4), as ComfyUI's ``res_multistep``:

    with ``h = λ_next − λ`` and ``c = (λ_{i−1} − λ_i)/h < 0`` the position of the previous
    model point, D is interpolated linearly through (0, D_i) and (c, D_{i−1}) and the
    exponential integral is exact::

        x_next = e^{−h} x + h [(φ_1(−h) − φ_2(−h)/c) D_i + (φ_2(−h)/c) D_{i−1}]

    (the "order conditions" of RES give exactly these b_1, b_2). The first step is Euler
    (DDIM); a step to σ = 0 is ``x ← D(x; σ)``.
    """

    name = "res_multistep"
    order = 2
    nfe_per_step = 1
    multistep = True
    paper = "Zhang, Song & Chen 2023, Improved Order Analysis and Design of Exponential Integrator for Diffusion Models Sampling"

    def __init__(self):
        self.reset()

    def reset(self):
        self.previous = None

    def coefficients(self, sigmas, i):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        if sigma_next == 0.0:
            return dict(weights=[1.0, 0.0], x_weight=0.0)
        h = math.log(sigma / sigma_next)
        phi1, phi2 = phi(1, -h), phi(2, -h)
        if i == 0:
            return dict(weights=[h * phi1, 0.0], x_weight=math.exp(-h))
        c = math.log(sigma / sigmas[i - 1]) / h
        return dict(weights=[h * (phi1 - phi2 / c), h * phi2 / c], x_weight=math.exp(-h))

    def step(self, ctx, x, step):
        denoised = ctx.denoise(x, step.sigma)
        tensors = [denoised, self.previous]
        self.previous = denoised
        return linear_combination(x, step.x_weight, tensors, step.weights)
