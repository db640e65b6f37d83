"""Adams–Bashforth multistep solvers on dx/dσ = d = (x − D(x; σ))/σ: iPNDM and its
variable-step form."""

from __future__ import annotations

from .base import Solver, check_int, check_nonnegative, register
from .common import MIN_STEP_RATIO_SIGMA, linear_combination, step_order

__all__ = ["IPNDM", "IPNDMVariable", "GradientEstimation", "ADAMS_BASHFORTH", "ipndm_v_weights"]

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


def ipndm_v_weights(steps: list[float]) -> list[float]:
    """The published variable-step iPNDM weights ``c_j`` of ``d_i, d_{i−1}, …`` (zju-pi
    diff-sampler's ``ipndm_v``, which ComfyUI ports), from ``steps = [h_0, h_1, …]`` with
    ``h_0 = σ_next − σ_i`` and ``h_k = σ_{i−k+1} − σ_{i−k}``; ``x_next = x + h_0 Σ_j c_j d_{i−j}``.

    With ``r = h_0/h_1``: order 2 is the exact variable-step Adams–Bashforth rule
    ``(1 + r/2, −r/2)``; orders 3 and 4 add (step-ratio weighted) second and third backward
    differences of d with the weights t_1 and t_2 below. On equal steps t_1 = 5/12, AB3's,
    but t_2 = 11/24 where AB4 has 3/8::

        t_1 = (1 − h_0² / (3 h_1 (h_1 + h_2))) / 2,
        t_2 = [(1 − h_0/(3(h_0 + h_1)))/2 + (1 − h_0/(2(h_0 + h_1))) h_0/(6(h_0 + h_1 + h_2))]
              · h_0 (h_0 + h_1)(h_0 + h_1 + h_2) / (h_1 (h_1 + h_2)(h_1 + h_2 + h_3)).
    """
    order = len(steps)
    if order == 1:
        return [1.0]
    h0, h1 = steps[0], steps[1]
    ratio = h0 / h1
    weights = [1 + ratio / 2, -ratio / 2]
    if order == 2:
        return weights
    h2 = steps[2]
    t1 = (1 - h0 * h0 / (3 * h1 * (h1 + h2))) / 2
    # t1 times the second backward difference d_i − (1 + h1/h2) d_{i−1} + (h1/h2) d_{i−2}
    weights = [weights[0] + t1, weights[1] - (1 + h1 / h2) * t1, t1 * h1 / h2]
    if order == 3:
        return weights
    h3 = steps[3]
    t2 = ((1 - h0 / (3 * (h0 + h1))) / 2 + (1 - h0 / (2 * (h0 + h1))) * h0 / (6 * (h0 + h1 + h2))) * (
        h0 * (h0 + h1) * (h0 + h1 + h2) / (h1 * (h1 + h2) * (h1 + h2 + h3))
    )
    q = h1 * (h1 + h2) / (h2 * (h2 + h3))
    # t2 times the third backward difference
    third = [1.0, -(1 + h1 / h2 + q), h1 / h2 + q * (1 + h2 / h3), -q * h1 / h2]
    return [w + t2 * c for w, c in zip(weights + [0.0], third)]


@register
class IPNDMVariable(_AdamsBase):
    """Variable-step iPNDM (Zhang & Chen 2023; the variable-step form of zju-pi's
    diff-sampler, ComfyUI's ``ipndm_v``): Adams–Bashforth on d = (x − D)/σ,

        ``x_next = x + (σ_next − σ) Σ_j c_j d_{i−j}``,

    of order ``min(max_order, i + 1)`` with the published weights of
    :func:`ipndm_v_weights`. The step to σ = 0 is ``x ← D``. Orders 2 and 3 are the
    variable-step Adams–Bashforth rule to second order (exact for order 2, and for order 3
    on equal steps); the published fourth-order term weighs the third backward difference
    with 11/24 where Adams–Bashforth has 3/8, and on unequal steps its difference does not
    annihilate quadratics. So the default (``max_order = 4``, ComfyUI's) converges with
    order 2 on a Karras grid, and only beyond ~1000 steps from σ = 80 to 1e-3 (1.72, 1.87,
    1.93, 1.97 between N = 256 … 4096); ``max_order = 3`` converges with order 3 (2.64 over
    N = 64 … 256, 2.97 over 1024 … 4096).
    ``lms`` is the exact variable-step Adams–Bashforth method.

    Parity with a transcription of ComfyUI's ``sample_ipndm_v`` on the same inputs and noise:
    3e-16 relative (float64, ``tests/test_new_methods.py``).
    """

    name = "ipndm_v"
    order = 2
    paper = "Zhang & Chen 2023 (iPNDM); zju-pi diff-sampler ipndm_v (Zhou et al. 2024, AMED-Solver code)"

    def coefficients(self, sigmas, i):
        dt = sigmas[i + 1] - sigmas[i]
        # the history stops at a degenerate step ratio (a near-repeated σ), as in lms
        p = 1 if sigmas[i + 1] == 0.0 else step_order(
            i, len(sigmas) - 1, self.max_order, step_size=lambda j: sigmas[j] - sigmas[j + 1], min_ratio=MIN_STEP_RATIO_SIGMA
        )
        steps = [dt] + [sigmas[i - k] - sigmas[i - k - 1] for k in range(p - 1)]
        return dict(weights=[dt * w for w in ipndm_v_weights(steps)])


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
