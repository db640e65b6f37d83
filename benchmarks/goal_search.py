"""Which solver + schedule reaches half of k-diffusion's error at 10 NFE?

``python -m benchmarks.goal_search`` runs a grid of solver options × schedule parameters at
one budget (default 10 NFE) on the mixture problems, the digits and the digits network, on
seeds the main run does not use (1000…1127, so nothing is tuned on the reported numbers),
and prints, per combination, its relative RMSE divided by the best of k-diffusion's ODE
samplers on the Karras grid (ρ = 7) at the same budget, ranked by the geometric mean over
the problems. A ratio ≤ 0.5 on every problem is the project's goal.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys

import torch

from ksampling import samplers, schedules

from . import metrics, runners
from .problems import get_problem, initial_noise
from .reference import reference_solution

SOLVERS = [("ipndm", {}), ("deis", {}), ("unipc", {}), ("unipc", {"order": 3}), ("dpmpp_3m", {}), ("ipndm_v", {}),
           ("dpm_solver", {"order": 2}), ("res_multistep", {}), ("gradient_estimation", {})]
SCHEDULES = ([("karras", {"rho": rho}) for rho in (5.0, 7.0, 10.0, 15.0, 25.0)]
             + [("kl_optimal", {}), ("polyexponential", {"rho": 0.5}), ("polyexponential", {"rho": 0.7}),
                ("exponential", {})])
KDIFF_ODE = ["euler", "heun", "dpm_2", "lms", "dpmpp_2m", "dpm_fast"]


def _grid(name, steps, sigma_min, sigma_max, **params):
    return getattr(schedules, name)(steps + 1, sigma_min, sigma_max, **params).tolist()[:-1]


def search(problems, nfe=10, seeds=range(1000, 1128), progress=print):
    """{(solver label, schedule label): {problem: error / best k-diffusion error}}."""
    ratios: dict[tuple[str, str], dict[str, float]] = {}
    for name in problems:
        problem = get_problem(name, progress=False) if name == "digits-net" else get_problem(name)
        x = initial_noise(problem, seeds)
        ref = reference_solution(problem, x)
        kd_best, kd_label = math.inf, None
        for method in runners.methods_for(KDIFF_ODE):
            if method.impl != "k-diffusion":
                continue
            plan = runners.plan_steps(method, "karras", nfe, problem.sigma_min, problem.sigma_max)
            err = metrics.rmse(runners.run_method(method, problem.denoiser, x.clone(), plan.grid, budget=nfe), ref)
            if err < kd_best:
                kd_best, kd_label = err, method.label
        progress(f"{name}: best k-diffusion at {nfe} NFE: {kd_label} {kd_best / problem.data_std:.3g}")
        for (solver, options), (sched, params) in itertools.product(SOLVERS, SCHEDULES):
            if solver not in samplers.available():
                continue
            method = runners.methods_for([solver], with_kdiff=False)[0]
            steps = nfe // method.nfe_per_step
            grid = _grid(sched, steps, problem.sigma_min, problem.sigma_max, **params)
            counter = runners.CountingModel(problem.denoiser, x.shape[0])
            out = runners.run_method(method, counter, x.clone(), grid, options=options)
            if counter.nfe > nfe:
                continue
            key = (solver + (str(options) if options else ""), sched + (str(params) if params else ""))
            ratios.setdefault(key, {})[name] = metrics.rmse(out, ref) / kd_best
    return ratios


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.goal_search", description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", default="gmm-2d,gmm-64d,digits,digits-net")
    parser.add_argument("--nfe", type=int, default=10)
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    problems = [p.strip() for p in args.problems.split(",") if p.strip()]
    ratios = search(problems, args.nfe)
    complete = {k: v for k, v in ratios.items() if len(v) == len(problems)}

    def geo(v):
        return math.exp(sum(math.log(r) for r in v.values()) / len(v))

    print(f"\nerror / best k-diffusion error at {args.nfe} NFE (goal <= 0.5), ranked by the geometric mean")
    print(f"{'solver':22s} {'schedule':34s} " + " ".join(f"{p:>10s}" for p in problems) + "   geomean")
    for (solver, sched), v in sorted(complete.items(), key=lambda kv: geo(kv[1]))[: args.top]:
        print(f"{solver:22s} {sched:34s} " + " ".join(f"{v[p]:10.2f}" for p in problems) + f"   {geo(v):7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
