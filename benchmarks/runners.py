"""Running one method: the benchmarks' runners, shared by the suite, the torchrun driver
(:mod:`benchmarks.distributed`) and the goal search.

* :class:`Method` / :func:`methods_for`: a solver of ksampling or of k-diffusion, and how it
  is called; :class:`CountingModel` counts the NFE it spends;
* :func:`make_grid`, :func:`dry_run` and :func:`plan_steps`: the grid whose counted NFE
  fits a budget;
* :func:`run_method` runs one method on one batch; :func:`generate` runs it for a list of
  seeds, sharded over the ranks of an initialised process group.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist

import ksampling
from ksampling import samplers, schedules
from ksampling.samplers.brownian import BrownianTreeNoiseSampler
from ksampling.samplers.noise import GaussianNoise

from . import kdiff, metrics
from .metrics import CorrelatedNoise

__all__ = ["CountingModel", "Method", "methods_for", "make_grid", "run_method", "dry_run", "Plan", "plan_steps",
           "generate", "rank_and_world"]


class CountingModel:
    """Wraps a model and counts its evaluations: ``nfe`` = rows evaluated / batch size, so a
    solver that calls the model on a half batch or on a doubled batch is counted right."""

    def __init__(self, model: Callable, batch: int):
        self.model = model
        self.batch = batch
        self.calls = 0
        self.rows = 0

    def __call__(self, x, sigma, **extra_args):
        self.calls += 1
        self.rows += x.shape[0]
        return self.model(x, sigma, **extra_args)

    @property
    def nfe(self) -> float:
        nfe = self.rows / self.batch
        return int(nfe) if nfe == int(nfe) else nfe


@dataclass(frozen=True)
class Method:
    """A solver of one implementation at its default settings."""

    impl: str  # "ksampling" or "k-diffusion"
    solver: str
    kind: str  # "ode" (draws no noise) or "sde"
    nfe_per_step: int
    budget_option: str | None = None  # grid-free solvers that take the budget (dpm_fast: "nfe")
    adaptive: bool = False  # grid-free solvers steered by tolerances (dpm_adaptive)
    noise: str = "gaussian"  # the default noise: "gaussian" (i.i.d. per call) or "brownian" (a Brownian tree)

    @property
    def label(self) -> str:
        return self.solver if self.impl == "ksampling" else f"kd:{self.solver}"

    @property
    def grid_free(self) -> bool:
        return self.budget_option is not None or self.adaptive


_KDIFF_NFE_PER_STEP = {"heun": 2, "dpm_2": 2, "dpm_2_ancestral": 2, "dpmpp_2s_ancestral": 2, "dpmpp_sde": 2}
_KDIFF_BROWNIAN = ("dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde")  # k-diffusion's Brownian-tree samplers


def methods_for(solvers: Sequence[str], *, with_kdiff: bool = True) -> list[Method]:
    """The ksampling solvers named (all registered ones if empty) and, with ``with_kdiff``,
    k-diffusion's samplers of the same names."""
    methods = []
    for name in solvers:
        cls = samplers.get(name)
        meta = samplers.info(name)
        kind = "sde" if cls().draws_noise else "ode"
        fixed = meta.get("fixed_grid", True)
        budget_option = "nfe" if (not fixed and "nfe" in meta["options"]) else None
        methods.append(Method("ksampling", name, kind, int(meta["nfe_per_step"]), budget_option,
                              adaptive=not fixed and budget_option is None, noise=cls.default_noise))
    if with_kdiff and kdiff.available():
        for name in kdiff.KDIFF_SAMPLERS:
            if name not in solvers:
                continue
            kind = "sde" if name in kdiff.KDIFF_SDE else "ode"
            methods.append(Method("k-diffusion", name, kind, _KDIFF_NFE_PER_STEP.get(name, 1),
                                  "nfe" if name == "dpm_fast" else None, adaptive=name == "dpm_adaptive",
                                  noise="brownian" if name in _KDIFF_BROWNIAN else "gaussian"))
    return methods


def make_grid(schedule: str, steps: int, sigma_min: float, sigma_max: float) -> list[float]:
    """``steps + 1`` sigmas from σ_max to σ_min (the schedule's grid without its trailing 0)."""
    grid = schedules.get(schedule, steps + 1, sigma_min, sigma_max).tolist()
    if grid[-1] == 0.0:
        grid = grid[:-1]
    if len(grid) != steps + 1:
        raise ValueError(f"schedule {schedule!r} gave {len(grid)} sigmas for {steps} steps")
    return grid


def run_method(method: Method, model: Callable, x: torch.Tensor, grid: Sequence[float], *, budget: int | None = None,
               noise_sampler=None, generator=None, options: dict | None = None) -> torch.Tensor:
    """Run one method from x (at grid[0]) down to grid[-1]."""
    options = dict(options or {})
    sigma_max, sigma_min = grid[0], grid[-1]
    if method.budget_option:
        options[method.budget_option] = budget
    if method.impl == "ksampling":
        sigmas = torch.tensor(list(grid) if not method.grid_free else [sigma_max, sigma_min],
                              dtype=torch.float64, device=x.device)
        kwargs = {}
        if method.kind == "sde":
            kwargs = {"noise_sampler": noise_sampler} if noise_sampler is not None else {"generator": generator}
        return ksampling.sample(model, x, sigmas, method.solver, **kwargs, **options)
    sampling = kdiff.load()
    fn = getattr(sampling, f"sample_{method.solver}")
    if method.kind == "sde":
        if noise_sampler is None:
            # k-diffusion's own default noise draws from the global RNG; give it the same kind of
            # noise, from the run's generator(s)
            if method.noise == "brownian":
                noise_sampler = BrownianTreeNoiseSampler(x, sigma_min, sigma_max, generator=generator)
            else:
                noise_sampler = GaussianNoise(x, generator)
        options["noise_sampler"] = noise_sampler
    with torch.no_grad():
        if method.solver == "dpm_fast":
            return fn(model, x, sigma_min, sigma_max, options.pop("nfe"), disable=True, **options)
        if method.solver == "dpm_adaptive":
            return fn(model, x, sigma_min, sigma_max, disable=True, **options)
        return fn(model, x, torch.tensor(list(grid), dtype=torch.float64, device=x.device), disable=True, **options)


class _ZeroNoise:
    """A noise sampler that returns zeros and records the intervals it was asked for."""

    def __init__(self, like):
        self.like = like
        self.intervals: list[tuple[float, float]] = []

    def __call__(self, sigma, sigma_next):
        self.intervals.append((float(sigma), float(sigma_next)))
        return torch.zeros_like(self.like)


def dry_run(method: Method, grid: Sequence[float], budget: int | None = None) -> tuple[int, list]:
    """(NFE, noise intervals) of one run on a trivial model (D = 0, one sample): fixed-grid
    solvers' counts depend only on the grid, not on the model's values."""
    x = torch.full((1, 1), grid[0], dtype=torch.float64)
    model = CountingModel(lambda x, sigma: torch.zeros_like(x), 1)
    noise = _ZeroNoise(x)
    run_method(method, model, x, grid, budget=budget, noise_sampler=noise)
    return model.nfe, noise.intervals


@dataclass
class Plan:
    steps: int | None
    grid: list[float]
    nfe: int
    intervals: list  # the (sigma, sigma_next) of every noise draw

    def noise_mixing(self, noise: str) -> np.ndarray:
        """L with L Lᵀ = the correlation of the draws (see metrics.affine_output_moments)."""
        if noise == "brownian":
            return metrics.mixing_matrix(metrics.brownian_correlation(self.intervals))
        return np.eye(len(self.intervals))


def plan_steps(method: Method, schedule: str, budget: int, sigma_min: float, sigma_max: float) -> Plan | None:
    """The largest number of steps whose counted NFE fits in ``budget`` (None if none does)."""
    if method.budget_option:
        grid = [sigma_max, sigma_min]
        nfe, intervals = dry_run(method, grid, budget)
        return Plan(None, grid, nfe, intervals) if nfe <= budget else None
    cache: dict[int, tuple[int, list]] = {}

    def count(n):
        if n not in cache:
            cache[n] = dry_run(method, make_grid(schedule, n, sigma_min, sigma_max))
        return cache[n]

    n = max(1, budget // max(1, method.nfe_per_step))
    while n > 1 and count(n)[0] > budget:
        n -= 1
    if count(n)[0] > budget:
        return None
    while count(n + 1)[0] <= budget:
        n += 1
    nfe, intervals = count(n)
    return Plan(n, make_grid(schedule, n, sigma_min, sigma_max), nfe, intervals)



def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def generate(problem, method, grid: Sequence[float], seeds: Sequence[int], *, budget: int | None = None,
             batch: int = 256, device="cpu", noise_mixing=None) -> torch.Tensor:
    """Samples at ``grid[-1]`` for every seed (in the order of ``seeds``), float64.

    Under an initialised process group each rank runs its share of the chunks and the result
    is gathered to every rank; without one the process runs all chunks. With ``noise_mixing``
    (see :class:`benchmarks.metrics.CorrelatedNoise`) the solver's draws are correlated
    Gaussians of that structure, from each sample's generator, instead of its default noise.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    seeds = [int(s) for s in seeds]
    rank, world = rank_and_world()
    chunks = [seeds[i : i + batch] for i in range(0, len(seeds), batch)]
    mine = {}
    for c in range(rank, len(chunks), world):
        gens = [torch.Generator().manual_seed(s) for s in chunks[c]]
        x = torch.stack([torch.randn(problem.shape, generator=g, dtype=torch.float64) for g in gens])
        x = (x * problem.sigma_max).to(device)
        if noise_mixing is not None:
            noise = CorrelatedNoise(x, gens, noise_mixing)
            out = run_method(method, problem.denoiser, x, grid, budget=budget, noise_sampler=noise)
        else:
            out = run_method(method, problem.denoiser, x, grid, budget=budget, generator=gens)
        mine[c] = out.detach().to("cpu", torch.float64)
    if world > 1:
        gathered: list[dict] = [None] * world  # type: ignore[list-item]
        dist.all_gather_object(gathered, mine)
        for part in gathered:
            mine.update(part)
    missing = [c for c in range(len(chunks)) if c not in mine]
    if missing:
        raise RuntimeError(f"chunks {missing} were not generated")
    return torch.cat([mine[c] for c in range(len(chunks))]).to(device) if chunks else torch.empty(0)
