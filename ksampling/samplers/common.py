"""Machinery shared by several solvers.

* host-side math in plain Python floats (float64): the ancestral split, EDM's churn factor,
  the log-σ step, the φ-functions of the exponential integrators, Lagrange/Adams weights and
  the order a multistep method uses at step i;
* the one tensor helper the weighted updates share, :func:`linear_combination`;
* two small solver bases: :class:`Stochastic` (eta / s_noise options and the noise line) and
  :class:`Multistep` (the history of earlier model outputs).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch

from .base import Solver
from .validation import check_nonnegative

__all__ = [
    "ancestral_step",
    "churn_gamma",
    "log_sigma_step",
    "phi",
    "lagrange_exp_weights",
    "step_order",
    "step_orders",
    "degenerate_ratio",
    "MIN_STEP_RATIO_LAMBDA",
    "MIN_STEP_RATIO_SIGMA",
    "linear_combination",
    "STARTS",
    "takes_singlestep_start",
    "Stochastic",
    "Multistep",
]


def ancestral_step(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """Split the step sigma -> sigma_next into a deterministic step to ``sigma_down`` and
    fresh noise of scale ``sigma_up``, with ``sigma_down² + sigma_up² = sigma_next²``.

    ``sigma_up = min(sigma_next, eta * sqrt(sigma_next² (sigma² - sigma_next²) / sigma²))``:
    at ``eta = 1`` this is the DDPM posterior variance (Ho et al. 2020) and at ``eta = 0`` the
    deterministic DDIM step (Song et al. 2021, eq. 12), written in the VE state space.
    """
    if not 0.0 <= sigma_next <= sigma:
        raise ValueError(
            f"an ancestral step goes down in noise: need 0 <= sigma_next <= sigma, got sigma={sigma}, "
            f"sigma_next={sigma_next}"
        )
    if eta == 0.0 or sigma_next == 0.0:
        return sigma_next, 0.0
    # σ_next √(1 − (σ_next/σ)²) and σ_next √(1 − (σ_up/σ_next)²): the squares of σ overflow
    # from σ = 1e154
    sigma_up = min(sigma_next, eta * sigma_next * math.sqrt(1.0 - (sigma_next / sigma) ** 2))
    sigma_down = sigma_next * math.sqrt(1.0 - (sigma_up / sigma_next) ** 2)
    return sigma_down, sigma_up


def churn_gamma(sigma: float, n_steps: int, s_churn: float, s_tmin: float, s_tmax: float) -> float:
    """EDM's churn factor (Karras et al. 2022, Algorithm 2): sigma_hat = sigma * (1 + gamma),
    gamma = min(S_churn / N, √2 − 1) for S_tmin <= sigma <= S_tmax, else 0."""
    if s_churn > 0 and s_tmin <= sigma <= s_tmax:
        return min(s_churn / n_steps, math.sqrt(2.0) - 1.0)
    return 0.0


def log_sigma_step(sigma: float, sigma_next: float) -> float:
    """h = λ_next − λ with λ = −log σ (infinite for a step to sigma = 0)."""
    return math.inf if sigma_next == 0.0 else math.log(sigma / sigma_next)


def phi(k: int, z: float) -> float:
    """φ_k(z) = ∫_0^1 e^{(1−θ) z} θ^{k−1}/(k−1)! dθ, with φ_0(z) = e^z.

    Recurrence φ_{k+1}(z) = (φ_k(z) − 1/k!) / z for |z| >= 1; the power series
    Σ_j z^j / (j + k)! near 0, where the recurrence would cancel.
    """
    if k == 0:
        return math.exp(z)
    if abs(z) < 1.0:
        term = 1.0 / math.factorial(k)
        total = term
        for j in range(1, 40):
            term *= z / (j + k)
            total += term
        return total
    value = math.expm1(z) / z
    for j in range(1, k):
        value = (value - 1.0 / math.factorial(j)) / z
    return value


def lagrange_exp_weights(nodes: Sequence[float], z: float) -> list[float]:
    """Weights ``w_j = ∫_0^1 e^{z(1−θ)} ℓ_j(θ) dθ`` of the Lagrange basis ℓ_j on ``nodes``.

    With the nodes in units of the step (θ_j = (t_j − t)/(t_next − t)), ``Σ_j w_j f_j`` is the
    exact exponentially weighted integral of the polynomial through the points (θ_j, f_j):
    the Adams–Bashforth rule of an exponential integrator (z = −h for data prediction,
    z = h for noise prediction, z = 0 for a plain Adams–Bashforth step).
    Uses ``∫_0^1 e^{z(1−θ)} θ^k dθ = k! φ_{k+1}(z)``.
    """
    nodes = [float(t) for t in nodes]
    moments = [math.factorial(k) * phi(k + 1, z) for k in range(len(nodes))]
    weights = []
    for j, node in enumerate(nodes):
        others = [t for m, t in enumerate(nodes) if m != j]
        denominator = math.prod(node - t for t in others)
        # monomial coefficients (lowest degree first) of prod_{m != j} (θ − θ_m)
        coeffs = np.polynomial.polynomial.polyfromroots(others) if others else np.array([1.0])
        weights.append(float(np.dot(coeffs, moments[: len(coeffs)])) / denominator)
    return weights


#: A multistep method extrapolates from earlier points. When a step is much smaller than the
#: next one (a step of relative size 1e-12 left by float32 rounding or by an edited grid),
#: its divided differences divide round-off, and in SDE solvers the fresh noise, by the tiny
#: gap and blow up as 1/gap. :func:`step_order` then lowers the order to what the history
#: supports. In λ = −log σ the steps of ordinary grids differ by factors of a few, so a
#: factor of 10 is already degenerate; in σ neighbouring steps of a geometric grid differ by
#: e^h, which is 1/20 at h = 3, hence the smaller bound for the σ-based methods.
MIN_STEP_RATIO_LAMBDA = 0.1
MIN_STEP_RATIO_SIGMA = 1e-2


def degenerate_ratio(h_earlier: float, h_later: float, min_ratio: float = MIN_STEP_RATIO_LAMBDA) -> bool:
    """Whether the earlier of two neighbouring steps is smaller than ``min_ratio`` times the
    later one (or the later one is infinite, a step to σ = 0), so that extrapolating across
    the earlier one's points divides round-off or noise by its tiny size.

    One-sided: a step much *smaller* than the one before it is harmless (the weights of the
    older points shrink with it), and ordinary few-step grids have such steps (2 Karras steps
    from 14.6 to 0.03 end with a step 500× smaller), where k-diffusion and diffusers keep the
    full order; so do we."""
    return not abs(h_earlier) > min_ratio * abs(h_later)


def step_order(
    i: int,
    n_steps: int,
    order: int,
    lower_order_final: bool = False,
    below: float = math.inf,
    step_size: Callable[[int], float] | None = None,
    min_ratio: float = MIN_STEP_RATIO_LAMBDA,
) -> int:
    """The order step i of a multistep method uses.

    Step i has at most i + 1 points of history (warm-up with lower orders). With
    ``lower_order_final`` and fewer than ``below`` steps, step i also uses at most
    ``n_steps − i`` points, so the last step is first order and the one before second order
    (DPM-Solver, UniPC, DEIS do this: high-order steps at the smallest σ are unstable when
    the steps are few and large).

    With ``step_size`` (``j -> `` the size of step j in the method's variable, h in λ or Δσ),
    the history also stops at a degenerate step ratio (:func:`degenerate_ratio`): using p
    points spans the steps i − p + 1, …, i, and each must be comparable to the one after it.
    """
    p = min(order, i + 1)
    if lower_order_final and n_steps < below:
        p = min(p, n_steps - i)
    if step_size is not None:
        for k in range(1, p):
            if degenerate_ratio(step_size(i - k), step_size(i - k + 1), min_ratio):
                return k
    return p


#: How a multistep method takes its first steps, before it has history: ``"lower_order"`` (the
#: methods' usual warm-up, as k-diffusion and diffusers: step i has order i + 1; its first,
#: first-order step leaves an O(h²) error, so the method converges with order 2 as N → ∞),
#: or ``"singlestep"`` (a singlestep method of the full order, several model calls per step,
#: for the first order − 1 steps: the method keeps its order).
STARTS = ("lower_order", "singlestep")


def takes_singlestep_start(start: str, i: int, order: int, sigma_next: float) -> bool:
    """Whether step i is one of the starting steps that ``start="singlestep"`` takes with a
    singlestep method: the first ``order − 1`` steps, but never a step to σ = 0."""
    return start == "singlestep" and i < order - 1 and sigma_next > 0.0


def step_orders(n_steps: int, order: int, lower_order_final: bool, below: float) -> list[int]:
    """:func:`step_order` for every step of a grid of ``n_steps`` steps."""
    return [step_order(i, n_steps, order, lower_order_final, below) for i in range(n_steps)]


def linear_combination(x, x_weight: float, tensors: Sequence, weights: Sequence[float]):
    """``x_weight·x + Σ_j weights[j]·tensors[j]`` with host-side float weights (zeros skipped)."""
    out = x if x_weight == 1.0 else x * x_weight
    for tensor, weight in zip(tensors, weights):
        if weight != 0.0:
            out = torch.add(out, tensor, alpha=weight)
    return out


class Stochastic(Solver):
    """A solver with ``eta`` (how much of each step is stochastic) and ``s_noise`` (the scale of
    the fresh noise). It draws noise only when both are > 0."""

    kind = "sde"

    def __init__(self, eta: float = 1.0, s_noise: float = 1.0):
        self.eta = check_nonnegative("eta", eta)
        self.s_noise = check_nonnegative("s_noise", s_noise)

    @property
    def draws_noise(self) -> bool:
        return self.eta > 0 and self.s_noise > 0

    @staticmethod
    def add_noise(ctx, x, step, std: float | None = None):
        """x + std · z for the step σ → σ_next (``std`` defaults to ``step.noise_std``, which
        :meth:`Solver.coefficients` computes with ``s_noise`` in it); nothing when it is 0."""
        std = step.noise_std if std is None else std
        if std == 0.0:
            return x
        return ctx.add_noise(x, std, step.sigma, step.sigma_next)


class Multistep(Solver):
    """History of earlier model outputs (or their derivatives), newest first, for the
    multistep solvers; :meth:`reset` starts each run with none."""

    multistep = True

    def reset(self) -> None:
        self.history: list = []

    def remember(self, value, keep: int) -> list:
        """Put ``value`` first in the history and keep the newest ``keep``; returns the history."""
        self.history = [value] + self.history[: keep - 1]
        return self.history
