"""Run every solver × schedule × NFE budget on the problems and measure the error.

Where the samplers are compared: at σ_min. Every run integrates from σ_max = 80 down to
σ_min = 0.002 on a grid that ends at σ_min (the schedule's grid with its trailing 0
removed), so neither the sampler's own step to σ = 0 nor a final denoising call enters the
comparison; the reference is the exact ODE solution at σ_min from the same initial noise
(:mod:`benchmarks.reference`). NFE is what a counting wrapper around the model saw (rows
evaluated / batch), never assumed: a budget is met by choosing the largest step count whose
counted NFE (a dry run on a trivial model) fits in it, and budgets a solver cannot meet are
skipped.

* ODE solvers (those that draw no random numbers at their default settings): pathwise RMSE
  against the reference; for Gaussian data also the exact W2 / KL of their output law.
* SDE solvers: no pathwise error (their path is random); for Gaussian data the exact W2 / KL
  of their (Gaussian) output law; for mixtures the NLL of samples under the true density,
  minus that of exact samples, and the error in the share of samples per mode. Solvers whose
  default noise is a Brownian tree draw, for these samples, correlated Gaussians with the
  tree's exact correlations (:class:`benchmarks.metrics.CorrelatedNoise`): the same law, at a
  fraction of the cost of one tree per sample.
* Grid-free solvers: ``dpm_fast`` is given the budget (its ``nfe`` option); ``dpm_adaptive``
  runs at a ladder of tolerances and each run lands in the smallest budget at least its NFE.
"""

from __future__ import annotations

import math
import platform
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

import ksampling

from . import metrics
from .problems import Problem, get_problem, initial_noise
from .reference import reference_solution
from .runners import (  # noqa: F401  (the runners were defined here; their names stay importable)
    CountingModel, Method, Plan, dry_run, generate, make_grid, methods_for, plan_steps, run_method)
from .unseen import UNSEEN_PROBLEMS

__all__ = ["Method", "Config", "CountingModel", "methods_for", "plan_steps", "run_method", "run_suite", "make_grid"]

#: tolerances of the adaptive solvers' runs (rtol; atol = rtol / 10)
ADAPTIVE_RTOLS = (0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 1e-3, 3e-4, 1e-4)
#: solvers whose digits samples go into the picture (when they are run)
PICTURE_SOLVERS = ("euler", "heun", "dpmpp_2m", "unipc", "dpmpp_3m", "deis", "ipndm")
GRID_FREE = "-"  # the schedule name recorded for solvers that choose their own steps
EXACT_SAMPLES = 20000  # exact samples for the baseline NLL of the mixtures


@dataclass
class Config:
    problems: list[str]
    solvers: list[str]
    schedules: list[str]
    nfe: list[int]
    device: str = "cpu"
    seed: int = 0
    batch: int = 64
    dist_samples: int = 1000  # samples per run for the mixture distribution metrics
    dist_for_ode: bool = False  # also measure the distribution metrics of ODE solvers on mixtures
    #: schedules on which the SDE solvers (and the ODE solvers' distribution metrics) run; None: all
    sde_schedules: list[str] | None = None
    kdiff: bool = True
    progress: bool = True
    pictures: int = 8  # digits samples kept per picture cell
    reference_rtol: float = 1e-10
    #: budgets of the fitted rows (:func:`ksampling.fit.fit_sigmas`, solver "auto"); empty: none
    fit_nfe: list[int] = field(default_factory=list)
    fit_batch: int = 256  # noises the fit sees (a quarter validates); never the evaluation noise
    fit_seconds: float = 60.0  # the fit's own time limit (its refinement stops after about this long)


def environment(device: str) -> dict[str, Any]:
    env = {
        "ksampling": ksampling.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "device": device,
        "threads": torch.get_num_threads(),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        import scipy

        env["scipy"] = scipy.__version__
    except ImportError:  # pragma: no cover
        pass
    if device.startswith("cuda") and torch.cuda.is_available():
        env["device_name"] = torch.cuda.get_device_name(torch.device(device))
    return env


def _dist_metrics(problem: Problem, samples: torch.Tensor) -> dict[str, float]:
    log_p = problem.log_prob(samples.to(torch.float64), sigma=problem.sigma_min)
    out = {"nll": float(-log_p.mean())}
    if problem.modes is not None:
        out["mode_tv"] = metrics.mode_total_variation(samples, *problem.modes)
    return out


def run_suite(config: Config, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the configured benchmark; returns ``{"meta", "problems", "records", "pictures"}``."""

    device = torch.device(config.device)
    methods = methods_for(config.solvers, with_kdiff=config.kdiff)
    seeds = list(range(config.seed, config.seed + config.batch))
    dist_seeds = list(range(config.seed + 1_000_000, config.seed + 1_000_000 + config.dist_samples))
    records: list[dict[str, Any]] = []
    failures: list[str] = []
    pictures: dict[str, Any] = {}
    problem_meta = {}
    started = time.perf_counter()

    for problem_name in config.problems:
        if problem_name in UNSEEN_PROBLEMS:
            problem = UNSEEN_PROBLEMS[problem_name](device=device)
        else:
            problem = get_problem(problem_name, device=device) if problem_name != "digits-net" else \
                get_problem(problem_name, device=device, progress=config.progress)
        t0 = time.perf_counter()
        x_T = initial_noise(problem, seeds, device=device)
        reference = reference_solution(problem, x_T, rtol=config.reference_rtol, atol=config.reference_rtol)
        meta = {"description": problem.description, "kind": problem.kind, "dim": problem.dim,
                "data_std": problem.data_std, "sigma_min": problem.sigma_min, "sigma_max": problem.sigma_max,
                "reference": "closed form" if problem.exact_solution is not None else
                f"DOP853 rtol=atol={config.reference_rtol:g}", "reference_seconds": time.perf_counter() - t0,
                **problem.extra}
        if problem.kind == "mixture":
            # the baseline NLL (the entropy of the true law at sigma_min), from many exact samples
            gen = torch.Generator().manual_seed(config.seed + 2_000_000)
            exact = problem.sample_data(EXACT_SAMPLES, gen).to(torch.float64)
            exact = exact + problem.sigma_min * torch.randn(exact.shape, generator=gen, dtype=exact.dtype).to(exact)
            meta["exact_samples"] = {**_dist_metrics(problem, exact), "n": EXACT_SAMPLES}
        problem_meta[problem.name] = meta
        if problem.image_shape is not None:
            pictures[problem.name] = {"reference": reference[: config.pictures].cpu().numpy().tolist(), "runs": {}}

        jobs = []
        for method in methods:
            if method.kind == "sde" and problem.kind not in ("gaussian", "mixture"):
                continue  # no distribution metric for the ideal denoiser / the network
            if method.grid_free:
                jobs.append((method, GRID_FREE))
            else:
                for schedule in config.schedules:
                    if method.impl == "k-diffusion" and schedule != "karras":
                        continue  # k-diffusion is compared on its own recommended grid
                    if method.kind == "sde" and config.sde_schedules is not None \
                            and schedule not in config.sde_schedules:
                        continue
                    jobs.append((method, schedule))
        bar = tqdm(total=len(jobs) * len(config.nfe), desc=problem.name, disable=not config.progress, leave=False)
        for method, schedule in jobs:
            if method.adaptive:
                bar.update(len(config.nfe))
                try:
                    records.extend(_run_adaptive(method, problem, x_T, reference, config))
                except Exception as exc:  # one failing solver must not sink the whole run
                    failures.append(f"{problem.name} / {method.label}: {type(exc).__name__}: {exc}")
                    log(f"  FAILED {failures[-1]}")
                continue
            for budget in config.nfe:
                bar.update(1)
                try:
                    try:
                        plan = plan_steps(method, schedule, budget, problem.sigma_min, problem.sigma_max)
                    except ValueError as exc:  # a schedule that cannot make this many steps
                        log(f"  skipped {method.label} / {schedule} / {budget}: {exc}")
                        continue
                    if plan is None:
                        continue
                    rec = dict(problem=problem.name, impl=method.impl, solver=method.solver, label=method.label,
                               kind=method.kind, schedule=schedule, nfe_budget=budget, steps=plan.steps)
                    t1 = time.perf_counter()
                    if method.kind == "ode":
                        model = CountingModel(problem.denoiser, x_T.shape[0])
                        out = run_method(method, model, x_T.clone(), plan.grid, budget=budget)
                        err = metrics.rmse(out, reference)
                        rec.update(nfe=model.nfe, rmse=err, rel_rmse=err / problem.data_std,
                                   rel_median=metrics.median_sample_error(out, reference) / problem.data_std)
                        if problem.name in pictures and method.impl == "ksampling" and method.solver in PICTURE_SOLVERS \
                                and schedule == "karras":
                            pictures[problem.name]["runs"][f"{method.label}|{budget}"] = \
                                out[: config.pictures].cpu().numpy().tolist()
                    else:
                        rec.update(nfe=plan.nfe)
                    if problem.kind == "gaussian":
                        mean, cov = metrics.affine_output_moments(
                            lambda x, noise: run_method(method, problem.denoiser, x, plan.grid, budget=budget,
                                                        noise_sampler=noise),
                            problem.dim, problem.sigma_max,
                            plan.noise_mixing(method.noise) if method.kind == "sde" else None, device=device)
                        t_mean, t_cov = problem.target_gaussian()
                        rec.update(w2=metrics.gaussian_w2(mean, cov, t_mean, t_cov),
                                   kl=metrics.gaussian_kl(mean, cov, t_mean, t_cov))
                    elif problem.kind == "mixture" and (method.kind == "sde" or (
                            config.dist_for_ode and (config.sde_schedules is None or schedule in config.sde_schedules))):
                        # a Brownian tree per sample is slow; its law is that of correlated Gaussian draws
                        mixing = plan.noise_mixing(method.noise) if method.noise == "brownian" else None
                        samples = generate(problem, method, plan.grid, dist_seeds, budget=budget, batch=config.batch * 4,
                                           device=device, noise_mixing=mixing)
                        dist = _dist_metrics(problem, samples)
                        rec.update(dist, excess_nll=dist["nll"] - meta["exact_samples"]["nll"])
                    rec["seconds"] = time.perf_counter() - t1
                    records.append(rec)
                except Exception as exc:  # one failing solver must not sink the whole run
                    failures.append(f"{problem.name} / {method.label} / {schedule} / {budget}: "
                                    f"{type(exc).__name__}: {exc}")
                    log(f"  FAILED {failures[-1]}")
                    records.append(dict(problem=problem.name, impl=method.impl, solver=method.solver,
                                        label=method.label, kind=method.kind, schedule=schedule,
                                        nfe_budget=budget, error=f"{type(exc).__name__}: {exc}"))
        bar.close()
        for budget in config.fit_nfe:
            try:
                records.append(_run_fit(problem, x_T, reference, budget, config))
                log(f"  fitted {problem.name} NFE {budget}: {records[-1]['fit_choice']} "
                    f"({records[-1]['fit_seconds']:.0f} s)")
            except Exception as exc:  # one failing fit must not sink the whole run
                failures.append(f"{problem.name} / fitted / {budget}: {type(exc).__name__}: {exc}")
                log(f"  FAILED {failures[-1]}")

    env = environment(str(device))
    env["seconds"] = time.perf_counter() - started
    env["failures"] = failures
    return {"meta": {**env, "config": asdict(config)}, "problems": problem_meta, "records": records,
            "pictures": pictures}


FIT_SEED_OFFSET = 3_000_000  # the fit's noise: seeds the evaluation (seed ... seed + batch) never uses


def _run_fit(problem: Problem, x_T, reference, budget: int, config: Config) -> dict[str, Any]:
    """A fitted row: ``fit_sigmas(solver="auto")`` on noise of its own (seeds from
    ``seed + FIT_SEED_OFFSET``), then evaluated like every other row on the run's noise ``x_T``
    against the reference, with the fit's cost (model calls, seconds)."""
    from ksampling.fit import fit_sigmas

    seeds = range(config.seed + FIT_SEED_OFFSET, config.seed + FIT_SEED_OFFSET + config.fit_batch)
    x_fit = initial_noise(problem, seeds, device=x_T.device, dtype=x_T.dtype)
    t0 = time.perf_counter()
    result = fit_sigmas(problem.denoiser, x_fit, budget, sigma_min=problem.sigma_min, sigma_max=problem.sigma_max,
                        generator=torch.Generator().manual_seed(config.seed), max_seconds=config.fit_seconds)
    fit_seconds = time.perf_counter() - t0
    model = CountingModel(problem.denoiser, x_T.shape[0])
    t1 = time.perf_counter()
    out = result.sample(model, x_T.clone())
    err = metrics.rmse(out, reference)
    report = result.report
    base = result.options.get("base", result.solver)
    return dict(problem=problem.name, impl="ksampling-fit", solver=result.solver, label="fit:auto", kind="ode",
                schedule="fitted", nfe_budget=budget, steps=len(result.sigmas) - 1, nfe=model.nfe, rmse=err,
                rel_rmse=err / problem.data_std,
                rel_median=metrics.median_sample_error(out, reference) / problem.data_std,
                seconds=time.perf_counter() - t1, fit_seconds=fit_seconds,
                fit_model_calls=report["model_calls"], fit_teacher_calls=report["model_calls_teacher"],
                fit_base=base, fit_choice=report["choice"], fit_helped=report["fitting_helped"],
                fit_teacher_error=report["teacher"].get("estimated_rmse"),
                fit_sigmas=result.sigmas.tolist(), fit_options=result.options)


def _run_adaptive(method: Method, problem: Problem, x_T, reference, config: Config) -> list[dict[str, Any]]:
    """An adaptive solver at a ladder of tolerances; each run is filed under the smallest
    budget that holds its counted NFE (runs beyond the largest budget are dropped)."""
    best: dict[int, dict[str, Any]] = {}
    grid = [problem.sigma_max, problem.sigma_min]
    for rtol in ADAPTIVE_RTOLS:
        model = CountingModel(problem.denoiser, x_T.shape[0])
        t1 = time.perf_counter()
        out = run_method(method, model, x_T.clone(), grid, options={"rtol": rtol, "atol": rtol / 10})
        fits = [b for b in config.nfe if b >= model.nfe]
        if not fits:
            continue
        budget = min(fits)
        err = metrics.rmse(out, reference)
        rec = dict(problem=problem.name, impl=method.impl, solver=method.solver, label=method.label, kind=method.kind,
                   schedule=GRID_FREE, nfe_budget=budget, steps=None, nfe=model.nfe, rmse=err,
                   rel_rmse=err / problem.data_std,
                   rel_median=metrics.median_sample_error(out, reference) / problem.data_std,
                   rtol=rtol, seconds=time.perf_counter() - t1)
        if budget not in best or err < best[budget]["rmse"]:
            best[budget] = rec
    return [best[b] for b in sorted(best)]
