"""The steps-vs-quality benchmark: its smoke run, its NFE counting, its references and metrics.

Each check compares with an independent answer: closed forms (Gaussian ODE solution, KL/W2 of
Gaussians, 1-D formulas), the loop's own NFE count, Monte Carlo moments.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("scipy")
pytest.importorskip("sklearn")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the benchmarks package lives at the repository root
    sys.path.insert(0, str(ROOT))

import ksampling  # noqa: E402
from benchmarks import metrics, problems, suite  # noqa: E402
from benchmarks.distributed import generate  # noqa: E402
from benchmarks.reference import ode_reference, reference_solution  # noqa: E402



def test_quick_smoke(tmp_path):
    out = tmp_path / "results.json"
    plots = tmp_path / "plots"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--no-progress", "--out", str(out), "--plots", str(plots)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    assert "gauss-iso | karras | ODE solvers" in text
    assert "gmm-2d | karras | SDE solvers" in text
    assert f"JSON of every measurement" in text and str(out) in text
    # the table has one row per ODE solver with a number for each budget
    rows = [line.split() for line in text.splitlines() if line.startswith("heun ")]
    assert rows and all(len(r) == 4 for r in rows)  # label, NFE 4, NFE 8, order
    data = json.loads(out.read_text())
    assert data["meta"]["torch"] == torch.__version__ and data["meta"]["ksampling"] == ksampling.__version__
    assert data["meta"]["device"] == "cpu" and data["meta"]["failures"] == []
    assert "FAILED" not in proc.stdout + proc.stderr
    recs = data["records"]
    assert {r["solver"] for r in recs} >= {"euler", "heun", "dpmpp_2m", "euler_ancestral"}
    assert {r["impl"] for r in recs} == {"ksampling", "k-diffusion"}
    for r in recs:
        assert r["nfe"] <= r["nfe_budget"]
        for key in ("rel_rmse", "w2", "kl", "excess_nll"):
            if key in r:
                assert math.isfinite(r[key])
    heun = {r["nfe_budget"]: r for r in recs if r["label"] == "heun" and r["problem"] == "gmm-2d"}
    assert heun[4]["steps"] == 2 and heun[8]["steps"] == 4 and heun[8]["nfe"] == 8
    # ksampling and k-diffusion agree on the same algorithm
    kd = {r["nfe_budget"]: r for r in recs if r["label"] == "kd:heun" and r["problem"] == "gmm-2d"}
    assert kd[8]["rel_rmse"] == pytest.approx(heun[8]["rel_rmse"], rel=1e-8)
    assert sorted(p.name for p in plots.iterdir()) >= ["best_vs_kdiffusion.png", "error_vs_nfe_karras.png"]


def test_nfe_counting_is_exact():
    problem = problems.get_problem("gauss-iso")
    x = problems.initial_noise(problem, range(3))
    for name, steps in (("heun", 3), ("dpmpp_2m", 5), ("dpm_2", 2)):
        grid = suite.make_grid("karras", steps, problem.sigma_min, problem.sigma_max)
        counter = suite.CountingModel(problem.denoiser, 3)
        _, info = ksampling.sample(counter, x, torch.tensor(grid, dtype=torch.float64), name, return_info=True)
        assert counter.nfe == info.nfe == steps * ksampling.samplers.info(name)["nfe_per_step"]
    # rows, not calls: a model evaluated on half the batch counts half an evaluation
    counter = suite.CountingModel(lambda x, s: x, 4)
    counter(torch.zeros(2, 1), torch.zeros(2))
    assert counter.nfe == 0.5
    # the planner picks the largest step count that fits, and its count is what a real run sees
    for label, budget in (("heun", 9), ("dpm_solver", 10), ("dpm_fast", 7), ("euler", 5)):
        method = next(m for m in suite.methods_for([label], with_kdiff=False))
        plan = suite.plan_steps(method, "karras", budget, problem.sigma_min, problem.sigma_max)
        counter = suite.CountingModel(problem.denoiser, 3)
        suite.run_method(method, counter, x.clone(), plan.grid, budget=budget)
        assert counter.nfe == plan.nfe <= budget
        if plan.steps is not None:
            bigger = suite.make_grid("karras", plan.steps + 1, problem.sigma_min, problem.sigma_max)
            assert suite.dry_run(method, bigger)[0] > budget
    assert next(iter(suite.methods_for(["heun"], with_kdiff=False))).nfe_per_step == 2
    assert suite.plan_steps(next(iter(suite.methods_for(["heun"], with_kdiff=False))), "karras", 1, 0.002, 80.0) is None


def test_dop853_reference_matches_closed_form():
    problem = problems.get_problem("gauss-aniso")  # stiff: variances down to 1e-3
    x_T = problems.initial_noise(problem, range(4))
    exact = problem.exact_solution(x_T, problem.sigma_max, problem.sigma_min)
    numeric = ode_reference(problem.denoiser, x_T, problem.sigma_max, problem.sigma_min)
    assert metrics.rmse(numeric, exact) < 1e-8 * problem.data_std * 10
    # and the closed form is what reference_solution gives for Gaussian problems
    assert torch.equal(reference_solution(problem, x_T), exact)


def test_reference_is_cached(tmp_path, monkeypatch):
    import benchmarks.reference as ref

    monkeypatch.setattr(ref, "CACHE_DIR", tmp_path)
    problem = problems.get_problem("gmm-2d")
    x_T = problems.initial_noise(problem, range(5))
    first = ref.reference_solution(problem, x_T, rtol=1e-8, atol=1e-8)
    files = list(tmp_path.iterdir())
    assert len(files) == 1
    calls = []
    monkeypatch.setattr(ref, "ode_reference", lambda *a, **k: calls.append(1))
    again = ref.reference_solution(problem, x_T, rtol=1e-8, atol=1e-8)
    assert not calls and torch.equal(first, again)
    # another seed set is another key
    monkeypatch.undo()
    monkeypatch.setattr(ref, "CACHE_DIR", tmp_path)
    ref.reference_solution(problem, problems.initial_noise(problem, range(1, 6)), rtol=1e-8, atol=1e-8)
    assert len(list(tmp_path.iterdir())) == 2


def test_gaussian_metrics_closed_forms():
    rng = np.random.default_rng(0)
    d = 5
    a = rng.normal(size=(d, d))
    cov = a @ a.T + 0.1 * np.eye(d)
    mean = rng.normal(size=d)
    assert metrics.gaussian_kl(mean, cov, mean, cov) == pytest.approx(0.0, abs=1e-10)
    assert metrics.gaussian_w2(mean, cov, mean, cov) == pytest.approx(0.0, abs=1e-6)
    shift = rng.normal(size=d)
    assert metrics.gaussian_w2(mean + shift, cov, mean, cov) == pytest.approx(np.linalg.norm(shift), rel=1e-6)
    # isotropic: W2 = sqrt(d) |a - b|; KL in 1-D: log(s2/s1) + (s1² + (m1-m2)²)/(2 s2²) - 1/2
    assert metrics.gaussian_w2(np.zeros(d), 4 * np.eye(d), np.zeros(d), 9 * np.eye(d)) == pytest.approx(math.sqrt(d))
    kl = metrics.gaussian_kl([0.3], [[0.25]], [-0.2], [[2.0]])
    assert kl == pytest.approx(math.log(math.sqrt(2.0) / 0.5) + (0.25 + 0.25) / 4.0 - 0.5, rel=1e-12)
    assert metrics.gaussian_kl(mean, np.zeros((d, d)), mean, cov) == math.inf
    # one implementation: the benchmark measures with the library's exact distances
    from ksampling.denoisers import analytic

    assert metrics.gaussian_kl is analytic.gaussian_kl and metrics.gaussian_w2 is analytic.gaussian_w2


def test_rmse_and_median_error():
    ref = np.zeros((4, 3))
    x = np.zeros((4, 3))
    x[0] = 2.0  # one sample off by 2 in every coordinate
    assert metrics.rmse(x, ref) == pytest.approx(math.sqrt(4 * 3 / 12))
    assert metrics.median_sample_error(x, ref) == 0.0
    with pytest.raises(ValueError, match="shape"):
        metrics.rmse(x, ref[:2])


def test_fit_order_and_mode_tv():
    nfe = np.array([4, 8, 16, 32])
    assert metrics.fit_order(nfe, 3.0 * nfe**-2.0) == pytest.approx(2.0)
    assert metrics.fit_order([10], [0.1]) is None
    means = np.array([[0.0, 0.0], [10.0, 0.0]])
    weights = np.array([0.25, 0.75])
    x = np.concatenate([np.zeros((25, 2)), np.full((75, 2), [10.0, 0.0])])
    assert metrics.mode_total_variation(x, means, weights) == pytest.approx(0.0)
    assert metrics.mode_total_variation(np.zeros((10, 2)), means, weights) == pytest.approx(0.75)


def test_brownian_correlation():
    corr = metrics.brownian_correlation([(4.0, 2.0), (2.0, 1.0), (4.0, 1.0)])
    # W(4→1) = W(4→2) + W(2→1): correlations sqrt(2/3) and sqrt(1/3), disjoint steps independent
    assert corr[0, 1] == 0.0 and corr[0, 2] == pytest.approx(math.sqrt(2 / 3)) and corr[1, 2] == pytest.approx(math.sqrt(1 / 3))
    mix = metrics.mixing_matrix(corr)
    assert mix.shape == (3, 2) and np.allclose(mix @ mix.T, corr)


@pytest.mark.parametrize("name, tree_law", [("euler_ancestral", False), ("dpmpp_sde", False), ("dpmpp_sde", True)])
def test_exact_output_law_matches_monte_carlo(name, tree_law):
    """The probed (exact) Gaussian law of a stochastic sampler's output against the moments
    of 3000 real samples; dpmpp_sde draws correlated Brownian-tree noise (its steps query the
    intervals σ→σ_s and σ→σ_next, which overlap). With ``tree_law`` the samples use the suite's
    correlated Gaussian draws in place of the tree: they must have the same law."""
    problem = problems.get_problem("gauss-iso")
    method = next(m for m in suite.methods_for([name], with_kdiff=False))
    plan = suite.plan_steps(method, "karras", 4, problem.sigma_min, problem.sigma_max)
    run = lambda x, noise: suite.run_method(method, problem.denoiser, x, plan.grid, noise_sampler=noise)  # noqa: E731
    mean, cov = metrics.affine_output_moments(run, problem.dim, problem.sigma_max, plan.noise_mixing(method.noise))
    mixing = plan.noise_mixing(method.noise) if tree_law else None
    samples = generate(problem, method, plan.grid, range(3000), batch=1000, noise_mixing=mixing).numpy()
    mc_mean, mc_cov = samples.mean(0), np.cov(samples.T)
    assert np.abs(mc_mean - mean).max() < 5 * math.sqrt(cov.diagonal().max() / 3000)
    assert np.abs(mc_cov - cov).max() < 0.15 * cov.diagonal().max()
    target_mean, target_cov = problem.target_gaussian()
    w2 = metrics.gaussian_w2(mean, cov, target_mean, target_cov)
    assert metrics.gaussian_w2(mc_mean, mc_cov, target_mean, target_cov) == pytest.approx(w2, abs=0.1)


def test_initial_noise_is_per_seed():
    problem = problems.get_problem("gmm-2d")
    both = problems.initial_noise(problem, [7, 8])
    assert torch.equal(both[1:], problems.initial_noise(problem, [8]))
    assert torch.equal(both[0], torch.randn(2, generator=torch.Generator().manual_seed(7), dtype=torch.float64) * 80.0)


def test_bad_arguments_are_named():
    from benchmarks.__main__ import main

    with pytest.raises(SystemExit):
        main(["--problems", "nope"])
    with pytest.raises(SystemExit):
        main(["--solvers", "nope"])
    with pytest.raises(ValueError, match="unknown problem"):
        problems.get_problem("nope")


def test_a_failing_solver_is_recorded_not_fatal(monkeypatch):
    real = suite.run_method

    def flaky(method, *args, **kwargs):
        if method.solver == "heun" and method.impl == "ksampling" and args[0].__class__ is suite.CountingModel \
                and args[0].batch > 1:
            raise RuntimeError("boom")
        return real(method, *args, **kwargs)

    monkeypatch.setattr(suite, "run_method", flaky)
    config = suite.Config(problems=["gmm-2d"], solvers=["euler", "heun"], schedules=["karras"], nfe=[4],
                          batch=4, kdiff=False, progress=False)
    logged = []
    results = suite.run_suite(config, log=logged.append)
    failed = [r for r in results["records"] if "error" in r]
    assert [r["label"] for r in failed] == ["heun"] and "boom" in failed[0]["error"]
    assert any(r["label"] == "euler" and r["rel_rmse"] > 0 for r in results["records"])
    assert results["meta"]["failures"] and "FAILED" in logged[0]
    from benchmarks import report

    assert "runs FAILED" in report.text_report(results)
