"""Linear multistep (Adams–Bashforth on a variable grid), k-diffusion's ``sample_lms``.

The probability-flow ODE dx/dσ = d(x, σ) = (x − D(x; σ))/σ is integrated with the
Adams–Bashforth idea on the sigma grid itself (Karras et al. 2022 use k-diffusion's LMS as a
baseline; the method is the textbook variable-step Adams–Bashforth, Hairer, Nørsett & Wanner,
*Solving ODEs I*, §III.5): interpolate the last ``p`` derivatives d_i, d_{i−1}, … at
σ_i, σ_{i−1}, … by a polynomial and integrate it exactly over the step,

    x_{i+1} = x_i + Σ_{j<p} c_{ij} d_{i−j},   c_{ij} = ∫_{σ_i}^{σ_{i+1}} ℓ_j(τ) dτ,

where ``ℓ_j`` is the Lagrange basis polynomial that is 1 at σ_{i−j} and 0 at the other nodes;
``p = min(i + 1, order)``. k-diffusion integrates ``ℓ_j`` with ``scipy.integrate.quad`` in every
step; here the polynomial is integrated in closed form (numpy's polynomial antiderivative), on
the host, once per run, in a scaled variable u = (τ − σ_i)/(σ_{i+1} − σ_i) where the nodes are
O(1) numbers.
"""

from __future__ import annotations

import numpy as np
from numpy.polynomial import Polynomial

from .base import Solver, check_int, register

__all__ = ["lms_coefficients"]


def lms_coefficients(sigmas, i: int, order: int) -> list[float]:
    """``[c_{i0}, …, c_{i,p−1}]``: the weights of d_i, d_{i−1}, … in step ``i`` (see module)."""
    p = min(i + 1, order)
    step = sigmas[i + 1] - sigmas[i]
    nodes = [(sigmas[i - k] - sigmas[i]) / step for k in range(p)]  # u of σ_i, σ_{i−1}, …
    coeffs = []
    for j in range(p):
        others = [nodes[k] for k in range(p) if k != j]
        basis = Polynomial.fromroots(others) / np.prod([nodes[j] - u for u in others]) if others else Polynomial([1.0])
        antiderivative = basis.integ()
        coeffs.append(float(step * (antiderivative(1.0) - antiderivative(0.0))))
    return coeffs


@register
class LMS(Solver):
    """Linear multistep of order ``order`` (default 4) on dx/dσ = (x − D(x; σ))/σ; lower orders
    while the history fills up. One model call per step."""

    name = "lms"
    order = 4
    nfe_per_step = 1
    multistep = True
    paper = "Adams–Bashforth on the sigma grid (Hairer, Nørsett & Wanner, §III.5); k-diffusion sample_lms"

    def __init__(self, order: int = 4):
        self.lms_order = check_int("order", order, 1)

    def reset(self) -> None:
        self.derivatives = []  # most recent first

    def coefficients(self, sigmas, i):
        return dict(weights=lms_coefficients(sigmas, i, self.lms_order))

    def step(self, ctx, x, step):
        d = (x - ctx.denoise(x, step.sigma)) / step.sigma
        self.derivatives = [d] + self.derivatives[: self.lms_order - 1]
        for weight, d_past in zip(step.weights, self.derivatives):
            x = x + d_past * weight
        return x
