"""DPM-Solver (singlestep, noise or data prediction) and DPM-Solver++(3M), plus the host-side
exponential-integrator helpers shared by the other high-order solvers.

In the VE state space ``x = x0 + σ n`` with ``λ = −log σ`` and ``h = λ_next − λ`` the
probability-flow ODE has the exact solutions (Lu et al. 2022, eq. 3.4; 2022b, eq. 9)

* data prediction (DPM-Solver++):  ``x_next = e^{−h} x + h ∫_0^1 e^{−h(1−θ)} D(λ + θh) dθ``
* noise prediction (DPM-Solver):   ``x_next = x − σ_next h ∫_0^1 e^{h(1−θ)} ε(λ + θh) dθ``,
  ``ε = (x − D) / σ``.

Expanding D (or ε) in a Taylor series in θ turns the integrals into φ-functions,
``∫_0^1 e^{z(1−θ)} θ^k / k! dθ = φ_{k+1}(z)``, which :func:`phi` evaluates in float64
without cancellation. The step to σ = 0 has h = ∞; every solver here takes it explicitly as
the limit of its first-order rule, ``x ← D(x; σ)``.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

from .base import Solver, register
from .common import STARTS, Multistep, log_sigma_step, phi, step_order, takes_singlestep_start
from .validation import check_bool, check_choice, check_fraction, check_int, check_threshold

__all__ = ["DPMSolver", "DPMSolverPP3M", "singlestep_coefficients", "singlestep_update"]


# -- singlestep DPM-Solver ----------------------------------------------------------------
def _transfer(sigma: float, sigma_to: float, algorithm: str) -> tuple[float, float, float]:
    """(A, B, z) such that ``x_to = A x + B Σ_k φ_{k+1}(z) h^k P^(k)`` for the prediction P
    (``D`` for "data", ``ε`` for "noise") expanded at σ; h = log(σ/σ_to)."""
    h = math.log(sigma / sigma_to)
    if algorithm == "data":
        return sigma_to / sigma, h, -h
    return 1.0, -sigma_to * h, h


def default_r1(order: int) -> float:
    """The papers' first intermediate point: r1 = 1/2 for order 2, 1/3 for order 3."""
    return 0.5 if order == 2 else 1.0 / 3.0


def singlestep_coefficients(
    sigma: float, sigma_next: float, order: int, algorithm: str, r1: float | None = None, r2: float = 2 / 3
) -> dict:
    """Host-side scalars of one singlestep DPM-Solver step σ → σ_next > 0 (see
    :class:`DPMSolver`): ``a, b1, b2`` of the full step and, for the intermediate points
    σ_r = σ e^{−r h}, ``sigma_r1, a_r1, b1_r1`` and ``sigma_r2, a_r2, b1_r2, b2_r2``."""
    r1 = default_r1(order) if r1 is None else r1
    h = log_sigma_step(sigma, sigma_next)
    a, b, z = _transfer(sigma, sigma_next, algorithm)
    coef = dict(a=a, b1=b * phi(1, z), b2=b * phi(2, z))
    if order >= 2:
        sigma_r1 = sigma * math.exp(-r1 * h)
        a1, bb1, z1 = _transfer(sigma, sigma_r1, algorithm)
        coef.update(sigma_r1=sigma_r1, a_r1=a1, b1_r1=bb1 * phi(1, z1))
    if order == 3:
        sigma_r2 = sigma * math.exp(-r2 * h)
        a2, bb2, z2 = _transfer(sigma, sigma_r2, algorithm)
        coef.update(sigma_r2=sigma_r2, a_r2=a2, b1_r2=bb2 * phi(1, z2), b2_r2=bb2 * phi(2, z2))
    return coef


def singlestep_update(predict, x, p_0, c, order: int, r1: float | None = None, r2: float = 2 / 3):
    """One singlestep DPM-Solver step with the scalars ``c`` of :func:`singlestep_coefficients`
    (read as attributes), from ``p_0 = P(x; σ)``; ``predict(u, sigma)`` is the prediction P
    (D or ε) at a later stage:

        order 1: x_next = A x + B φ_1 P_0
        order 2: u_1 = A_{r1} x + B_{r1} φ_1 P_0,  x_next = A x + B φ_1 P_0 + B φ_1 (P(u_1) − P_0)/(2 r1)
        order 3: u_2 = A_{r2} x + B_{r2} [φ_1 P_0 + φ_2 (r2/r1) (P(u_1) − P_0)],
                 x_next = A x + B [φ_1 P_0 + φ_2 (P(u_2) − P_0)/r2]
    """
    if order == 1:
        return x * c.a + p_0 * c.b1
    r1 = default_r1(order) if r1 is None else r1
    u_1 = x * c.a_r1 + p_0 * c.b1_r1
    p_1 = predict(u_1, c.sigma_r1)
    if order == 2:
        return x * c.a + p_0 * c.b1 + (p_1 - p_0) * (c.b1 / (2 * r1))
    u_2 = x * c.a_r2 + p_0 * c.b1_r2 + (p_1 - p_0) * (c.b2_r2 * r2 / r1)
    p_2 = predict(u_2, c.sigma_r2)
    return x * c.a + p_0 * c.b1 + (p_2 - p_0) * (c.b2 / r2)


@register
class DPMSolver(Solver):
    """Singlestep DPM-Solver of order 1, 2 or 3 (Lu et al. 2022, Algorithms 1–2), with data
    prediction (DPM-Solver++, Lu et al. 2022b, Algorithm 1) or noise prediction.

    With P the prediction (``D`` or ``ε = (x − D)/σ``), ``(A, B, z) = (e^{−h}, h, −h)`` for
    data and ``(1, −σ_next h, h)`` for noise, intermediate points ``λ_s = λ + r h``:

    * order 1: ``x_next = A x + B φ_1(z) P_0`` (DDIM);
    * order 2: ``u = A_{r1} x + B_{r1} φ_1(z r1) P_0``,
      ``x_next = A x + B φ_1(z) P_0 + B φ_1(z) (P(u) − P_0) / (2 r1)``;
    * order 3: ``u_1`` as above at r1, ``u_2 = A_{r2} x + B_{r2} [φ_1 P_0 + φ_2 (r2/r1) (P(u_1) − P_0)]``
      (φ at ``z r2``), ``x_next = A x + B [φ_1(z) P_0 + φ_2(z) (P(u_2) − P_0) / r2]``.

    These are the papers' "DPM-Solver" forms (also k-diffusion's ``DPMSolver`` steps).
    Options:

    * ``order`` (3): 1, 2 or 3 model calls per step.
    * ``algorithm`` ("data"): "data" (DPM-Solver++; better with guidance) or "noise".
    * ``r1``, ``r2``: intermediate points as fractions of the step in λ; defaults from the
      papers: r1 = 1/2 for order 2, (r1, r2) = (1/3, 2/3) for order 3. Order 2 is second
      order for any r1; order 3 is third order for any r1 < 2/3 but only for r2 = 2/3 (the
      φ_2 term of the last update must stand in for ``φ_2 h P' + φ_3 h² P''``, i.e.
      r2/2 = 1/3; the official code's "taylor" form has the same condition, since the
      first-order error of u_1 must cancel). Other r2 raise a ValueError rather than
      silently give a second-order method (as k-diffusion's ``dpm_solver_3_step`` does).

    A step to σ = 0 (h = ∞) is the first-order limit ``x ← D(x; σ)`` (one model call).
    """

    name = "dpm_solver"
    order = 3
    nfe_per_step = 3
    paper = "Lu et al. 2022 (DPM-Solver, NeurIPS); Lu et al. 2022b (DPM-Solver++)"

    def __init__(self, order: int = 3, algorithm: str = "data", r1: float | None = None, r2: float | None = None):
        self.solver_order = check_int("order", order, 1, 3)
        self.algorithm = check_choice("algorithm", algorithm, ("data", "noise"))
        if r1 is None:
            r1 = default_r1(self.solver_order)
        if r2 is None:
            r2 = 2.0 / 3.0
        self.r1 = check_fraction("r1", r1)
        self.r2 = check_fraction("r2", r2)
        if self.solver_order == 3 and abs(self.r2 - 2.0 / 3.0) > 1e-12:
            raise ValueError(f"r2 must be 2/3 for order 3 (third order needs r2 = 2/3), got r2={self.r2}")
        if self.solver_order == 3 and not self.r1 < self.r2:
            raise ValueError(f"r1 must be smaller than r2 for order 3, got r1={self.r1}, r2={self.r2}")

    def coefficients(self, sigmas, i):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        if sigma_next == 0.0:
            return {}
        return singlestep_coefficients(sigma, sigma_next, self.solver_order, self.algorithm, self.r1, self.r2)

    def step(self, ctx, x, step):
        if step.to_zero:
            return ctx.denoise(x, step.sigma)

        def predict(u, sigma):
            denoised = ctx.denoise(u, sigma)
            return denoised if self.algorithm == "data" else (u - denoised) / sigma

        return singlestep_update(predict, x, predict(x, step.sigma), step, self.solver_order, self.r1, self.r2)


# -- multistep DPM-Solver++(3M) -----------------------------------------------------------
def dpmpp_step_ratios(sigmas, i: int, order_i: int, h: float) -> dict:
    """``r0 = h_{i−1}/h`` (order >= 2) and ``r1 = h_{i−2}/h`` (order 3) of step i, in λ."""
    ratios = {}
    if order_i >= 2:
        ratios["r0"] = log_sigma_step(sigmas[i - 1], sigmas[i]) / h
    if order_i >= 3:
        ratios["r1"] = log_sigma_step(sigmas[i - 2], sigmas[i - 1]) / h
    return ratios


def dpmpp_multistep_terms(x_next, history, step):
    """The history terms of DPM-Solver++(2M/3M) (Lu et al. 2022b, App. B), added to the
    first-order step ``x_next``; ``history = [D_i, D_{i−1}, D_{i−2}]``, and ``step`` carries
    ``step_order`` (2 or 3), ``r0 = h_{i−1}/h``, ``r1 = h_{i−2}/h``, ``b2``, ``b3``::

        D1_0 = (D_i − D_{i−1})/r0                   (≈ h D')
        order 2:  x_next + b2 D1_0
        order 3:  D1_1 = (D_{i−1} − D_{i−2})/r1,
                  D1 = D1_0 + r0 (D1_0 − D1_1)/(r0 + r1)   (≈ h D'),
                  D2 = (D1_0 − D1_1)/(r0 + r1)             (≈ h² D''/2),
                  x_next + b2 D1 + b3 D2
    """
    denoised, denoised_1 = history[0], history[1]
    d1_0 = (denoised - denoised_1) / step.r0
    if step.step_order == 2:
        return x_next + d1_0 * step.b2
    r0, r1 = step.r0, step.r1
    d1_1 = (denoised_1 - history[2]) / r1
    d1 = d1_0 + (d1_0 - d1_1) * (r0 / (r0 + r1))
    d2 = (d1_0 - d1_1) / (r0 + r1)
    return x_next + d1 * step.b2 + d2 * step.b3


@register
class DPMSolverPP3M(Multistep):
    """Multistep DPM-Solver++(3M), the ODE solver (Lu et al. 2022b, §4 and App. B):

    with ``r0 = h_{i−1}/h``, ``r1 = h_{i−2}/h`` and the divided differences
    ``d1_0 = (D_i − D_{i−1})/r0``, ``d1_1 = (D_{i−1} − D_{i−2})/r1``,
    ``d1 = d1_0 + r0 (d1_0 − d1_1)/(r0 + r1)``, ``d2 = (d1_0 − d1_1)/(r0 + r1)``::

        x_next = e^{−h} x + h φ_1(−h) D_i + h φ_2(−h) d1 + 2 h φ_3(−h) d2

    d1 ≈ h D' and d2 ≈ h² D''/2 (exact for the quadratic through the three points), so the
    Taylor term ``h³ φ_3(−h) D''`` is ``2 h φ_3(−h) d2``. The reference code (official
    DPM-Solver, diffusers, k-diffusion's ``dpmpp_3m_sde`` at eta = 0) multiplies d2 by
    ``−(φ_2/h − 1/2) = h φ_3(−h)``, half the Taylor coefficient, which leaves an O(h³) local
    error: measured, it converges with order 2, not 3. ``official_coefficients=True``
    reproduces the reference code (to round-off); the default ``False`` is third order.
    Warm-up: step 0 is first order (DDIM), step 1 second order, in the form ``solver_type``
    chooses: ``"heun"`` (default; ``+ h φ_2(−h) d1_0``, as k-diffusion's dpmpp_3m_sde and the
    official "taylor") or ``"midpoint"`` (``+ h φ_1(−h) d1_0 / 2``, diffusers' default).

    ``lower_order_final`` (True) with ``lower_order_final_below`` (``math.inf``): on grids with
    fewer steps than the threshold the last step is first order and the one before second
    order. diffusers uses 15 and the official DPM-Solver code 10; but on Karras/KL-optimal
    grids the last steps span large jumps in log σ where the third-order extrapolation is
    unstable at any step count (the benchmark measured an error of 1.0 · data std at 15 steps
    on KL-optimal with 15, 2.6e-3 with ∞), so by default the final steps are always lowered.
    A step to σ = 0 is ``x ← D(x; σ)``.

    ``start`` ("lower_order"): the warm-up above, whose first-order first step leaves an
    O(h²) error, so that the method converges with order 2 as N → ∞ (``order``; the third
    order shows over N ≲ 256 on Karras grids, where the first step is nearly linear);
    ``"singlestep"`` takes the first two steps with DPM-Solver-3 (data prediction, 3 model
    calls each) and keeps the third order (``order_with_start``).
    """

    name = "dpmpp_3m"
    order = 2
    order_with_start = 3
    nfe_per_step = 1
    paper = "Lu et al. 2022b, DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models"

    def __init__(
        self,
        lower_order_final: bool = True,
        lower_order_final_below: float = math.inf,
        solver_type: str = "heun",
        official_coefficients: bool = False,
        start: str = "lower_order",
    ):
        self.start = check_choice("start", start, STARTS)
        self.official_coefficients = check_bool("official_coefficients", official_coefficients)
        self.lower_order_final = check_bool("lower_order_final", lower_order_final)
        self.lower_order_final_below = check_threshold("lower_order_final_below", lower_order_final_below)
        self.solver_type = check_choice("solver_type", solver_type, ("heun", "midpoint"))
        self.reset()

    def coefficients(self, sigmas, i):
        n = len(sigmas) - 1
        order_i = step_order(
            i, n, 3, self.lower_order_final, self.lower_order_final_below,
            step_size=lambda j: log_sigma_step(sigmas[j], sigmas[j + 1]),
        )
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        if sigma_next == 0.0:
            return dict(step_order=1, start=None)
        start = None
        if takes_singlestep_start(self.start, i, 3, sigma_next):
            start = SimpleNamespace(**singlestep_coefficients(sigma, sigma_next, 3, "data"))
        h = log_sigma_step(sigma, sigma_next)
        # the Taylor weight of D2 ≈ h² D''/2 is 2 h φ_3(−h); the reference code's is half of it
        b3 = h * phi(3, -h) * (1.0 if self.official_coefficients else 2.0)
        return dict(
            start=start,
            step_order=order_i,
            a=sigma_next / sigma,
            b1=h * phi(1, -h),
            b2=h * phi(2, -h),
            b3=b3,
            **dpmpp_step_ratios(sigmas, i, order_i, h),
        )

    def step(self, ctx, x, step):
        denoised = ctx.denoise(x, step.sigma)
        history = self.remember(denoised, 3)
        if step.to_zero:
            return denoised
        if step.start is not None:  # DPM-Solver-3 while the history fills up
            return singlestep_update(ctx.denoise, x, denoised, step.start, 3)
        x_next = x * step.a + denoised * step.b1  # DPM-Solver++(1): e^{−h} x + h φ_1(−h) D_i
        if step.step_order == 1:
            return x_next
        if step.step_order == 2 and self.solver_type == "midpoint":
            return x_next + (denoised - history[1]) * (step.b1 / (2 * step.r0))
        return dpmpp_multistep_terms(x_next, history, step)
