"""Restart sampling (Xu et al. 2023, "Restart Sampling for Improving Generative Processes",
arXiv:2306.14878, NeurIPS 2023)."""

from __future__ import annotations

import math

from .base import Solver, Step, check_int, check_nonnegative, make_solver, register

__all__ = ["Restart"]


def _karras(n_steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> list[float]:
    """n_steps + 1 Karras et al. (2022, eq. 5) levels from sigma_max down to sigma_min."""
    hi, lo = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return [(hi + j / n_steps * (lo - hi)) ** rho for j in range(n_steps + 1)]


def _check_restarts(restarts) -> tuple[tuple[float, float, int, int], ...]:
    try:
        items = [tuple(item) for item in restarts]
    except TypeError:
        raise TypeError("restarts must be a sequence of (sigma_min, sigma_max, steps, repeats) tuples") from None
    checked = []
    for item in items:
        if len(item) != 4:
            raise ValueError(f"each restart must be (sigma_min, sigma_max, steps, repeats), got {item!r}")
        sigma_min = check_nonnegative("restart sigma_min", item[0])
        sigma_max = check_nonnegative("restart sigma_max", item[1])
        if not 0 < sigma_min < sigma_max or math.isinf(sigma_max):
            raise ValueError(f"a restart interval needs 0 < sigma_min < sigma_max < inf, got {item[:2]!r}")
        checked.append((sigma_min, sigma_max, check_int("restart steps", item[2], 1), check_int("restart repeats", item[3], 0)))
    return tuple(checked)


@register
class Restart(Solver):
    """Restart sampling (Xu et al. 2023, Algorithm 2): integrate the probability-flow ODE with
    ``base`` on the grid; on reaching the grid level nearest to ``σ_min`` of a restart interval
    [σ_min, σ_max], repeat ``repeats`` times

        x ← x + S_noise √(σ_max² − σ_min²) ε,   ε ~ N(0, I)  (forward jump to σ_max)
        x ← ODE_base(x; σ_max → σ_min)  on a Karras grid (ρ = 7) of ``steps`` steps,

    then continue on the grid. The forward jump is the exact forward process, so each restart
    cycle maps the marginal at σ_min to itself while contracting the accumulated error of the
    ODE steps (the paper's Theorem 2). ``restarts`` lists ``(sigma_min, sigma_max, steps,
    repeats)``; the default, one interval [0.1, 2] of 9 Heun steps once, is A1111's automatic
    choice for 20–35 steps (A1111 also shortens the main grid; here the grid is the caller's).
    ``restarts=()`` is ``base``. ``base`` is any single-step ODE solver (default ``heun``,
    the paper's).
    """

    name = "restart"
    order = 2
    nfe_per_step = 2
    kind = "sde"
    paper = "Xu et al. 2023, Restart Sampling for Improving Generative Processes (arXiv:2306.14878)"

    def __init__(self, base: str = "heun", restarts=((0.1, 2.0, 9, 1),), s_noise: float = 1.0):
        self.base = make_solver(base)
        if self.base.multistep or self.base.kind != "ode" or not self.base.fixed_grid or self.base.needs_uncond:
            raise ValueError(f"base must be a single-step, fixed-grid ODE solver (e.g. 'heun', 'euler'), got {base!r}")
        self.restarts = _check_restarts(restarts)
        self.s_noise = check_nonnegative("s_noise", s_noise)

    @property
    def draws_noise(self) -> bool:
        return self.s_noise > 0 and any(repeats > 0 for *_, repeats in self.restarts)

    def plan(self, sigmas):
        steps = self.base.plan(sigmas)
        for step in steps:
            step.restart_std, step.restart_from = 0.0, None
        positive = [j for j in range(1, len(sigmas)) if sigmas[j] > 0]
        inserts: dict[int, list[Step]] = {}
        for sigma_min, sigma_max, n_steps, repeats in self.restarts:
            if not positive or repeats == 0:
                continue
            j = min(positive, key=lambda k: abs(sigmas[k] - sigma_min))  # the grid level nearest σ_min
            low = sigmas[j]
            if not sigma_max > low:
                continue
            cycle = self.base.plan(_karras(n_steps, low, sigma_max))
            for repeat in range(repeats):
                for k, step in enumerate(cycle):
                    extra = dict(vars(step))
                    # callbacks report the grid index reached; σ comes from the step itself
                    jump = math.sqrt(sigma_max**2 - low**2) if k == 0 else 0.0
                    extra.update(index=j, on_grid=False, restart_std=jump, restart_from=low)
                    inserts.setdefault(j, []).append(Step(**extra))
        planned = []
        for i, step in enumerate(steps):
            planned.append(step)
            planned.extend(inserts.get(i + 1, []))
        return planned

    def step(self, ctx, x, step):
        if step.restart_std > 0 and self.s_noise > 0:
            # the forward jump σ_min → σ_max of the restart cycle
            x = ctx.add_noise(x, self.s_noise * step.restart_std, step.restart_from, step.sigma)
        return self.base.step(ctx, x, step)
