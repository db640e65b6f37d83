"""Explicit third-order Runge–Kutta methods on the probability-flow ODE
dx/dσ = d(x, σ) = (x − D(x; σ)) / σ."""

from __future__ import annotations

from typing import ClassVar

from .base import Solver, register

__all__ = ["ExplicitRungeKutta", "Heun3", "Ralston3"]


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
        sigma, dt = sigmas[i], sigmas[i + 1] - sigmas[i]
        return dict(
            stage_sigmas=[sigma + c * dt for c in self.c],
            stage_weights=[[dt * a for a in row] for row in self.a],
            weights=[dt * b for b in self.b],
        )

    def step(self, ctx, x, step):
        slopes = []
        for sigma_stage, row in zip(step.stage_sigmas, step.stage_weights):
            x_stage = x
            for slope, weight in zip(slopes, row):
                if weight != 0.0:
                    x_stage = x_stage + slope * weight
            slopes.append((x_stage - ctx.denoise(x_stage, sigma_stage)) / sigma_stage)
        for slope, weight in zip(slopes, step.weights):
            if weight != 0.0:
                x = x + slope * weight
        return x


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
