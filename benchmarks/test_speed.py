"""Speed suite: the sampler's own per-step cost against k-diffusion and diffusers.

Run with ``pytest benchmarks/ --benchmark-only`` (options in ``benchmarks/conftest.py``:
``--device``, ``--speed-steps``, ``--speed-rounds``, ``--speed-threads``, ``--speed-timer``,
``--speed-budget``, ``--speed-out``). Plain ``pytest`` from the repository root never
collects this file (``testpaths = ["tests"]``).

What is timed is one whole sampling run of ``--speed-steps`` steps (default 50) with a
model that costs one elementwise multiply, so the time is almost all sampler overhead;
per-step time = run time / steps (the per-run setup is amortised; 2-step runs at batch 1
show it). Every case is timed in the same session, on the same inputs:

* ``test_against_k_diffusion``: ksampling and k-diffusion (``sample_<solver>``) run the
  denoiser ``D(x; σ) = x / 2`` on k-diffusion's Karras grid, for the 11 solvers both have.
* ``test_against_diffusers``: an ε-network ``ε(x_in, t) = x_in / 2`` on a VP discrete
  schedule (Stable Diffusion's scaled-linear betas). diffusers runs ``set_timesteps``, then
  ``scale_model_input -> model -> step`` over its timesteps; on the sigmas of that grid
  ksampling runs ``sample`` twice: with the same D (``ksampling``: the sampler's own cost)
  and with the ε-network behind ksampling's VP ε-wrapper (``ksampling_eps``: what a user of
  an ε-network pays, wrapper included, as diffusers' step includes its ε -> x0 conversion).

A case whose solver ksampling does not register (yet) is skipped. The ksampling cases of
the deterministic solvers also check, untimed, that they computed what k-diffusion (or, with
the ε-wrapper, diffusers) computed from the same input: the same algorithm is being timed.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
import time
from pathlib import Path

import pytest
import torch

import ksampling
from ksampling.samplers import available, get

SUITE = "ksampling-speed"

# diffusers 0.42 with numpy 2 warns on every set_timesteps; it says nothing about speed
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

#: batch label -> shape of x (a batch of 32x32 RGB images)
BATCHES = {"b1": (1, 3, 32, 32), "b64": (64, 3, 32, 32)}

#: ksampling solvers that k-diffusion also has, under the same name (``sample_<name>``).
KDIFFUSION_SOLVERS = (
    "euler",
    "euler_ancestral",
    "heun",
    "dpm_2",
    "dpm_2_ancestral",
    "lms",
    "dpmpp_2s_ancestral",
    "dpmpp_sde",
    "dpmpp_2m",
    "dpmpp_2m_sde",
    "dpmpp_3m_sde",
)
#: deterministic ones, whose outputs must agree with k-diffusion's on the same input
KDIFFUSION_DETERMINISTIC = ("euler", "heun", "dpm_2", "lms", "dpmpp_2m")

#: ksampling solver -> (diffusers scheduler, its options, ksampling options for the same algorithm)
DIFFUSERS_SOLVERS = {
    "euler": ("EulerDiscreteScheduler", {}, {}),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}, {}),
    "heun": ("HeunDiscreteScheduler", {}, {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"solver_order": 2, "algorithm_type": "dpmsolver++"}, {}),
    "unipc": ("UniPCMultistepScheduler", {"solver_order": 2, "solver_type": "bh2"}, {"order": 2, "variant": "bh2"}),
    # clip_sample off: diffusers' default clamps x0 to [-1, 1] every step, ksampling does not
    "ddim": ("DDIMScheduler", {"clip_sample": False}, {"eta": 0.0}),
    "lms": ("LMSDiscreteScheduler", {}, {}),
}
#: the VP discrete schedule of the ε-network (Stable Diffusion's)
VP_CONFIG = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")

SETUP_STEPS = 2  # steps of the runs that measure the per-run setup


# -- the trivial models ------------------------------------------------------------------------
def denoiser(x, sigma):
    """D(x; σ) = x / 2: one elementwise multiply, the cost floor of any model."""
    return x * 0.5


def eps_network(x_in, t):
    """ε(x_in, t) = x_in / 2: the same cost, read as an ε-prediction by the VP wrappers."""
    return x_in * 0.5


def _eps_denoiser(alphas_cumprod):
    """ksampling's VP ε-wrapper around ``eps_network`` (k-diffusion's ``DiscreteEpsDDPMDenoiser``
    idea: the network's timestep is interpolated from σ on the device, in every call)."""
    from ksampling.denoisers import NetworkDenoiser, VPDiscrete

    process = VPDiscrete(alphas_cumprod=alphas_cumprod.to(torch.float64))
    return NetworkDenoiser(eps_network, process, prediction="eps"), "ksampling.denoisers.NetworkDenoiser(VPDiscrete, 'eps')"


# -- references --------------------------------------------------------------------------------
def _k_diffusion():
    """The real k-diffusion, loaded by tests/reference.py (without its package __init__)."""
    name = "_ksampling_speed_reference"
    module = sys.modules.get(name)
    if module is None:
        path = Path(__file__).resolve().parents[1] / "tests" / "reference.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return module.k_diffusion()


def _k_diffusion_version():
    try:
        from importlib.metadata import version

        return version("k-diffusion")
    except Exception:
        return None


def _diffusers():
    return pytest.importorskip("diffusers", reason="diffusers is not installed (pip install ksampling[bench])")


def _diffusers_sigmas(scheduler) -> torch.Tensor:
    """The descending sigma grid (ending in 0) that a diffusers scheduler walks after set_timesteps."""
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None:
        # Heun repeats every inner sigma (its two stages): keep each once.
        return torch.unique_consecutive(torch.as_tensor(sigmas, dtype=torch.float64))
    alphas_cumprod = scheduler.alphas_cumprod.to(torch.float64)[scheduler.timesteps.long().cpu()]
    return torch.cat([((1 - alphas_cumprod) / alphas_cumprod).sqrt(), alphas_cumprod.new_zeros(1)])


# -- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def speed(request):
    config = request.config
    device = torch.device(config.getoption("--device"))
    if device.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("--device cuda: no CUDA device here")
    threads = torch.get_num_threads()
    torch.set_num_threads(config.getoption("--speed-threads"))
    yield dict(
        device=device,
        steps=config.getoption("--speed-steps"),
        rounds=config.getoption("--speed-rounds"),
        budget=config.getoption("--speed-budget"),
    )
    torch.set_num_threads(threads)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cases(libraries, solvers):
    cases = []
    for kind, batches in (("per_step", BATCHES), ("setup", {"b1": BATCHES["b1"]})):
        for batch in batches:
            for solver in solvers:
                for library in libraries:
                    cases.append(pytest.param(kind, batch, solver, library, id=f"{kind}-{batch}-{solver}-{library}"))
    return cases


def _require_ksampling(solver):
    if solver not in available():
        pytest.skip(f"ksampling has no solver {solver!r} yet")


def _ks_options(solver, wanted):
    """The ksampling options of ``wanted`` that this solver takes (names may still be settling)."""
    names = get(solver).option_names()
    return {k: v for k, v in wanted.items() if k in names}


def _time(benchmark, speed, run, info, first_run_s):
    """Time ``run``; the untimed first run (which counted the NFE) was its warm-up. Cases
    slower than the per-case budget get fewer rounds (k-diffusion's Brownian tree at batch 64
    takes seconds per run)."""
    rounds = max(1, min(speed["rounds"], int(speed["budget"] / max(first_run_s, 1e-9))))
    benchmark.group = f"{info['batch_label']} {info['solver']} ({info['comparison']} grid" + (
        ", 2-step runs)" if info["kind"] == "setup" else ")"
    )
    benchmark.extra_info.update(info)
    return benchmark.pedantic(run, rounds=rounds, warmup_rounds=0, iterations=1)


def _first_run(fn, *args, **kwargs):
    """Run once untimed by the benchmark (warm-up, NFE count); return (output, seconds)."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def _info(comparison, kind, batch, solver, library, steps, **extra):
    return dict(
        suite=SUITE,
        comparison=comparison,
        kind=kind,
        batch_label=batch,
        shape=list(BATCHES[batch]),
        solver=solver,
        library=library,
        steps=steps,
        **extra,
    )


def _nfe_counter(model):
    calls = [0]

    def counted(*args, **kwargs):
        calls[0] += 1
        return model(*args, **kwargs)

    return counted, calls


# -- ksampling against k-diffusion ---------------------------------------------------------------
@pytest.mark.parametrize("kind, batch, solver, library", _cases(("ksampling", "k-diffusion"), KDIFFUSION_SOLVERS))
def test_against_k_diffusion(benchmark, speed, kind, batch, solver, library):
    device = speed["device"]
    steps = speed["steps"] if kind == "per_step" else SETUP_STEPS
    K = _k_diffusion()
    sigmas = K.sampling.get_sigmas_karras(steps, 0.0292, 14.6146, device=device)
    x = torch.randn(BATCHES[batch], generator=torch.Generator().manual_seed(0)).to(device) * sigmas[0]

    if library == "ksampling":
        _require_ksampling(solver)
        draws = get(solver)().draws_noise

        def run():
            generator = torch.Generator(device).manual_seed(0) if draws else None
            out = ksampling.sample(denoiser, x, sigmas, solver, generator=generator)
            _sync(device)
            return out

        counted, calls = _nfe_counter(denoiser)
        _, first_s = _first_run(ksampling.sample, counted, x, sigmas, solver, generator=torch.Generator(device).manual_seed(0))
        out = _time(benchmark, speed, run, _info("k-diffusion", kind, batch, solver, library, steps, nfe=calls[0]), first_s)
        if solver in KDIFFUSION_DETERMINISTIC:
            # the same algorithm as the k-diffusion case it is compared with: same output, same NFE
            reference, reference_calls = _nfe_counter(denoiser)
            expected = getattr(K.sampling, f"sample_{solver}")(reference, x, sigmas, disable=True)
            torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))
            assert calls[0] == reference_calls[0]
    else:
        sampler = getattr(K.sampling, f"sample_{solver}")

        def run():
            out = sampler(denoiser, x, sigmas, disable=True)
            _sync(device)
            return out

        counted, calls = _nfe_counter(denoiser)
        _, first_s = _first_run(sampler, counted, x, sigmas, disable=True)
        info = _info("k-diffusion", kind, batch, solver, library, steps, nfe=calls[0], k_diffusion_version=_k_diffusion_version())
        out = _time(benchmark, speed, run, info, first_s)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert bool(torch.isfinite(out).all())


# -- ksampling against diffusers -----------------------------------------------------------------
@pytest.mark.parametrize(
    "kind, batch, solver, library", _cases(("ksampling", "ksampling_eps", "diffusers"), tuple(DIFFUSERS_SOLVERS))
)
def test_against_diffusers(benchmark, speed, kind, batch, solver, library):
    diffusers = _diffusers()
    device = speed["device"]
    steps = speed["steps"] if kind == "per_step" else SETUP_STEPS
    scheduler_name, scheduler_options, ks_options = DIFFUSERS_SOLVERS[solver]
    scheduler = getattr(diffusers, scheduler_name)(**VP_CONFIG, **scheduler_options)
    scheduler.set_timesteps(steps, device=device)
    sigmas = _diffusers_sigmas(scheduler).to(device=device, dtype=torch.float32)
    noise = torch.randn(BATCHES[batch], generator=torch.Generator().manual_seed(0)).to(device)
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters

    def diffusers_sample(model):
        scheduler.set_timesteps(steps, device=device)
        x = noise * scheduler.init_noise_sigma
        step_kwargs = {"generator": torch.Generator(device).manual_seed(0)} if takes_generator else {}
        for t in scheduler.timesteps:
            model_input = scheduler.scale_model_input(x, t)
            x = scheduler.step(model(model_input, t), t, x, return_dict=False, **step_kwargs)[0]
        return x

    if library in ("ksampling", "ksampling_eps"):
        _require_ksampling(solver)
        options = _ks_options(solver, ks_options)
        if library == "ksampling":
            model, wrapper = denoiser, None
        else:
            model, wrapper = _eps_denoiser(scheduler.alphas_cumprod)
            model = model.to(device)
        draws = get(solver)(**options).draws_noise
        # diffusers' first state in ksampling's space x = x0 + σ n: VP-state schedulers
        # (init_noise_sigma = 1) start from x_vp = n, i.e. x = n / α(σ_0) = n √(1 + σ_0²)
        x = noise * (sigmas[0] if float(scheduler.init_noise_sigma) != 1.0 else (1 + sigmas[0] ** 2).sqrt())

        def run():
            generator = torch.Generator(device).manual_seed(0) if draws else None
            out = ksampling.sample(model, x, sigmas, solver, generator=generator, **options)
            _sync(device)
            return out

        counted, calls = _nfe_counter(model)
        generator = torch.Generator(device).manual_seed(0)
        _, first_s = _first_run(ksampling.sample, counted, x, sigmas, solver, generator=generator, **options)
        info = _info("diffusers", kind, batch, solver, library, steps, nfe=calls[0], options=options)
        if wrapper is not None:
            info["wrapper"] = wrapper
        out = _time(benchmark, speed, run, info, first_s)
        assert out.shape == x.shape
        if library == "ksampling_eps" and not draws:
            # the same algorithm as the diffusers case it is compared with (untimed)
            reference, reference_calls = _nfe_counter(eps_network)
            expected = diffusers_sample(reference)
            torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))
            assert calls[0] == reference_calls[0]
    else:

        def run():
            out = diffusers_sample(eps_network)
            _sync(device)
            return out

        counted, calls = _nfe_counter(eps_network)
        _, first_s = _first_run(diffusers_sample, counted)
        info = _info("diffusers", kind, batch, solver, library, steps, nfe=calls[0], scheduler=scheduler_name)
        out = _time(benchmark, speed, run, info, first_s)
        assert out.shape == noise.shape
    assert bool(torch.isfinite(out).all())


# -- cost floors: what one draw of noise and one elementwise op cost at each batch ---------------
FLOOR_OPS = {
    # one N(0, I) draw like x: every ancestral/SDE step draws at least one, in every library
    "randn": lambda x, generator: torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype),
    # one elementwise op: the trivial model, and the unit of every solver's update
    "multiply": lambda x, generator: x * 0.5,
    # ksampling's per-model-call finiteness check
    "sum": lambda x, generator: x.sum(),
}


@pytest.mark.parametrize("batch", tuple(BATCHES))
@pytest.mark.parametrize("op", tuple(FLOOR_OPS))
def test_cost_floor(benchmark, speed, batch, op):
    """Time one op ``--speed-steps`` times, to read the tables against: per-step times near
    these floors cannot drop much whatever the sampler does."""
    device = speed["device"]
    x = torch.randn(BATCHES[batch], generator=torch.Generator().manual_seed(0)).to(device)
    generator = torch.Generator(device).manual_seed(0)
    fn = FLOOR_OPS[op]

    def run():
        for _ in range(speed["steps"]):
            out = fn(x, generator)
        _sync(device)
        return out

    _, first_s = _first_run(run)
    info = _info("floor", "per_step", batch, op, "torch", speed["steps"])
    out = _time(benchmark, speed, run, info, first_s)
    assert out is not None


# -- the summary's arithmetic (no timing: runs under plain ``pytest benchmarks/``) ----------------
def test_ratio_table_from_rows():
    from benchmarks.conftest import build_floors, build_table, format_markdown

    def row(comparison, library, solver, per_step_us, kind="per_step", batch="b1", steps=50):
        return dict(
            suite=SUITE, comparison=comparison, library=library, solver=solver, kind=kind, batch_label=batch,
            shape=list(BATCHES[batch]), steps=steps, nfe=steps, min_s=per_step_us * steps * 1e-6,
            per_step_us=per_step_us, per_step_median_us=per_step_us * 1.1,
        )

    rows = [
        row("k-diffusion", "ksampling", "euler", 10.0),
        row("k-diffusion", "k-diffusion", "euler", 40.0),
        row("diffusers", "ksampling", "euler", 12.0),
        row("diffusers", "ksampling_eps", "euler", 30.0),
        row("diffusers", "diffusers", "euler", 24.0),
        row("k-diffusion", "k-diffusion", "dpm_2", 50.0),  # no ksampling case: no ratio
        row("k-diffusion", "ksampling", "euler", 20.0, batch="b64"),
        row("k-diffusion", "ksampling", "euler", 70.0, kind="setup", steps=2),
        row("floor", "torch", "randn", 9.0),
    ]
    table = build_table(rows)
    assert [(e["batch"], e["solver"]) for e in table] == [("b1", "dpm_2"), ("b1", "euler"), ("b64", "euler")]
    dpm_2, euler, euler_64 = table
    assert euler["ks/kd"] == 0.25 and euler["ks/diffusers"] == 0.5 and euler["ks_eps/diffusers"] == 1.25
    assert euler["ksampling_run2_us"] == 140.0  # the 2-step run, whole
    assert dpm_2["ks/kd"] is None and euler_64["ks/kd"] is None
    assert build_floors(rows) == {"b1": {"randn": 9.0}}
    meta = dict(steps=50, rounds=7, timer="process_time", device="cpu", torch="x", threads=1, batches={"b1": "1x3x32x32"})
    text = format_markdown(table, meta, build_floors(rows))
    assert "| 1x3x32x32 | euler | 10.0 | 40.0 | 0.25 |" in text
    assert "ks/kd: median 0.25" in text and "1 at or below the goal of 0.5" in text
