"""Linear multistep (Adams–Bashforth on a variable grid), k-diffusion's ``sample_lms``.

The probability-flow ODE dx/dσ = d(x, σ) = (x − D(x; σ))/σ is integrated with the
Adams–Bashforth idea on the sigma grid itself (Karras et al. 2022 use k-diffusion's LMS as a
baseline; the method is the textbook variable-step Adams–Bashforth, Hairer, Nørsett & Wanner,
*Solving ODEs I*, §III.5): interpolate the last ``p`` derivatives d_i, d_{i−1}, … at
σ_i, σ_{i−1}, … by a polynomial and integrate it exactly over the step,

    x_{i+1} = x_i + Σ_{j<p} c_{ij} d_{i−j},   c_{ij} = ∫_{σ_i}^{σ_{i+1}} ℓ_j(τ) dτ,

where ``ℓ_j`` is the Lagrange basis polynomial that is 1 at σ_{i−j} and 0 at the other nodes;
``p = min(i + 1, order)``. k-diffusion integrates ``ℓ_j`` with ``scipy.integrate.quad`` in every
step; here the polynomial is integrated in closed form, on the host in plain Python floats, once
per run, in a scaled variable u = (τ − σ_i)/(σ_{i+1} − σ_i) where the nodes are O(1) numbers.

Since d_{i−j} = (x − D)_{i−j} / σ_{i−j}, the solver keeps the residuals ``x − D`` and folds
``1/σ_{i−j}`` into the host-side weights: ``x_{i+1} = x_i + Σ_j (c_{ij}/σ_{i−j}) (x − D)_{i−j}``,
one ``torch.add(..., alpha=)`` per history term (:func:`~ksampling.samplers.common.linear_combination`).
"""

from __future__ import annotations

from types import SimpleNamespace

from .base import register
from .common import MIN_STEP_RATIO_SIGMA, STARTS, Multistep, linear_combination, step_order, takes_singlestep_start
from .runge_kutta import RK4, runge_kutta_coefficients, runge_kutta_update
from .validation import check_choice, check_int

__all__ = ["lms_coefficients"]


def lms_coefficients(sigmas, i: int, order: int) -> list[float]:
    """``[c_{i0}, …, c_{i,p−1}]``: the weights of d_i, d_{i−1}, … in step ``i`` (see module)."""
    p = min(i + 1, order)
    step = sigmas[i + 1] - sigmas[i]
    nodes = [(sigmas[i - k] - sigmas[i]) / step for k in range(p)]  # u of σ_i, σ_{i−1}, …
    coeffs = []
    for j in range(p):
        # ℓ_j(u) = Π_{k≠j} (u − u_k)/(u_j − u_k): expand the product into powers of u, then
        # ∫_0^1 Σ_m a_m u^m du = Σ_m a_m/(m + 1)
        powers = [1.0]  # a_0, a_1, … of Π (u − u_k)
        denominator = 1.0
        for k in range(p):
            if k == j:
                continue
            times_factor = [0.0] * (len(powers) + 1)  # (Σ a_m u^m)(u − u_k)
            for m, a in enumerate(powers):
                times_factor[m + 1] += a
                times_factor[m] -= nodes[k] * a
            powers = times_factor
            denominator *= nodes[j] - nodes[k]
        integral = sum(a / (m + 1) for m, a in enumerate(powers)) / denominator
        coeffs.append(step * integral)
    return coeffs


@register
class LMS(Multistep):
    """Linear multistep of order ``order`` (default 4) on dx/dσ = (x − D(x; σ))/σ. One model
    call per step.

    ``start`` ("lower_order"): lower orders while the history fills up, as k-diffusion; the
    first-order first step leaves an O(h²) error, so the method converges with order 2 as
    N → ∞ (``order``; the fourth order shows over N ≲ 256 on Karras grids, where the first
    steps are nearly linear in σ). ``"singlestep"`` takes the first ``min(order, 4) − 1``
    steps with the classical fourth-order Runge–Kutta method (4 model calls each) and keeps
    the order up to 4 (``order_with_start``).
    """

    name = "lms"
    order = 2
    order_with_start = 4
    nfe_per_step = 1
    paper = "Adams–Bashforth on the sigma grid (Hairer, Nørsett & Wanner, §III.5); k-diffusion sample_lms"

    def __init__(self, order: int = 4, start: str = "lower_order"):
        self.lms_order = check_int("order", order, 1)
        self.start = check_choice("start", start, STARTS)

    def coefficients(self, sigmas, i):
        # the history stops at a degenerate step ratio (common.step_order): the Lagrange weights
        # of two nearly coincident nodes are huge and of opposite sign
        order = step_order(
            i, len(sigmas) - 1, self.lms_order, step_size=lambda j: sigmas[j] - sigmas[j + 1], min_ratio=MIN_STEP_RATIO_SIGMA
        )
        weights = lms_coefficients(sigmas, i, order)
        start = None
        if takes_singlestep_start(self.start, i, min(self.lms_order, 4), sigmas[i + 1]):
            start = SimpleNamespace(**runge_kutta_coefficients(sigmas[i], sigmas[i + 1], *RK4))
        # the weight of the residual (x − D)_{i−j} is c_{ij}/σ_{i−j}
        return dict(residual_weights=[c / sigmas[i - j] for j, c in enumerate(weights)], start=start)

    def step(self, ctx, x, step):
        # the history holds the residuals x − D = σ d, newest first
        residuals = self.remember(x - ctx.denoise(x, step.sigma), self.lms_order)
        if step.start is not None:  # RK4 while the history fills up
            c = step.start
            slope = lambda u, sigma: (u - ctx.denoise(u, sigma)) / sigma  # noqa: E731  d(u, σ)
            return runge_kutta_update(slope, x, residuals[0] / step.sigma, c.stage_sigmas, c.stage_weights, c.weights)
        # x_{i+1} = x_i + Σ_j c_{ij} d_{i−j},  d_{i−j} = (x − D)_{i−j}/σ_{i−j}
        return linear_combination(x, 1.0, residuals, step.residual_weights)
