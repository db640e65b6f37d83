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

* ``test_planned_and_compiled``: the same runs through ``ksampling.plan`` (validated and
  planned once, called per run) and, for ``COMPILED_SOLVERS``, through
  ``torch.compile(plan, fullgraph=True)`` (inductor; compiling takes tens of seconds per
  case on a small CPU and is not timed).
* ``test_marginal_cost``: the marginal cost of one step, (t(400 steps) − t(100 steps)) / 300
  at batch 1, d = 16, median of ``--speed-rounds`` runs interleaved with k-diffusion
  (``benchmarks/marginal.py``): the per-run setup cancels, what is left is the loop's own
  per-step cost.
* ``test_end_to_end``: a small diffusers ``UNet2DModel`` (random weights) behind ksampling's
  VP ε-wrapper, at batch 1 and 16, 10 and 50 steps: ksampling eager and planned (and compiled
  with ``--speed-e2e-compile``), k-diffusion with the same wrapped denoiser and diffusers'
  scheduler loop; wall time and the sampler's share of it, ``(run − model) / run``, where
  ``model`` is the network alone on the inputs the sampler gave it.

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
#: solvers timed compiled (inductor, fullgraph): compiling each case costs tens of seconds
COMPILED_SOLVERS = ("euler", "dpmpp_2m")
#: solvers of the end-to-end rows (ksampling, k-diffusion and a diffusers scheduler each)
E2E_SOLVERS = {"euler": "EulerDiscreteScheduler", "dpmpp_2m": "DPMSolverMultistepScheduler"}
E2E_BATCHES = (1, 16)
E2E_STEPS = (10, 50)
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
        e2e_compile=config.getoption("--speed-e2e-compile"),
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
    info = dict(
        suite=SUITE,
        comparison=comparison,
        kind=kind,
        batch_label=batch,
        shape=list(BATCHES[batch]) if batch in BATCHES else None,
        solver=solver,
        library=library,
        steps=steps,
    )
    info.update(extra)
    return info


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


# -- planned and compiled runs -------------------------------------------------------------------
def _plan_cases():
    cases = []
    for kind, batches in (("per_step", BATCHES), ("setup", {"b1": BATCHES["b1"]})):
        for batch in batches:
            for solver in KDIFFUSION_SOLVERS:
                cases.append(pytest.param(kind, batch, solver, "ksampling_plan", id=f"{kind}-{batch}-{solver}-plan"))
                if kind == "per_step" and solver in COMPILED_SOLVERS:
                    cases.append(pytest.param(kind, batch, solver, "ksampling_compiled", id=f"{kind}-{batch}-{solver}-compiled"))
    return cases


@pytest.mark.parametrize("kind, batch, solver, library", _plan_cases())
def test_planned_and_compiled(benchmark, speed, kind, batch, solver, library):
    """A plan made once and called per run (the serving loop), and the same plan compiled."""
    device = speed["device"]
    steps = speed["steps"] if kind == "per_step" else SETUP_STEPS
    _require_ksampling(solver)
    K = _k_diffusion()
    sigmas = K.sampling.get_sigmas_karras(steps, 0.0292, 14.6146, device=device)
    x = torch.randn(BATCHES[batch], generator=torch.Generator().manual_seed(0)).to(device) * sigmas[0]
    counted, calls = _nfe_counter(denoiser)
    plan = ksampling.plan(counted, sigmas, solver)
    draws = plan.solver.draws_noise
    if library == "ksampling_compiled":
        torch._dynamo.reset()
        runner = torch.compile(plan, fullgraph=True)
        runner(x)  # compiling: not timed
    else:
        runner = plan

    def run():
        out = runner(x, torch.Generator(device).manual_seed(0) if draws else None)
        _sync(device)
        return out

    _, first_s = _first_run(run)
    nfe = calls[0]
    out = _time(benchmark, speed, run, _info("k-diffusion", kind, batch, solver, library, steps, nfe=nfe), first_s)
    expected = ksampling.sample(denoiser, x, sigmas, solver, generator=torch.Generator(device).manual_seed(0))
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))


# -- the marginal cost of one step ----------------------------------------------------------------
@pytest.mark.parametrize("solver", KDIFFUSION_SOLVERS)
def test_marginal_cost(benchmark, speed, solver, request):
    """(t(400) − t(100)) / 300 steps, batch 1, d = 16, one thread, median of --speed-rounds runs
    interleaved with k-diffusion; stored in extra_info (the benchmark's own time is the whole
    measurement and means nothing)."""
    from benchmarks.marginal import LONG, SHORT, marginal_costs

    _require_ksampling(solver)
    if speed["device"].type != "cpu":
        pytest.skip("the marginal cost is a CPU measurement of the loop's Python and small ops")
    from benchmarks.conftest import speed_timer

    timer = speed_timer(request.config)
    result = {}

    def measure():
        result.update(marginal_costs([solver], repeats=speed["rounds"], K=_k_diffusion(), timer=timer)[solver])

    benchmark.group = f"marginal {solver}"
    benchmark.pedantic(measure, rounds=1, warmup_rounds=0, iterations=1)
    benchmark.extra_info.update(
        _info("marginal", "marginal", "d16", solver, "ksampling", LONG - SHORT, marginal=result, shape=[1, 16])
    )
    assert result["k-diffusion"] > 0


# -- end to end: a small U-Net ---------------------------------------------------------------------
def _tiny_unet(device):
    from diffusers import UNet2DModel

    with torch.random.fork_rng(devices=[]):  # the weights' RNG draws leave the global RNG as it was
        torch.manual_seed(0)
        unet = UNet2DModel(
            sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(32, 64),
            down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            norm_num_groups=16,
        )
    return unet.to(device).eval()


def _e2e_cases():
    libraries = ("model", "ksampling", "ksampling_plan", "ksampling_compiled", "k-diffusion", "diffusers")
    return [
        pytest.param(solver, batch, steps, library, id=f"e2e-{solver}-b{batch}-{steps}steps-{library}")
        for solver in E2E_SOLVERS
        for batch in E2E_BATCHES
        for steps in E2E_STEPS
        for library in libraries
    ]


@pytest.mark.parametrize("solver, batch, steps, library", _e2e_cases())
def test_end_to_end(benchmark, speed, solver, batch, steps, library):
    """Wall time of a whole run with a real (small, random) network; the table divides each
    library's time by the ``model`` case's (the network alone, called on the same inputs)."""
    diffusers = _diffusers()
    device = speed["device"]
    if library == "ksampling_compiled" and not benchmark_option(speed, "e2e_compile"):
        pytest.skip("compiling a whole U-Net run takes minutes on a CPU: --speed-e2e-compile")
    unet = _tiny_unet(device)
    scheduler = getattr(diffusers, E2E_SOLVERS[solver])(**VP_CONFIG)
    scheduler.set_timesteps(steps, device=device)
    sigmas = _diffusers_sigmas(scheduler).to(device=device, dtype=torch.float32)
    noise = torch.randn((batch, 3, 16, 16), generator=torch.Generator().manual_seed(0)).to(device)
    x = noise * sigmas[0]

    def network(x_in, t):
        return unet(x_in, t).sample

    from ksampling.denoisers import NetworkDenoiser, VPDiscrete

    model = NetworkDenoiser(network, VPDiscrete(alphas_cumprod=scheduler.alphas_cumprod.to(torch.float64)), prediction="eps").to(device)
    with torch.inference_mode():
        if library == "model":
            calls = []

            def recorder(x_in, t):
                calls.append((x_in.clone(), t.clone()))
                return network(x_in, t)

            recorded = NetworkDenoiser(recorder, VPDiscrete(alphas_cumprod=scheduler.alphas_cumprod.to(torch.float64)), prediction="eps").to(device)
            ksampling.sample(recorded, x, sigmas, solver)

            def run():
                for x_in, t in calls:
                    out = network(x_in, t)
                _sync(device)
                return out

        elif library in ("ksampling", "ksampling_plan", "ksampling_compiled"):
            plan = ksampling.plan(model, sigmas, solver)
            if library == "ksampling_compiled":
                torch._dynamo.reset()
                plan = torch.compile(plan, fullgraph=True)
                plan(x)

            def run():
                out = ksampling.sample(model, x, sigmas, solver) if library == "ksampling" else plan(x)
                _sync(device)
                return out

        elif library == "k-diffusion":
            sampler = getattr(_k_diffusion().sampling, f"sample_{solver}")

            def run():
                out = sampler(model, x, sigmas, disable=True)
                _sync(device)
                return out

        else:

            def run():
                scheduler.set_timesteps(steps, device=device)
                sample = noise * scheduler.init_noise_sigma
                for t in scheduler.timesteps:
                    sample = scheduler.step(network(scheduler.scale_model_input(sample, t), t), t, sample, return_dict=False)[0]
                _sync(device)
                return sample

        _, first_s = _first_run(run)
        info = _info("e2e", "e2e", f"b{batch}", solver, library, steps, shape=[batch, 3, 16, 16], e2e_steps=steps)
        out = _time(benchmark, speed, run, info, first_s)
    assert bool(torch.isfinite(out).all())


def benchmark_option(speed, name):
    return speed.get(name, False)


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


def test_extra_tables_from_rows():
    from benchmarks.conftest import build_e2e, build_marginal, build_table, format_extra

    base = dict(suite=SUITE, min_s=1.0, median_s=1.0, rounds=1, per_step_us=1.0, per_step_median_us=1.0, nfe=1)
    rows = [
        dict(base, comparison="k-diffusion", library="ksampling_plan", solver="euler", kind="per_step", batch_label="b1",
             shape=[1, 3, 32, 32], steps=50, per_step_us=8.0),
        dict(base, comparison="k-diffusion", library="k-diffusion", solver="euler", kind="per_step", batch_label="b1",
             shape=[1, 3, 32, 32], steps=50, per_step_us=32.0),
        dict(base, comparison="marginal", library="ksampling", solver="heun", kind="marginal", batch_label="d16",
             shape=[1, 16], steps=300, marginal={"ksampling": 20.0, "ksampling_plan": 15.0, "k-diffusion": 50.0,
                                                "ratio": 0.4, "plan_ratio": 0.3}),
        dict(base, comparison="e2e", library="model", solver="euler", kind="e2e", batch_label="b1", shape=[1, 3, 16, 16],
             steps=10, min_s=0.09),
        dict(base, comparison="e2e", library="ksampling", solver="euler", kind="e2e", batch_label="b1",
             shape=[1, 3, 16, 16], steps=10, min_s=0.1),
    ]
    table = build_table(rows)
    assert table[0]["plan/kd"] == 0.25
    marginal, e2e = build_marginal(rows), build_e2e(rows)
    assert marginal == [dict(solver="heun", ksampling_us=20.0, plan_us=15.0, kd_us=50.0, ratio=0.4, plan_ratio=0.3)]
    assert e2e[0]["ksampling_share"] == 0.1 and e2e[0]["diffusers_s"] is None
    text = format_extra(table, marginal, e2e)
    assert "| b1 | euler | — | 8.0 | — | 32.0 | 0.25 | — |" in text
    assert "| heun | 20.00 | 15.00 | 50.00 | 0.40 | 0.30 |" in text
    assert "Marginal ks/kd: median 0.40 (goal <= 0.3), worst 0.40 (goal <= 0.5) over 1 solvers." in text
    assert "| euler | 1 | 10 | 90.0 | 100.0 (10.0%) | — |" in text
