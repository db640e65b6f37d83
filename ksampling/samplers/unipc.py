"""UniPC: the unified predictor-corrector of Zhao et al. 2023, with data prediction."""

from __future__ import annotations

import math

import numpy as np

from .base import register
from .common import Multistep, linear_combination, log_sigma_step, phi, step_order
from .validation import check_bool, check_choice, check_int, check_threshold

__all__ = ["UniPC", "unipc_weights"]


def unipc_weights(lambdas: list[float], order: int, variant: str, corrector: bool) -> tuple[float, list[float]]:
    """Host-side weights of one UniP (predictor) or UniC (corrector) update.

    ``lambdas = [λ_next, λ_0, λ_{−1}, …, λ_{−(order−1)}]`` (λ = −log σ): the step goes from the
    newest model point λ_0 to λ_next, with ``order − 1`` older points of history. With
    ``h = λ_next − λ_0``, ``r_k = (λ_{−k} − λ_0)/h`` and ``D1_k = (D_{−k} − D_0)/r_k``
    (Zhao et al. 2023, Algorithms 2–3, data prediction)::

        x_next = (σ_next/σ_0) x_0 − (e^{−h} − 1) D_0 − B(h) Σ_k ρ_k D1_k
                 [corrector: − B(h) ρ_order (D_next − D_0)]

    B(h) = −h ("bh1") or e^{−h} − 1 ("bh2"); the ρ solve ``R ρ = b`` with
    ``R[i, k] = r_k^i`` (r = 1 for the corrector's new point) and
    ``b_i = (−h) φ_{i+2}(−h) (i+1)! / B(h)``. The order-2 predictor uses ρ = 1/2 and the
    order-1 corrector ρ = 1/2, as the paper (any B(h) = O(h) is then consistent).

    Returns ``(weight of x_0, [weights of D_next (corrector only), D_0, D_{−1}, …])``.
    """
    lam_next, lam0, *older = lambdas
    h = lam_next - lam0
    hh = -h
    rks = [(lam - lam0) / h for lam in older]
    b_of_h = hh if variant == "bh1" else math.expm1(hh)
    h_phi_1 = math.expm1(hh)
    # b_i = hh φ_{i+1}(hh) i! / B(h), i = 1..order
    b = [hh * phi(i + 1, hh) * math.factorial(i) / b_of_h for i in range(1, order + 1)]
    nodes = rks + [1.0]
    R = np.array([[r**i for r in nodes] for i in range(order)], dtype=np.float64)

    if corrector:
        rhos = [0.5] if order == 1 else list(np.linalg.solve(R, np.array(b)))
        rho_hist, rho_new = rhos[:-1], rhos[-1]
    else:
        if order == 1:
            rho_hist = []
        elif order == 2:
            rho_hist = [0.5]
        else:
            rho_hist = list(np.linalg.solve(R[:-1, :-1], np.array(b[:-1])))
        rho_new = 0.0

    x_weight = math.exp(-h)  # σ_next / σ_0
    w_new = -b_of_h * rho_new
    w0 = -h_phi_1 + b_of_h * (sum(rho / r for rho, r in zip(rho_hist, rks)) + rho_new)
    w_old = [-b_of_h * rho / r for rho, r in zip(rho_hist, rks)]
    return x_weight, [float(w_new), float(w0)] + [float(w) for w in w_old]


@register
class UniPC(Multistep):
    """UniPC (Zhao et al. 2023): the multistep UniP-p predictor, each point then refined by the
    UniC corrector using the model output already computed there (no extra model call),
    in data prediction (x0) form; see :func:`unipc_weights` for the update equations.

    Step i: ``D_i = D(x_i; σ_i)``; correct ``x_i`` with UniC (order of the previous
    predictor) using ``D_i``; then predict ``x_{i+1}`` from the corrected ``x_i`` with UniP
    (order ``min(order, i + 1)``). The history keeps D at the uncorrected points, as the
    paper and diffusers' ``UniPCMultistepScheduler``. With the corrector, UniPC-p converges
    with order p + 1.

    Options:

    * ``order`` (2): predictor order p, 1–3 (diffusers' default 2; order 3 suits
      unconditional sampling).
    * ``variant`` ("bh2"): B(h) = e^{−h} − 1 ("bh2", better with guidance) or −h ("bh1").
    * ``use_corrector`` (True): False gives the plain UniP predictor (order p).
    * ``final_corrector`` (False): the last point gets no correction (as the paper and
      diffusers: it would need one more model call); True spends that call.
    * ``lower_order_final`` (True), ``lower_order_final_below`` (math.inf): on grids with
      fewer steps than the threshold the last steps lower their order (last step first
      order); diffusers' UniPC does this on every grid, hence the infinite default.

    A step to σ = 0 is the first-order limit ``x ← D(x; σ)`` (h = ∞).
    """

    name = "unipc"
    order = 3
    nfe_per_step = 1
    paper = "Zhao et al. 2023, UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion Models"

    def __init__(
        self,
        order: int = 2,
        variant: str = "bh2",
        use_corrector: bool = True,
        final_corrector: bool = False,
        lower_order_final: bool = True,
        lower_order_final_below: float = math.inf,
    ):
        self.solver_order = check_int("order", order, 1, 3)
        self.variant = check_choice("variant", variant, ("bh1", "bh2"))
        self.use_corrector = check_bool("use_corrector", use_corrector)
        self.final_corrector = check_bool("final_corrector", final_corrector)
        self.lower_order_final = check_bool("lower_order_final", lower_order_final)
        self.lower_order_final_below = check_threshold("lower_order_final_below", lower_order_final_below)
        self.reset()

    def reset(self):
        super().reset()  # D at the latest points, newest first
        self.x_prev = None  # the corrected x the last predictor started from

    def _order(self, sigmas, i):
        if sigmas[i + 1] == 0.0:  # h = ∞: only the first-order limit x <- D exists
            return 1
        return step_order(
            i, len(sigmas) - 1, self.solver_order, self.lower_order_final, self.lower_order_final_below,
            step_size=lambda j: log_sigma_step(sigmas[j], sigmas[j + 1]),
        )

    def coefficients(self, sigmas, i):
        def lambdas(indices):
            return [-math.log(sigmas[j]) for j in indices]

        coef = dict(step_order=self._order(sigmas, i), correct=self.use_corrector and i > 0)
        if coef["correct"]:
            # correct x_i with the model output at x_i: the step i−1 -> i, its order, its history
            q = self._order(sigmas, i - 1)
            x_w, weights = unipc_weights(lambdas([i] + list(range(i - 1, i - 1 - q, -1))), q, self.variant, True)
            coef.update(corr_x=x_w, corr_w=weights)
        if sigmas[i + 1] == 0.0:
            return coef
        p = coef["step_order"]
        points = lambdas([i + 1] + list(range(i, i - p, -1)))
        x_w, weights = unipc_weights(points, p, self.variant, False)
        coef.update(pred_x=x_w, pred_w=weights[1:])
        coef["final_correct"] = self.use_corrector and self.final_corrector and i == len(sigmas) - 2
        if coef["final_correct"]:
            x_w, weights = unipc_weights(points, p, self.variant, True)
            coef.update(final_x=x_w, final_w=weights)
        return coef

    def step(self, ctx, x, step):
        denoised = ctx.denoise(x, step.sigma)
        if step.correct:
            x = linear_combination(self.x_prev, step.corr_x, [denoised] + self.history, step.corr_w)
        self.remember(denoised, self.solver_order)
        self.x_prev = x
        if step.to_zero:
            return denoised
        x_next = linear_combination(x, step.pred_x, self.history, step.pred_w)
        if step.final_correct:
            denoised_next = ctx.denoise(x_next, step.sigma_next)
            x_next = linear_combination(x, step.final_x, [denoised_next] + self.history, step.final_w)
        return x_next
