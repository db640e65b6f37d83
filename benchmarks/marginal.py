"""Marginal per-step cost of the sampler: (t(400 steps) − t(100 steps)) / 300.

The model is ``D(x; σ) = x / 2`` on a batch-1, d = 16 state, torch on one thread, so what is
left is the sampler's own per-step cost (its Python and its small tensor ops); the per-run
setup cancels in the difference. ksampling and k-diffusion runs are interleaved and each
figure is the median of ``repeats`` differences, so that a shared, noisy CPU moves both alike.
The clock is the CPU time of this process (``time.process_time``): with one thread it is the
work done, which other processes on a shared machine do not inflate.

Usage (from the repository root)::

    PYTHONPATH=$PWD python -m benchmarks.marginal                 # the speed suite's solvers
    PYTHONPATH=$PWD python -m benchmarks.marginal euler heun --repeats 9
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

#: the solvers of the speed suite that k-diffusion also has (k-diffusion's sample_<name>)
SOLVERS = ("euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "lms", "dpmpp_2s_ancestral",
           "dpmpp_sde", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde")
SHORT, LONG = 100, 400


def denoiser(x, sigma):
    return x * 0.5


def _runners(solver: str, K, short: int, long: int, dim: int):
    """{library: {steps: run()}} for ksampling (sample and a Plan) and k-diffusion."""
    import ksampling
    from ksampling.samplers import get

    x0 = torch.randn(1, dim, generator=torch.Generator().manual_seed(0))
    draws = get(solver)().draws_noise
    runners: dict = {"ksampling": {}, "ksampling_plan": {}, "k-diffusion": {}}
    for n in (short, long):
        sigmas = K.sampling.get_sigmas_karras(n, 0.0292, 14.6146)
        x = x0 * sigmas[0]

        def ks(x=x, sigmas=sigmas):
            return ksampling.sample(denoiser, x, sigmas, solver, generator=torch.Generator().manual_seed(0) if draws else None)

        plan = ksampling.plan(denoiser, sigmas, solver)

        def ks_plan(x=x, plan=plan):
            return plan(x, generator=torch.Generator().manual_seed(0) if draws else None)

        sampler = getattr(K.sampling, f"sample_{solver}")

        def kd(x=x, sigmas=sigmas, sampler=sampler):
            return sampler(denoiser, x, sigmas, disable=True)

        runners["ksampling"][n], runners["ksampling_plan"][n], runners["k-diffusion"][n] = ks, ks_plan, kd
    return runners


def marginal_costs(solvers=SOLVERS, repeats: int = 7, short: int = SHORT, long: int = LONG, dim: int = 16,
                   K=None, timer=time.process_time) -> dict:
    """solver -> {library: marginal µs per step (median of ``repeats``), 'ratio': ks/kd,
    'plan_ratio': planned ks/kd}. Runs of the libraries alternate within each repeat."""
    if K is None:
        from benchmarks.kdiff import load_reference

        K = load_reference()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = {}
        for solver in solvers:
            runners = _runners(solver, K, short, long, dim)
            for lib in runners.values():  # warm-up (first-call caches, lazy imports)
                lib[short](), lib[long]()
            samples: dict = {lib: [] for lib in runners}
            for _ in range(repeats):
                for lib, runs in runners.items():
                    t0 = timer()
                    runs[short]()
                    t1 = timer()
                    runs[long]()
                    t2 = timer()
                    samples[lib].append(((t2 - t1) - (t1 - t0)) / (long - short) * 1e6)
            row = {lib: round(statistics.median(v), 3) for lib, v in samples.items()}
            kd = row["k-diffusion"]
            row["ratio"] = round(row["ksampling"] / kd, 3) if kd > 0 else None
            row["plan_ratio"] = round(row["ksampling_plan"] / kd, 3) if kd > 0 else None
            results[solver] = row
        return results
    finally:
        torch.set_num_threads(threads)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("solvers", nargs="*", default=list(SOLVERS))
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    results = marginal_costs(args.solvers, args.repeats)
    print(f"{'solver':>20s} {'ksampling':>10s} {'planned':>10s} {'k-diff':>10s} {'ks/kd':>7s} {'plan/kd':>7s}  (µs/step)")
    for solver, r in results.items():
        print(f"{solver:>20s} {r['ksampling']:10.2f} {r['ksampling_plan']:10.2f} {r['k-diffusion']:10.2f} "
              f"{r['ratio']:7.3f} {r['plan_ratio']:7.3f}")
    ratios = [r["ratio"] for r in results.values()]
    print(f"ks/kd median {statistics.median(ratios):.3f}, worst {max(ratios):.3f}")


if __name__ == "__main__":
    main()
