"""Measured convergence orders of every ODE solver, written to docs/orders.md.

Run ``python -m benchmarks.convergence_orders`` (or ``python benchmarks/convergence_orders.py``).

For each fixed-grid ODE solver in :func:`ksampling.samplers.available` the probability-flow
ODE is solved in float64 from σ = 80 down to σ_min = 1e-3 on Karras et al.'s grid (ρ = 7)
without the final 0, with N = 16 … 256 steps and lower-order final steps off, and
``x(σ_min)`` is compared with an independent reference:

* Gaussian data N(μ, diag(c²)): the closed form ``x(σ) = μ + (x_T − μ) √((σ² + c²)/(σ_T² + c²))``
  (:meth:`ksampling.denoisers.analytic.Gaussian.ode_solution`);
* a smooth Gaussian mixture: scipy's DOP853 (rtol = atol = 1e-12) on ``dx/dt = x − D(x; e^t)``,
  t = log σ.

The measured order is the least-squares slope of −log(error) against log N over the
asymptotic range N = 64 … 256 (:data:`FIT_STEPS`); the slope over the whole sweep is shown
too. Below 64 steps the fourth-order Adams–Bashforth start of lms is still pre-asymptotic;
the published ipndm_v (order 2) is asymptotic only beyond N ≈ 1000 (its own test measures it
there). On the exponential grid
(uniform in log σ) the λ-based multistep methods show super-convergence on Gaussian data
(slopes above 4 for third-order methods), which is why the Karras grid is used.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

import ksampling
from ksampling.denoisers.analytic import Gaussian
from ksampling.samplers import available, get, info

if __package__:
    from .metrics import fit_order as fitted_order
else:  # run as a script: python benchmarks/convergence_orders.py
    from metrics import fit_order as fitted_order

SIGMA_MAX = 80.0
SIGMA_MIN = 1e-3
STEPS = (16, 32, 64, 128, 256)
#: The asymptotic part of the sweep, where the order is fitted.
FIT_STEPS = (64, 128, 256)
RHO = 7.0
DOCS = Path(__file__).resolve().parent.parent / "docs" / "orders.md"


# -- problems -------------------------------------------------------------------------------
@dataclass
class Problem:
    name: str
    denoiser: Callable  # model(x, sigma_batch) -> D
    x_start: torch.Tensor  # x at SIGMA_MAX
    reference: torch.Tensor  # x at SIGMA_MIN


class MixtureDenoiser:
    """Data Σ_k w_k N(μ_k, c_k² I): D = Σ_k r_k(x) (μ_k + c_k²/(c_k² + σ²)(x − μ_k)),
    r_k ∝ w_k N(x; μ_k, (c_k² + σ²) I).

    The same function as :class:`ksampling.denoisers.analytic.GaussianMixture` (a test checks
    that they agree), written out with a hand-normalised softmax: ``torch.softmax`` costs
    tens of milliseconds per call on tiny CPU tensors with some torch builds, and the sweep
    makes thousands of calls."""

    def __init__(self, weights, means, var):
        self.log_weights = torch.log(torch.as_tensor(weights, dtype=torch.float64))
        self.means = torch.as_tensor(means, dtype=torch.float64)  # [K, d]
        self.var = torch.as_tensor(var, dtype=torch.float64)  # [K]

    def __call__(self, x, sigma):
        dim = x.shape[-1]
        total_var = self.var + sigma.to(torch.float64).reshape(-1, 1) ** 2  # [B, K]
        diff = x.to(torch.float64)[:, None, :] - self.means  # [B, K, d]
        log_r = self.log_weights - 0.5 * (diff**2).sum(-1) / total_var - 0.5 * dim * torch.log(total_var)
        # normalised by hand: torch.softmax is orders of magnitude slower on tiny CPU tensors
        unnormalised = torch.exp(log_r - log_r.amax(-1, keepdim=True))
        r = unnormalised / unnormalised.sum(-1, keepdim=True)
        shrink = (self.var / total_var)[..., None]  # [B, K, 1]
        per_component = self.means + shrink * diff
        return (r[..., None] * per_component).sum(1).to(x.dtype)


def _start(batch: int, dim: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, dim, generator=generator, dtype=torch.float64) * SIGMA_MAX


def gaussian_problem() -> Problem:
    """Gaussian data N(μ, diag(c²)), reference x(σ_min) by its closed-form ODE solution."""
    model = Gaussian([0.5, -1.0, 0.2], var=[0.04, 0.25, 1.0])
    x_start = _start(4, 3, seed=0)
    reference = model.ode_solution(x_start, SIGMA_MAX, SIGMA_MIN)
    return Problem("gaussian", model, x_start, reference)


MIXTURE = dict(weights=[0.5, 0.3, 0.2], means=[[1.0, 0.5], [-1.0, -0.5], [0.2, -1.2]], var=[0.3, 0.2, 0.4])


def mixture_problem() -> Problem:
    """A smooth 3-component Gaussian mixture in 2-D, reference x(σ_min) by DOP853."""
    model = MixtureDenoiser(**MIXTURE)
    x_start = _start(4, 2, seed=1)
    return Problem("mixture", model, x_start, reference_solution(model, x_start, SIGMA_MAX, SIGMA_MIN))


def reference_solution(model, x_start: torch.Tensor, sigma_start: float, sigma_end: float) -> torch.Tensor:
    """x(sigma_end) by scipy DOP853 (rtol = atol = 1e-12) on dx/dt = x − D(x; e^t), t = log σ."""
    try:
        from scipy.integrate import solve_ivp
    except ImportError as exc:  # pragma: no cover
        raise ImportError("the mixture reference needs scipy: pip install ksampling[bench]") from exc
    shape = x_start.shape

    def rhs(t, y):
        x = torch.from_numpy(y).reshape(shape)
        sigma = torch.full((shape[0],), math.exp(t), dtype=torch.float64)
        return (x - model(x, sigma)).reshape(-1).numpy()

    solution = solve_ivp(
        rhs, (math.log(sigma_start), math.log(sigma_end)), x_start.reshape(-1).numpy(), method="DOP853", rtol=1e-12, atol=1e-12
    )
    if not solution.success:  # pragma: no cover
        raise RuntimeError(f"reference ODE solve failed: {solution.message}")
    return torch.from_numpy(solution.y[:, -1].copy()).reshape(shape)


# -- measurement ------------------------------------------------------------------------------
def karras_grid(n: int, sigma_max: float = SIGMA_MAX, sigma_min: float = SIGMA_MIN, rho: float = RHO) -> torch.Tensor:
    """n steps of Karras et al. 2022 (eq. 5) from sigma_max to sigma_min, without the final zero:
    σ_i = (σ_max^{1/ρ} + i/n (σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ."""
    ramp = torch.linspace(0.0, 1.0, n + 1, dtype=torch.float64)
    hi, lo = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def ode_solvers() -> list[str]:
    """Every registered fixed-grid ODE solver (CFG++ solvers need a guided model and have no
    step-count-independent limit: see :mod:`ksampling.samplers.cfg_pp`)."""
    return [
        name
        for name in available()
        if info(name)["kind"] == "ode" and info(name)["fixed_grid"] and not info(name)["needs_uncond"]
    ]


def measurement_options(name: str, start: str = "singlestep") -> dict:
    """Lower-order final steps off, and the multistep start ``start``, where the solver has the
    options."""
    names = get(name).option_names()
    options = {"lower_order_final": False} if "lower_order_final" in names else {}
    if "start" in names:
        options["start"] = start
    return options


def theoretical_order(name: str, start: str = "singlestep") -> int:
    """The order :func:`ksampling.samplers.info` gives for the start ``start``."""
    meta = info(name)
    if start == "singlestep" and meta["order_with_start"] is not None:
        return meta["order_with_start"]
    return meta["order"]


def exponential_grid(n: int, sigma_max: float = SIGMA_MAX, sigma_min: float = SIGMA_MIN) -> torch.Tensor:
    """n steps uniform in log σ from sigma_max to sigma_min, without the final zero."""
    return torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), n + 1, dtype=torch.float64))


#: The default start's asymptotic order shows only at many steps, on steps uniform in log σ
#: (where the first step is as large as any other): from N ≈ 500 for the third-order methods,
#: from N ≈ 4000 for fourth-order lms. With the singlestep start the order shows from N ≈ 200
#: and round-off sets in beyond N ≈ 2000.
DEFAULT_START_STEPS = {"lms": (2048, 4096, 8192)}
DEFAULT_START_STEPS_OTHERS = (512, 1024, 2048)
SINGLESTEP_START_STEPS = (256, 512, 1024)


def asymptotic_steps(solver: str, start: str) -> tuple[int, ...]:
    if start == "singlestep":
        return SINGLESTEP_START_STEPS
    return DEFAULT_START_STEPS.get(solver, DEFAULT_START_STEPS_OTHERS)


def errors_for(solver: str, problem: Problem, steps: Sequence[int], grid: Callable | None = None, **options) -> list[float]:
    """Root-mean-square error of x(σ_min) against the reference, for each number of steps,
    on ``grid(n)`` (default: :func:`karras_grid`)."""
    options = {**measurement_options(solver), **options}
    grid = karras_grid if grid is None else grid
    errors = []
    for n in steps:
        x = ksampling.sample(problem.denoiser, problem.x_start.clone(), grid(n), solver, **options)
        errors.append(float((x - problem.reference).pow(2).mean().sqrt()))
    return errors


@dataclass
class Measurement:
    solver: str
    problem: str
    errors: list[float]  # one per STEPS
    order: float  # fitted over FIT_STEPS
    order_all: float  # fitted over STEPS


def measure(solver: str, problem: Problem, **options) -> Measurement:
    errors = errors_for(solver, problem, STEPS, **options)
    tail = [e for n, e in zip(STEPS, errors) if n in FIT_STEPS]
    return Measurement(solver, problem.name, errors, fitted_order(FIT_STEPS, tail), fitted_order(STEPS, errors))


def measure_asymptotic(solver: str, problem: Problem, start: str) -> float:
    """The slope over :func:`asymptotic_steps` on the exponential grid with the given start."""
    steps = asymptotic_steps(solver, start)
    errors = errors_for(solver, problem, steps, grid=exponential_grid, start=start)
    return fitted_order(steps, errors)


def solvers_with_start() -> list[str]:
    """The ODE solvers with a ``start`` option (multistep methods whose warm-up caps the order)."""
    return [name for name in ode_solvers() if "start" in get(name).option_names()]


def start_table() -> str:
    """Default start against ``start="singlestep"``, as N → ∞ (Gaussian problem)."""
    problem = gaussian_problem()
    lines = [
        "| solver | order, default start | measured | order, start=\"singlestep\" | measured |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in solvers_with_start():
        meta = info(name)
        default, better = (measure_asymptotic(name, problem, start) for start in ("lower_order", "singlestep"))
        lines.append(f"| `{name}` | {meta['order']} | {default:.2f} | {meta['order_with_start']} | {better:.2f} |")
    return "\n".join(lines)


def sde_solvers_at_eta_zero() -> list[str]:
    """The fixed-grid SDE solvers that are deterministic at ``eta=0`` (their ODE method)."""
    names = []
    for name in available():
        meta = info(name)
        if meta["kind"] != "sde" or not meta["fixed_grid"] or meta["needs_uncond"] or "eta" not in meta["options"]:
            continue
        if not get(name)(eta=0.0).draws_noise:
            names.append(name)
    return names


def eta_zero_table() -> str:
    """Measured orders of the SDE solvers with their noise off (Gaussian and mixture)."""
    problems = [gaussian_problem(), mixture_problem()]
    lines = ["| solver | theory | Gaussian | mixture | NFE/step |", "|---|---:|---:|---:|---:|"]
    for name in sde_solvers_at_eta_zero():
        meta = info(name)
        gauss, mix = (measure(name, problem, eta=0.0) for problem in problems)
        lines.append(f"| `{name}` | {meta['order']} | {gauss.order:.2f} | {mix.order:.2f} | {meta['nfe_per_step']} |")
    return "\n".join(lines)


def table(solvers: Sequence[str] | None = None) -> str:
    """The markdown table: solver, theoretical order, measured on the Gaussian and the mixture."""
    solvers = list(solvers) if solvers is not None else ode_solvers()
    problems = [gaussian_problem(), mixture_problem()]
    lines = [
        "| solver | theory | Gaussian | mixture | Gaussian, N = 16–256 | mixture, N = 16–256 | error at N = 256 (Gaussian) | NFE/step |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in solvers:
        meta = info(name)
        gauss, mix = (measure(name, problem) for problem in problems)
        lines.append(
            f"| `{name}` | {theoretical_order(name)} | {gauss.order:.2f} | {mix.order:.2f} | {gauss.order_all:.2f} | "
            f"{mix.order_all:.2f} | {gauss.errors[-1]:.1e} | {meta['nfe_per_step']} |"
        )
    return "\n".join(lines)


PAGE = """# Measured convergence orders

Written by `python -m benchmarks.convergence_orders`; do not edit by hand.

Every fixed-grid ODE solver, with its default options except lower-order final steps off
and, for the multistep solvers that have it, `start="singlestep"` (see below), solves the
probability-flow ODE in float64 from σ = {sigma_max:g} to σ_min = {sigma_min:g} on the Karras grid
(ρ = 7, not ending in 0) with N = {steps} steps. The error is the root-mean-square error of
x(σ_min) over a batch of 4, against

* **Gaussian**: data N(μ, diag(c²)) in 3 dimensions (c² = 0.04, 0.25, 1), whose ODE solution
  is closed form, x(σ) = μ + (x_T − μ) √((σ² + c²)/(σ_T² + c²));
* **mixture**: a 3-component Gaussian mixture in 2 dimensions (component variances 0.2–0.4),
  reference by scipy's DOP853 at rtol = atol = 1e-12.

The measured order ("Gaussian", "mixture") is the least-squares slope of −log(error) against
log N over N = {fit_steps}, where the error is dominated by the method's leading term; the
tests (`tests/test_convergence.py`) require it within ±0.3 of the theoretical order. The
slopes over the whole sweep are shown too: below 64 steps the fourth-order Adams–Bashforth
methods are still pre-asymptotic.

{table}

## The multistep start

A multistep method has no history on its first steps. k-diffusion and diffusers warm up with
lower orders (step i has order i + 1), and ksampling's default `start="lower_order"` does the
same, for parity. The first, first-order step leaves an error of O(h²), which is small on the
first, nearly linear steps of a Karras grid but does not shrink faster than h²: as N → ∞ these
methods converge with order 2, and `info(name)["order"]` says so. `start="singlestep"` takes
the first order − 1 steps with a singlestep method of the full order (DPM-Solver for `deis`
and `dpmpp_3m`, classical RK4 for `lms`; a few more model calls, once) and keeps the method's
order, `info(name)["order_with_start"]`. Measured on the Gaussian problem with steps
uniform in log σ (where the first step is as large as any other), the default start over
N = {default_steps} ({lms_steps} for `lms`), the singlestep start over N = {singlestep_steps}
(beyond, round-off sets in):

{start_table}

On these grids the λ-based methods (`deis`, `dpmpp_3m`) gain one order on Gaussian data
(super-convergence, see the module docstring); the Karras table above shows their order.

`unipc` needs no such option: its corrector makes the first step second order.

## SDE solvers with their noise off

With `eta=0` an SDE solver is its deterministic method (same grid, same sweep, N = {fit_steps}):

{eta_zero_table}

Notes:

* `ipndm_v` is the published variable-step iPNDM (ComfyUI's, from zju-pi's diff-sampler):
  its fourth-order term is not Adams–Bashforth's on unequal steps, so it converges with
  order 2, and only beyond N ≈ 1000 here (`tests/test_new_methods.py` measures 1.97 at
  N = 4096); `lms` is the exact variable-step Adams–Bashforth method.
* `dpmpp_3m_sde` at `eta=0` is k-diffusion's DPM-Solver++(3M), whose third-order term
  carries half the Taylor coefficient (as `dpmpp_3m` with `official_coefficients=True`,
  below): order 2, still rising towards it at N = 256.
* `heunpp2` (ComfyUI's Heun++) spends three model calls per step for a first-order method;
  `fitted` is the fit's wrapper around `ipndm` (its default base).
* `ipndm` applies the fixed (equal-step) Adams–Bashforth weights to unequal steps, which is
  exact only to second order; it has order 4 on a grid uniform in σ only.
* `dpmpp_3m` uses the exact Taylor coefficient of its third-order term; with
  `official_coefficients=True` it reproduces the DPM-Solver reference code, diffusers and
  k-diffusion, whose third-order term carries half that coefficient and which converge with
  order 2 (slope {official_3m} over N = 64–256 on the Gaussian, still rising towards 2).
* `dpm_solver` at order 3 is third order only with r2 = 2/3 (the paper's value); other r2
  are rejected.
* `er_sde` is an SDE solver and not in the table; its deterministic part
  (`noise_scale="ode"`) converges with order 2, not 3 (see its docstring).
* Multistep solvers lower their order after a step much smaller than the next one (a ratio
  beyond 10 in log σ, 100 in σ), where their divided differences would divide round-off and
  noise by it: a grid with a step of relative size 1e-12 samples as well as one without. A
  step much smaller than the one before it is harmless and keeps the order (as in
  k-diffusion and diffusers).
"""


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DOCS, help="markdown file to write (default: docs/orders.md)")
    parser.add_argument("--no-write", action="store_true", help="only print the table")
    args = parser.parse_args(argv)
    body = table()
    official = measure("dpmpp_3m", gaussian_problem(), official_coefficients=True).order
    page = PAGE.format(
        sigma_max=SIGMA_MAX,
        sigma_min=SIGMA_MIN,
        steps=", ".join(map(str, STEPS)),
        fit_steps=", ".join(map(str, FIT_STEPS)),
        table=body,
        official_3m=f"{official:.2f}",
        default_steps=", ".join(map(str, DEFAULT_START_STEPS_OTHERS)),
        lms_steps=", ".join(map(str, DEFAULT_START_STEPS["lms"])),
        singlestep_steps=", ".join(map(str, SINGLESTEP_START_STEPS)),
        start_table=start_table(),
        eta_zero_table=eta_zero_table(),
    )
    print(page)
    if not args.no_write:
        args.output.write_text(page)
        print(f"wrote {args.output}", file=sys.stderr)
    return page


if __name__ == "__main__":
    main()
