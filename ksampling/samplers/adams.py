"""Adams–Bashforth multistep solvers on dx/dσ = d = (x − D(x; σ))/σ: iPNDM and its
variable-step form."""

from __future__ import annotations

from .base import Solver, check_int, check_nonnegative, register
from .dpm_solver import lagrange_exp_weights, linear_combination

__all__ = ["IPNDM", "IPNDMVariable", "GradientEstimation", "ADAMS_BASHFORTH"]

#: Fixed-step Adams–Bashforth weights of orders 1–4, newest derivative first.
ADAMS_BASHFORTH = (
    (1.0,),
    (3 / 2, -1 / 2),
    (23 / 12, -16 / 12, 5 / 12),
    (55 / 24, -59 / 24, 37 / 24, -9 / 24),
)


class _AdamsBase(Solver):
    order = 4
    nfe_per_step = 1
    multistep = True

    def __init__(self, max_order: int = 4):
        self.max_order = check_int("max_order", max_order, 1, 4)
        self.reset()

    def reset(self):
        self.history: list = []  # d at the latest points, newest first

    def step(self, ctx, x, step):
        d = (x - ctx.denoise(x, step.sigma)) / step.sigma
        self.history = ([d] + self.history)[: self.max_order]
        return linear_combination(x, 1.0, self.history, step.weights)


@register
class IPNDM(_AdamsBase):
    """iPNDM (Zhang & Chen 2023, App. "improved PNDM"): Adams–Bashforth with the fixed
    (equal-step) weights of order ``min(max_order, i + 1)`` on d = (x − D)/σ:

        ``x_next = x + (σ_next − σ) Σ_j b_j d_{i−j}``, b = (1), (3, −1)/2, (23, −16, 5)/12,
        (55, −59, 37, −9)/24,

    warming up with the lower orders instead of PNDM's Runge–Kutta start. On a grid of
    unequal steps the fixed weights are exact only to second order: the method converges
    with order 2 on Karras/exponential grids (order ``max_order`` on a uniform grid in σ),
    hence ``order = 2`` in its metadata. ``max_order`` (4) as ComfyUI's ``ipndm``; the step
    to σ = 0 is an Euler step (``x ← D``), as there.
    """

    name = "ipndm"
    order = 2
    paper = "Zhang & Chen 2023, Fast Sampling of Diffusion Models with Exponential Integrator (iPNDM)"

    def coefficients(self, sigmas, i):
        # the step to σ = 0 is an Euler step, x <- D, as ComfyUI's ipndm
        p = 1 if sigmas[i + 1] == 0.0 else min(self.max_order, i + 1)
        dt = sigmas[i + 1] - sigmas[i]
        return dict(weights=[dt * b for b in ADAMS_BASHFORTH[p - 1]])


@register
class IPNDMVariable(_AdamsBase):
    """Variable-step iPNDM (ComfyUI's ``ipndm_v``): the Adams–Bashforth method of order
    ``min(max_order, i + 1)`` for the actual, unequal steps,

        ``x_next = x + ∫_σ^{σ_next} P(s) ds``,

    P the polynomial through the last points (σ_j, d_j); its weights are the exact integrals
    of the Lagrange basis (k-diffusion's ``lms`` computes the same integrals by quadrature).
    Order ``max_order`` (4) on any smooth grid; integrates to σ = 0 without a special case.
    """

    name = "ipndm_v"
    order = 4
    paper = "Zhang & Chen 2023 (iPNDM), variable-step Adams–Bashforth"

    def coefficients(self, sigmas, i):
        p = min(self.max_order, i + 1)
        sigma, dt = sigmas[i], sigmas[i + 1] - sigmas[i]
        nodes = [(s - sigma) / dt for s in sigmas[i::-1][:p]]
        return dict(weights=[dt * w for w in lagrange_exp_weights(nodes, 0.0)])


@register
class GradientEstimation(Solver):
    """Gradient estimation (Permenter & Yvinec 2024, "Interpreting and Improving Diffusion
    Models from an Optimization Perspective", Algorithm 2), ComfyUI's ``gradient_estimation``:
    the denoising direction is extrapolated from the last two steps,

        ``d̄_i = γ d_i + (1 − γ) d_{i−1}``,  ``x_next = x + (σ_next − σ) d̄_i``,

    with d = (x − D)/σ and the first step an Euler step. For γ = 1 it is Euler. It is a
    consistent first-order method for any γ (second order would need γ = 1 + Δσ_i/(2Δσ_{i−1})
    ≈ 3/2); γ = 2 (``ge_gamma``, the paper's default) over-extrapolates on purpose to correct
    the denoiser's error, which helps at few steps.
    """

    name = "gradient_estimation"
    order = 1
    nfe_per_step = 1
    multistep = True
    paper = "Permenter & Yvinec 2024, Interpreting and Improving Diffusion Models from an Optimization Perspective (ICML)"

    def __init__(self, ge_gamma: float = 2.0):
        self.ge_gamma = check_nonnegative("ge_gamma", ge_gamma)
        self.reset()

    def reset(self):
        self.previous = None  # d of the previous step

    def coefficients(self, sigmas, i):
        dt = sigmas[i + 1] - sigmas[i]
        if i == 0:
            return dict(weights=[dt, 0.0])
        return dict(weights=[dt * self.ge_gamma, dt * (1.0 - self.ge_gamma)])

    def step(self, ctx, x, step):
        d = (x - ctx.denoise(x, step.sigma)) / step.sigma
        tensors = [d, self.previous]
        self.previous = d
        return linear_combination(x, 1.0, tensors, step.weights)
