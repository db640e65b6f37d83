"""RES multistep: the second-order exponential Adams–Bashforth method of Zhang et al. 2023,
deterministic and ancestral (ComfyUI's ``res_multistep`` / ``res_multistep_ancestral``)."""

from __future__ import annotations

import math

from .base import Solver, register
from .common import Stochastic, ancestral_step, degenerate_ratio, linear_combination, phi

__all__ = ["RESMultistep", "RESMultistepAncestral"]


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

    #: The ancestral variant's stochasticity; 0 here (deterministic).
    eta = 0.0
    s_noise = 1.0

    def __init__(self):
        self.reset()

    def reset(self):
        self.previous = None

    def coefficients(self, sigmas, i):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, self.eta)
        noise_std = self.s_noise * sigma_up if sigma_next > 0 and self.draws_noise else 0.0
        # The previous model point, relative to this step: it was taken at σ_{i−1}, and that
        # step's deterministic part ended at its σ_down (= σ_i when eta = 0).
        previous_down = ancestral_step(sigmas[i - 1], sigma, self.eta)[0] if i > 0 else 0.0
        h = math.log(sigma / sigma_down) if sigma_down > 0.0 else math.inf
        h_previous = math.log(sigmas[i - 1] / previous_down) if previous_down > 0.0 else math.inf
        # Euler also after a degenerate step ratio (a near-repeated σ), where the divided
        # difference of D divides round-off by the tiny step
        if sigma_down == 0.0 or previous_down == 0.0 or degenerate_ratio(h_previous, h):
            # Euler (DDIM) to σ_down: x ← D + (σ_down/σ)(x − D)
            ratio = sigma_down / sigma
            return dict(weights=[1.0 - ratio, 0.0], x_weight=ratio, euler_step=True, noise_std=noise_std)
        c = math.log(previous_down / sigmas[i - 1]) / h  # (λ_{i−1} − λ(σ_down,prev)) / h
        phi1, phi2 = phi(1, -h), phi(2, -h)
        return dict(
            weights=[h * (phi1 - phi2 / c), h * phi2 / c],
            x_weight=math.exp(-h),
            euler_step=False,
            noise_std=noise_std,
        )

    def step(self, ctx, x, step):
        denoised = ctx.denoise(x, step.sigma)
        tensors = [denoised, self.previous]
        self.previous = denoised
        x = linear_combination(x, step.x_weight, tensors, step.weights)
        if step.noise_std > 0:
            x = ctx.add_noise(x, step.noise_std, step.sigma, step.sigma_next)
        return x


@register
class RESMultistepAncestral(RESMultistep, Stochastic):
    """RES multistep with ancestral noise (ComfyUI's ``res_multistep_ancestral``): each step
    is the RES step of :class:`RESMultistep` to ``σ_down`` followed by fresh noise,

        x_next = e^{−h} x + h [b_1 D_i + b_2 D_{i−1}] + S_noise σ_up z,  h = λ(σ_down) − λ(σ_i),

    with ``σ_down, σ_up`` of :func:`~ksampling.samplers.common.ancestral_step` and
    ``c = (λ_{i−1} − λ(σ_down,i−1))/h``: the previous model point sits where the previous
    step's deterministic part started, relative to where it ended. ``eta = 0`` is
    ``res_multistep`` (measured order 2.05 at ``eta = 0``).

    Parity with a transcription of ComfyUI's ``sample_res_multistep_ancestral`` on the same inputs and noise:
    4e-16 relative (float64, ``tests/test_new_methods.py``).
    """

    name = "res_multistep_ancestral"
    kind = "sde"
    paper = RESMultistep.paper + "; ancestral noise as k-diffusion's ancestral samplers"

    def __init__(self, eta: float = 1.0, s_noise: float = 1.0):
        Stochastic.__init__(self, eta=eta, s_noise=s_noise)
        self.reset()
