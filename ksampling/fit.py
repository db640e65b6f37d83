"""Fit a sampler to a model at a fixed budget of model calls (GITS / AYS / LD3 / S4S style).

:func:`fit_sigmas` sees only the model and a batch of starting noise. It

1. builds a **teacher**: ksampling's own high-accuracy solve of the same probability-flow
   ODE from the same noise (third-order UniPC on a Karras grid, doubled until two resolutions agree; its
   accuracy is measured and reported), unless the caller passes one;
2. splits the noise into a **training** and a **validation** part;
3. evaluates the **fixed schedules** (Karras, exponential, kl_optimal, polyexponential,
   beta) for the solver at the budget, on both parts;
4. **fits** the σ grid — its ``steps − 1`` interior points, parameterised as positive
   increments in log σ (a softmax, so every candidate is a valid descending grid) — to
   minimise the fitted sampler's own final-sample error against the teacher on the training
   part, starting from the best fixed schedule;
5. optionally fits, on top of the grid, a per-step **model-input σ** (LD3) and a per-step
   **update scale** (an S4S-style coefficient correction): options of the registered
   ``fitted`` solver, kept only when they lower the validation error;
6. returns the best candidate **on validation**, never worse there than the best fixed
   schedule (returned instead, and said so, when fitting does not help).

Why gradient-free: the solvers compute their coefficients on the host in float64 from the
sigma list, so there is no autograd path from σ to the sample. With at most ~2·NFE
parameters, a Nelder–Mead search whose every evaluation is one batched :func:`sample` call
costs a few hundred to a few thousand sampler runs — seconds to a minute for small models
on a CPU, minutes for a real network on a GPU.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from . import schedules
from .samplers import base as _registry
from .samplers.loop import sample

__all__ = ["fit_sigmas", "FitResult", "FIXED_SCHEDULES", "AUTO_SOLVERS", "OBJECTIVES"]

#: The fixed schedules every fit is compared with: (label, schedule name, its options).
FIXED_SCHEDULES: tuple[tuple[str, str, dict], ...] = (
    ("karras", "karras", {}),
    ("exponential", "exponential", {}),
    ("kl_optimal", "kl_optimal", {}),
    ("polyexponential(rho=2)", "polyexponential", {"rho": 2.0}),
    ("karras(rho=3)", "karras", {"rho": 3.0}),
    ("beta", "beta", {}),
)
#: The (solver, options) that ``solver="auto"`` screens: deterministic one-call-per-step
#: multistep solvers, the ones that do best at 4–10 model calls.
AUTO_SOLVERS: tuple[tuple[str, dict], ...] = (
    ("ipndm", {}),
    ("ipndm_v", {}),
    ("deis", {}),
    ("unipc", {}),
    ("unipc", {"order": 3}),
    ("dpmpp_2m", {}),
    ("dpmpp_3m", {}),
    ("res_multistep", {}),
    ("gradient_estimation", {}),
)
#: How per-sample errors e_b (RMS over a sample's coordinates) become one number.
OBJECTIVES = ("rmse", "mean", "median")
MIN_BATCH = 8  # at least 4 noises to train on and 4 to validate on


@dataclass
class FitResult:
    """A fitted sampler: ``ksampling.sample(model, x, r.sigmas, r.solver, **r.options)``
    uses exactly ``r.nfe`` model calls per sample and reproduces the fit.

    ``sigmas`` are float64, descending, from ``sigma_max`` to ``sigma_min`` (no trailing 0);
    ``report`` holds the teacher's accuracy, the train and validation errors of the fitted
    sampler and of every fixed baseline, what was tried, and the model calls and seconds.
    """

    sigmas: torch.Tensor
    solver: str
    options: dict[str, Any]
    nfe: int
    report: dict[str, Any] = field(default_factory=dict)

    def sample(self, model: Callable, x: torch.Tensor, **kwargs) -> torch.Tensor:
        """Sample with the fitted sampler: ``ksampling.sample(model, x, sigmas, solver, **options)``."""
        return sample(model, x, self.sigmas.to(x.device), self.solver, **kwargs, **self.options)

    # -- exports ------------------------------------------------------------------------------
    def to_comfyui(self, append_zero: bool = False) -> list[float]:
        """The sigmas as a plain list for ComfyUI's custom-sigma nodes. ``append_zero`` adds
        the final step to σ = 0 (one more model call for most samplers: x ← D(x; σ_min))."""
        values = [float(s) for s in self.sigmas.tolist()]
        return values + [0.0] if append_zero else values

    def to_kdiffusion(self) -> tuple[torch.Tensor, Callable]:
        """``(sigmas, sample_fn)`` for the ``ksampling.kdiffusion`` drop-in:
        ``sample_fn(model, x, sigmas)`` runs the fitted solver (k-diffusion's calling
        convention: ``extra_args``, ``callback``, ``disable`` are accepted)."""
        solver, options = self.solver, dict(self.options)

        def sample_fn(model, x, sigmas, extra_args=None, callback=None, disable=None, **kwargs):
            return sample(model, x, sigmas, solver, extra_args=extra_args, callback=callback,
                          progress=disable is False, **kwargs, **options)

        return self.sigmas.clone(), sample_fn

    # -- JSON -----------------------------------------------------------------------------------
    def to_json(self) -> str:
        """The result as JSON (sigmas as exact float64 values: ``repr`` round-trips)."""
        return json.dumps({"sigmas": [float(s) for s in self.sigmas.tolist()], "solver": self.solver,
                           "options": self.options, "nfe": self.nfe, "report": _jsonable(self.report)}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "FitResult":
        """The inverse of :meth:`to_json`."""
        data = json.loads(text)
        try:
            return cls(sigmas=torch.tensor(data["sigmas"], dtype=torch.float64), solver=data["solver"],
                       options=data["options"], nfe=int(data["nfe"]), report=data.get("report", {}))
        except KeyError as exc:
            raise ValueError(f"not a FitResult JSON: missing {exc}") from None

    def summary(self) -> str:
        """A few lines: what was fitted and its validation error against the best fixed schedule."""
        r = self.report
        lines = [f"{self.solver} {self.options.get('base', '')} NFE {self.nfe}: {r.get('choice', '')}".rstrip()]
        if "validation" in r and "best_fixed" in r:
            v, b = r["validation"], r["best_fixed"]
            lines.append(f"validation rmse {v['rmse']:.3g} median {v['median']:.3g}; best fixed "
                         f"({b['label']}) rmse {b['validation']['rmse']:.3g} median {b['validation']['median']:.3g}")
        return "\n".join(lines)


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# -- the pieces ---------------------------------------------------------------------------------
class _CountingModel:
    """Counts model evaluations (rows / batch) and raises on non-finite output."""

    def __init__(self, model):
        self.model = model
        self.rows = 0

    def __call__(self, x, sigma, **extra_args):
        self.rows += x.shape[0]
        return self.model(x, sigma, **extra_args)


def _subset_args(extra_args: Mapping[str, Any], batch: int, index: torch.Tensor) -> dict[str, Any]:
    """extra_args for a subset of the batch: tensors whose first dimension is the batch are indexed."""
    out = {}
    for k, v in extra_args.items():
        if isinstance(v, torch.Tensor) and v.ndim >= 1 and v.shape[0] == batch:
            v = v[index.to(v.device)]
        out[k] = v
    return out


def _count_nfe(solver: str, options: dict, steps: int, sigma_min: float, sigma_max: float) -> int:
    """Model calls per sample of ``steps`` steps (a dry run on D = 0: fixed-grid counts depend
    only on the grid)."""
    grid = _fixed_grid("exponential", {}, steps, sigma_min, sigma_max)
    x = torch.full((1, 1), sigma_max, dtype=torch.float64)
    _, info = sample(lambda x, s: torch.zeros_like(x), x, grid, solver, return_info=True,
                     check_finite=False, **options)
    return info.nfe


def _steps_for(solver: str, options: dict, nfe: int, sigma_min: float, sigma_max: float) -> tuple[int, int]:
    """(steps, counted NFE): the most steps whose counted NFE fits in ``nfe``."""
    per_step = max(1, int(_registry.get(solver).nfe_per_step))
    steps = max(1, nfe // per_step)
    while steps > 1 and _count_nfe(solver, options, steps, sigma_min, sigma_max) > nfe:
        steps -= 1
    count = _count_nfe(solver, options, steps, sigma_min, sigma_max)
    if count > nfe:
        raise ValueError(f"nfe={nfe} is too small for solver {solver!r}: one step costs {count} model calls")
    while _count_nfe(solver, options, steps + 1, sigma_min, sigma_max) <= nfe:
        steps += 1
        count = _count_nfe(solver, options, steps, sigma_min, sigma_max)
    return steps, count


def _fixed_grid(name: str, params: dict, steps: int, sigma_min: float, sigma_max: float) -> list[float] | None:
    try:
        grid = schedules.get(name, steps + 1, sigma_min, sigma_max, **params).tolist()
    except ValueError:
        return None
    if grid[-1] == 0.0:
        grid = grid[:-1]
    if len(grid) != steps + 1 or any(not a > b for a, b in zip(grid, grid[1:])):
        return None
    return grid


def _grid_params(grid: Sequence[float]) -> np.ndarray:
    """The free parameters of a grid: log-increments in log σ relative to the first step."""
    log_inc = np.log(-np.diff(np.log(np.asarray(grid, np.float64))))
    return log_inc[1:] - log_inc[0]


def _grid_from(theta: np.ndarray, sigma_min: float, sigma_max: float) -> list[float]:
    """The descending grid whose log-σ increments are softmax([0, θ]) · log(σ_max / σ_min)."""
    logits = np.concatenate([[0.0], np.clip(theta, -30, 30)])
    w = np.exp(logits - logits.max())
    w /= w.sum()
    log_sigmas = math.log(sigma_max) - np.concatenate([[0.0], np.cumsum(w)]) * math.log(sigma_max / sigma_min)
    grid = np.exp(log_sigmas)
    grid[0], grid[-1] = sigma_max, sigma_min
    return grid.tolist()


def nelder_mead(f: Callable[[np.ndarray], float], x0: np.ndarray, *, step: float = 0.3, max_evals: int = 400,
                tol: float = 1e-4, deadline: float = math.inf) -> tuple[np.ndarray, float, int]:
    """Minimise ``f`` from ``x0`` by Nelder–Mead with the dimension-adaptive coefficients of
    Gao & Han (2012); returns (x, f(x), evaluations). Deterministic."""
    n = len(x0)
    if n == 0:
        return x0, f(x0), 1
    alpha, gamma = 1.0, 1.0 + 2.0 / n
    rho, shrink = 0.75 - 1.0 / (2 * n), 1.0 - 1.0 / n
    simplex = [np.array(x0, np.float64)] + [x0 + step * np.eye(n)[i] for i in range(n)]
    values = [f(p) for p in simplex]
    evals = n + 1
    while evals < max_evals and time.perf_counter() < deadline:
        order = np.argsort(values)
        simplex = [simplex[i] for i in order]
        values = [values[i] for i in order]
        if abs(values[-1] - values[0]) <= tol * max(abs(values[0]), 1e-300) and \
                max(np.max(np.abs(p - simplex[0])) for p in simplex[1:]) < 1e-3:
            break
        centroid = np.mean(simplex[:-1], axis=0)
        reflected = centroid + alpha * (centroid - simplex[-1])
        f_r = f(reflected)
        evals += 1
        if values[0] <= f_r < values[-2]:
            simplex[-1], values[-1] = reflected, f_r
            continue
        if f_r < values[0]:
            expanded = centroid + gamma * (reflected - centroid)
            f_e = f(expanded)
            evals += 1
            simplex[-1], values[-1] = (expanded, f_e) if f_e < f_r else (reflected, f_r)
            continue
        if f_r < values[-1]:
            contracted = centroid + rho * (reflected - centroid)
        else:
            contracted = centroid + rho * (simplex[-1] - centroid)
        f_c = f(contracted)
        evals += 1
        if f_c < min(f_r, values[-1]):
            simplex[-1], values[-1] = contracted, f_c
            continue
        for i in range(1, n + 1):
            simplex[i] = simplex[0] + shrink * (simplex[i] - simplex[0])
            values[i] = f(simplex[i])
        evals += n
    best = int(np.argmin(values))
    return simplex[best], values[best], evals


# -- the fit ------------------------------------------------------------------------------------
class _Problem:
    """The model, the noise split and the teacher: evaluates a (grid, solver, options)."""

    def __init__(self, model, x, teacher, train, val, extra_args, objective):
        self.counter = _CountingModel(model)
        self.batch = x.shape[0]
        self.x_train, self.x_val = x[train], x[val]
        self.t_train, self.t_val = teacher[train], teacher[val]
        self.args_train = _subset_args(extra_args, x.shape[0], train)
        self.args_val = _subset_args(extra_args, x.shape[0], val)
        self.objective = objective
        self.evaluations = 0

    def errors(self, grid, solver, options, part="train") -> np.ndarray:
        x, t, args = (self.x_train, self.t_train, self.args_train) if part == "train" else \
            (self.x_val, self.t_val, self.args_val)
        grid_t = torch.tensor(grid, dtype=torch.float64, device=x.device)
        self.evaluations += 1
        out = sample(self.counter, x, grid_t, solver, extra_args=args, **options)
        diff = (out - t).to(torch.float64).reshape(len(x), -1)
        return diff.pow(2).mean(dim=1).sqrt().cpu().numpy()

    def score(self, errors: np.ndarray) -> float:
        if not np.all(np.isfinite(errors)):
            return math.inf
        if self.objective == "rmse":
            return float(np.sqrt(np.mean(errors**2)))
        if self.objective == "median":
            return float(np.median(errors))
        return float(np.mean(errors))

    def measure(self, grid, solver, options) -> dict[str, dict[str, float]]:
        out = {}
        for part in ("train", "validation"):
            e = self.errors(grid, solver, options, "train" if part == "train" else "val")
            out[part] = {"rmse": float(np.sqrt(np.mean(e**2))), "median": float(np.median(e)),
                         "mean": float(np.mean(e)), "objective": self.score(e)}
        return out


def _teacher(model, x, sigma_min, sigma_max, extra_args, *, steps=64, max_steps=1024, rtol=3e-4):
    """x(σ_min) by third-order UniPC (bh2 with its corrector) on a Karras grid, doubling the
    steps until two resolutions agree to ``rtol`` of the samples' scale; returns (solution,
    accuracy report). On the benchmark problems 128 steps of it are within 1e-5..3e-4 (of the
    data scale) of DOP853, where Heun with the same model calls is 10-100x further off."""
    def solve(n):
        grid = schedules.karras(n + 1, sigma_min, sigma_max)[:-1].to(x.device)
        return sample(model, x, grid, "unipc", order=3, extra_args=extra_args)

    coarse = solve(steps)
    calls = steps
    while True:
        fine = solve(2 * steps)
        steps *= 2
        calls += steps
        diff = float((fine - coarse).to(torch.float64).pow(2).mean().sqrt())
        scale = float(fine.to(torch.float64).std())
        if diff <= rtol * scale or 2 * steps > max_steps:
            break
        coarse = fine
    # third order: the finer solution's error is about diff / (2^3 − 1)
    report = {"method": f"unipc (order 3), karras grid, {steps} steps", "steps": steps,
              "two_resolution_rms_difference": diff, "estimated_rmse": diff / 7, "sample_scale": scale,
              "converged": diff <= rtol * scale}
    return fine, report


def _check_inputs(model, x, nfe, sigma_min, sigma_max, solver, objective, validation):
    if not callable(model):
        raise TypeError(f"model must be callable as model(x, sigma, **extra_args), got {type(model).__name__}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError("x must be a floating-point torch.Tensor (the starting noise, scaled by sigma_max)")
    if isinstance(nfe, bool) or not isinstance(nfe, int):
        raise TypeError(f"nfe must be an int, got {type(nfe).__name__}")
    if nfe < 1:
        raise ValueError(f"nfe must be >= 1, got {nfe}")
    for name, v in (("sigma_min", sigma_min), ("sigma_max", sigma_max)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
    if not sigma_min < sigma_max:
        raise ValueError(f"sigma_min must be < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(map(repr, OBJECTIVES))}; got {objective!r}")
    if not 0 < validation < 1:
        raise ValueError(f"validation must be a fraction in (0, 1), got {validation}")
    if x.ndim < 1 or x.shape[0] < MIN_BATCH or round(x.shape[0] * validation) < MIN_BATCH // 2 or \
            x.shape[0] - round(x.shape[0] * validation) < MIN_BATCH // 2:
        raise ValueError(
            f"x holds {x.shape[0] if x.ndim else 0} noises: too few to hold out validation noise; pass a batch of "
            f"at least {MIN_BATCH} with at least {MIN_BATCH // 2} in each of the training and validation parts "
            f"(validation={validation})")
    if solver != "auto":
        cls = _registry.get(solver)  # unknown names: ValueError listing the known ones
        if not cls.fixed_grid:
            raise ValueError(f"solver {solver!r} is adaptive (chooses its own steps); the fit needs a fixed-grid "
                             "solver, or solver='auto'")
        if cls.name == "fitted":
            raise ValueError("solver='fitted' is the fit's output; pass its base solver instead")


def fit_sigmas(model: Callable, x: torch.Tensor, nfe: int, *, sigma_min: float, sigma_max: float,
               solver: str = "auto", extra_args: Mapping[str, Any] | None = None,
               generator: torch.Generator | None = None, progress: bool = False,
               teacher: torch.Tensor | Callable | None = None, validation: float = 0.25,
               objective: str = "mean", corrections: bool = True, max_seconds: float | None = 60.0,
               max_evals: int = 600, **options) -> FitResult:
    """Fit a sampler (σ grid, and per-step corrections where they help) to ``model`` at
    ``nfe`` model calls per sample.

    Args:
        model: the denoiser ``model(x, sigma_batch, **extra_args) -> D`` (as for :func:`sample`).
        x: a batch of starting noise scaled by ``sigma_max``: the only data the fit sees.
        nfe: model calls per sample of the fitted sampler (``result.nfe`` is the counted number,
            the largest a whole number of the solver's steps fits in).
        sigma_min, sigma_max: the grid runs from ``sigma_max`` to ``sigma_min`` (no trailing 0).
        solver: a registered fixed-grid solver (its grid is fitted), or ``"auto"``: screen
            :data:`AUTO_SOLVERS` on the fixed schedules and fit the best.
        extra_args: passed to every model call (conditioning, guidance scale); tensors whose
            first dimension is the batch are split with the noise.
        generator: draws the training/validation split (``None``: the last part validates).
            Everything else is deterministic, so the same generator seed gives the same result
            (when ``max_seconds`` does not cut the search).
        progress: print what the fit is doing.
        teacher: the exact answer x(σ_min) for ``x``, a tensor like ``x`` or a callable
            ``teacher(x) -> tensor``; by default ksampling's own third-order UniPC solve
            (64, 128, ... steps until two resolutions agree to 3e-4 of the samples' scale).
        validation: the fraction of ``x`` held out.
        objective: the training loss over per-sample RMS errors: ``"mean"`` (default; between
            the two), ``"rmse"`` (dominated by samples that switch modes) or ``"median"``.
        corrections: also try the ``fitted`` solver's per-step model-input σ (LD3) and update
            scale (S4S-style); kept only when they lower the validation error.
        max_seconds: stop refining after about this long (the teacher and the baselines always
            run); ``None``: no time limit, only ``max_evals``. A fit cut short by the clock
            depends on the machine's speed; with ``None`` it is deterministic.
        max_evals: sampler runs per Nelder–Mead search.
        **options: the solver's options (``order=3``, ...); with ``"auto"``, none.

    Returns:
        A :class:`FitResult`; ``result.report`` says what was fitted and whether it beat the
        fixed schedules on validation.

    Raises:
        ValueError: ``nfe`` < 1, ``sigma_min`` >= ``sigma_max``, an adaptive or unknown
            solver, a batch too small to hold out validation noise, a model that returns NaN
            or inf during the fit, a teacher of the wrong shape.
        TypeError: arguments of the wrong type, or solver options with ``solver="auto"``.
    """
    started = time.perf_counter()
    deadline = math.inf if max_seconds is None else started + max_seconds
    _check_inputs(model, x, nfe, sigma_min, sigma_max, solver, objective, validation)
    if solver == "auto" and options:
        raise TypeError(f"solver='auto' chooses the options itself; got {', '.join(options)}")
    extra_args = dict(extra_args or {})
    sigma_min, sigma_max = float(sigma_min), float(sigma_max)
    log = print if progress else (lambda *a, **k: None)

    candidates = list(AUTO_SOLVERS) if solver == "auto" else [(solver, dict(options))]
    planned = []
    for name, opts in candidates:
        try:
            steps, count = _steps_for(name, opts, nfe, sigma_min, sigma_max)
        except ValueError:
            if solver != "auto":
                raise
            continue
        planned.append((name, opts, steps, count))
    if not planned:
        raise ValueError(f"nfe={nfe} is too small for every solver tried")

    # the split: a permutation drawn from the generator (or the last part validates)
    batch = x.shape[0]
    n_val = round(batch * validation)
    if generator is not None:
        perm = torch.randperm(batch, generator=generator)
    else:
        perm = torch.arange(batch)
    val_idx, train_idx = perm[batch - n_val:].sort().values, perm[: batch - n_val].sort().values

    counter = _CountingModel(model)
    try:
        if teacher is None:
            target, teacher_report = _teacher(counter, x, sigma_min, sigma_max, extra_args)
        else:
            target = teacher(x) if callable(teacher) else teacher
            if not isinstance(target, torch.Tensor) or target.shape != x.shape:
                raise ValueError(f"teacher must be a tensor of x's shape {tuple(x.shape)} (or a callable giving one)")
            teacher_report = {"method": "given by the caller", "converged": None}
    except ValueError as exc:
        if "non-finite" in str(exc):
            raise ValueError(f"the model returned NaN or inf during the fit (teacher solve): {exc}") from None
        raise
    teacher_calls = counter.rows / batch
    log(f"teacher: {teacher_report['method']}, two-resolution difference "
        f"{teacher_report.get('two_resolution_rms_difference', float('nan')):.2e}")

    prob = _Problem(model, x, target.to(x.dtype), train_idx, val_idx, extra_args, objective)

    def evaluate(grid, name, opts, part="train"):
        try:
            return prob.score(prob.errors(grid, name, opts, part))
        except ValueError as exc:
            if "non-finite" in str(exc):
                if part == "train" and name and evaluate.baseline_done:
                    return math.inf  # a wild candidate grid; the search moves away from it
                raise ValueError(f"the model returned NaN or inf during the fit ({name}): {exc}") from None
            raise

    evaluate.baseline_done = False

    # 1. every solver on every fixed schedule
    baselines = []
    for name, opts, steps, count in planned:
        for label, sched, params in FIXED_SCHEDULES:
            grid = _fixed_grid(sched, params, steps, sigma_min, sigma_max)
            if grid is None:
                continue
            m = prob.measure(grid, name, opts)
            if not all(math.isfinite(v["rmse"]) for v in m.values()):
                continue
            baselines.append(dict(solver=name, options=opts, steps=steps, nfe=count, label=label, grid=grid, **m))
    evaluate.baseline_done = True
    if not baselines:
        raise ValueError("the model returned NaN or inf during the fit on every fixed schedule")

    # 2. fit the grid of the most promising solvers, from their best fixed schedules
    by_solver: dict[str, dict] = {}
    for b in baselines:
        key = b["solver"] + json.dumps(b["options"], sort_keys=True)
        if key not in by_solver or b["train"]["objective"] < by_solver[key]["train"]["objective"]:
            by_solver[key] = b
    ranked = sorted(by_solver.values(), key=lambda b: b["train"]["objective"])[: 2 if solver == "auto" else 1]
    tried = []
    fitted_candidates = []
    for start in ranked:
        name, opts, steps = start["solver"], start["options"], start["steps"]
        inits = sorted((b for b in baselines if b["solver"] == name and b["options"] == opts),
                       key=lambda b: b["train"]["objective"])[:2]
        best_theta, best_value = None, math.inf
        budget_each = max(0.0, (deadline - time.perf_counter())) / max(1, len(ranked) * len(inits))
        for init in inits:
            theta0 = _grid_params(init["grid"])
            theta, value, evals = nelder_mead(
                lambda t: evaluate(_grid_from(t, sigma_min, sigma_max), name, opts), theta0,
                max_evals=max_evals, deadline=time.perf_counter() + budget_each * (1.5 if init is inits[0] else 1))
            log(f"  {name}{opts or ''} from {init['label']}: train objective {init['train']['objective']:.4g} -> "
                f"{value:.4g} ({evals} runs)")
            if value < best_value:
                best_theta, best_value = theta, value
        grid = _grid_from(best_theta, sigma_min, sigma_max)
        m = prob.measure(grid, name, opts)
        cand = dict(solver=name, options=opts, steps=steps, nfe=start["nfe"], label="fitted grid", grid=grid,
                    run_solver=name, run_options=dict(opts), **m)
        fitted_candidates.append(cand)
        tried.append({"what": f"grid of {name}{opts or ''}", "train": m["train"], "validation": m["validation"]})

    # 3. per-step corrections (LD3 model-input σ, S4S-style update scale) on the best fitted grid
    fitted_candidates.sort(key=lambda c: c["train"]["objective"])
    best_fit = fitted_candidates[0]
    if corrections and time.perf_counter() < deadline:
        name, opts, grid, steps = best_fit["solver"], best_fit["options"], best_fit["grid"], best_fit["steps"]
        theta_grid = _grid_params(grid)

        def with_corrections(params, kinds):
            k = len(theta_grid)
            g = _grid_from(params[:k], sigma_min, sigma_max)
            rest = params[k:]
            fopts = {"base": name, "base_options": dict(opts)}
            for kind in kinds:
                fopts[kind] = [float(math.exp(v)) for v in np.clip(rest[:steps], -3, 3)]
                rest = rest[steps:]
            return g, fopts

        for kinds in (("model_sigma_scale",), ("model_sigma_scale", "update_scale")):
            if time.perf_counter() >= deadline:
                break
            p0 = np.concatenate([theta_grid, np.zeros(steps * len(kinds))])
            params, value, evals = nelder_mead(
                lambda p: evaluate(*with_corrections(p, kinds)[:1], "fitted", with_corrections(p, kinds)[1]),
                p0, step=0.1, max_evals=max_evals, deadline=deadline)
            g, fopts = with_corrections(params, kinds)
            m = prob.measure(g, "fitted", fopts)
            label = " + ".join(["fitted grid"] + [k.replace("_", " ") for k in kinds])
            tried.append({"what": f"{label} ({name})", "train": m["train"], "validation": m["validation"]})
            log(f"  {label}: train {m['train']['objective']:.4g}, validation {m['validation']['objective']:.4g} "
                f"({evals} runs)")
            # kept only if it helps on validation by a clear margin (1 %), not by noise
            if m["validation"]["objective"] < 0.99 * best_fit["validation"]["objective"]:
                best_fit = dict(best_fit, label=label, grid=g, run_solver="fitted", run_options=fopts, **m)

    # 4. never worse on validation than the best fixed schedule of the same solver
    same = [b for b in baselines if b["solver"] == best_fit["solver"] and b["options"] == best_fit["options"]]
    best_fixed_same = min(same, key=lambda b: b["validation"]["objective"])
    best_fixed_any = min(baselines, key=lambda b: b["validation"]["objective"])
    if solver == "auto":
        floor = best_fixed_any
    else:
        floor = best_fixed_same
    if best_fit["validation"]["objective"] <= floor["validation"]["objective"]:
        chosen, helped = best_fit, True
        choice = f"{best_fit['label']} of {best_fit['solver']}{best_fit['options'] or ''}"
    else:
        chosen, helped = dict(floor, run_solver=floor["solver"], run_options=dict(floor["options"])), False
        choice = (f"fitting did not help on validation; returned the best fixed schedule "
                  f"({floor['label']} with {floor['solver']}{floor['options'] or ''})")
    log(choice)

    seconds = time.perf_counter() - started
    report = {
        "choice": choice,
        "fitting_helped": helped,
        "objective": objective,
        "teacher": {**teacher_report, "model_calls_per_sample": teacher_calls},
        "train": chosen["train"],
        "validation": chosen["validation"],
        "best_fixed": {"label": floor["label"], "solver": floor["solver"], "options": floor["options"],
                       "train": floor["train"], "validation": floor["validation"]},
        "baselines": [{"solver": b["solver"], "options": b["options"], "schedule": b["label"], "nfe": b["nfe"],
                       "train": b["train"], "validation": b["validation"]} for b in baselines],
        "tried": tried,
        "split": {"train": train_idx.tolist(), "validation": val_idx.tolist()},
        "model_calls": (prob.counter.rows + counter.rows) / batch,
        "model_calls_teacher": teacher_calls,
        "sampler_runs": prob.evaluations,
        "seconds": seconds,
    }
    return FitResult(sigmas=torch.tensor(chosen["grid"], dtype=torch.float64), solver=chosen["run_solver"],
                     options=chosen["run_options"], nfe=int(chosen["nfe"]), report=report)
