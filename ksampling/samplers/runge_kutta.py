"""Explicit third-order Runge–Kutta methods on the probability-flow ODE
dx/dσ = d(x, σ) = (x − D(x; σ)) / σ."""

from __future__ import annotations

from typing import ClassVar

from .base import Solver, register
from .common import linear_combination

__all__ = ["ExplicitRungeKutta", "Heun3", "Ralston3", "RK4", "runge_kutta_coefficients", "runge_kutta_update"]


def runge_kutta_coefficients(sigma: float, sigma_next: float, c, a, b) -> dict:
    """Host-side scalars of one step of the tableau (c, A, b) from σ to σ_next:
    the stage sigmas ``σ + c_s Δσ`` and the weights ``Δσ a_sj``, ``Δσ b_s``."""
    dt = sigma_next - sigma
    return dict(
        stage_sigmas=[sigma + c_s * dt for c_s in c],
        stage_weights=[[dt * a_sj for a_sj in row] for row in a],
        weights=[dt * b_s for b_s in b],
    )


def runge_kutta_update(slope, x, k_1, stage_sigmas, stage_weights, weights):
    """``x_next = x + Δσ Σ_s b_s k_s`` with ``k_s = slope(x + Δσ Σ_{j<s} a_sj k_j, σ + c_s Δσ)``,
    from the first slope ``k_1 = slope(x, σ)`` (the caller's: multistep starts keep it)."""
    slopes = [k_1]
    for sigma_stage, row in zip(stage_sigmas[1:], stage_weights[1:]):
        x_stage = linear_combination(x, 1.0, slopes, row)
        slopes.append(slope(x_stage, sigma_stage))
    return linear_combination(x, 1.0, slopes, weights)


#: The classical fourth-order Runge–Kutta tableau (Kutta 1901): c, A, b. Its last stage sits at
#: σ_next, so it serves only steps to σ_next > 0 (the multistep starts of lms).
RK4 = ((0.0, 1 / 2, 1 / 2, 1.0), ((), (1 / 2,), (0.0, 1 / 2), (0.0, 0.0, 1.0)), (1 / 6, 1 / 3, 1 / 3, 1 / 6))


class ExplicitRungeKutta(Solver):
    """An explicit Runge–Kutta method given by its Butcher tableau (c, A, b):

        ``k_s = d(x + Δσ Σ_{j<s} A[s][j] k_j, σ + c_s Δσ)``,  ``x_next = x + Δσ Σ_s b_s k_s``,

    Δσ = σ_next − σ. The tableaus here have 0 < c_s < 1 for s > 0, so no stage is evaluated
    at σ_next: a step to σ = 0 needs no special case (d is never evaluated at σ = 0).
    """

    c: ClassVar[tuple[float, ...]] = ()
    a: ClassVar[tuple[tuple[float, ...], ...]] = ()
    b: ClassVar[tuple[float, ...]] = ()

    def __init__(self):
        pass

    def coefficients(self, sigmas, i):
        return runge_kutta_coefficients(sigmas[i], sigmas[i + 1], self.c, self.a, self.b)

    def step(self, ctx, x, step):
        def slope(u, sigma):  # d(u, σ) = (u − D(u; σ))/σ
            return (u - ctx.denoise(u, sigma)) / sigma

        return runge_kutta_update(slope, x, slope(x, step.sigma), step.stage_sigmas, step.stage_weights, step.weights)


@register
class Heun3(ExplicitRungeKutta):
    """Heun's third-order method (Heun 1900; Butcher 2016, §233):
    c = (0, 1/3, 2/3), a21 = 1/3, a32 = 2/3, b = (1/4, 0, 3/4)."""

    name = "heun3"
    order = 3
    nfe_per_step = 3
    paper = "Heun 1900; Butcher, Numerical Methods for ODEs (2016), §233"
    c = (0.0, 1 / 3, 2 / 3)
    a = ((), (1 / 3,), (0.0, 2 / 3))
    b = (1 / 4, 0.0, 3 / 4)


@register
class Ralston3(ExplicitRungeKutta):
    """Ralston's third-order method, the one of minimum error bound (Ralston 1962):
    c = (0, 1/2, 3/4), a21 = 1/2, a32 = 3/4, b = (2/9, 1/3, 4/9)."""

    name = "ralston3"
    order = 3
    nfe_per_step = 3
    paper = "Ralston 1962, Runge-Kutta methods with minimum error bounds"
    c = (0.0, 1 / 2, 3 / 4)
    a = ((), (1 / 2,), (0.0, 3 / 4))
    b = (2 / 9, 1 / 3, 4 / 9)
