"""A planned run (ksampling.plan): equal to sample, validated once, compilable, capturable."""

from __future__ import annotations

import math

import pytest
import torch

import ksampling
from ksampling.samplers import Solver
from ksampling.samplers.graphs import CapturedPlan

from helpers import HostSyncCounter, SmoothToy

SIGMAS = ksampling.schedules.karras(8, 0.03, 14.6)
DETERMINISTIC = ("euler", "heun", "dpmpp_2m", "unipc", "deis", "lms", "dpm_2", "dpmpp_3m_sde")
STOCHASTIC = ("euler_ancestral", "dpmpp_2m_sde", "dpmpp_sde", "dpmpp_2s_ancestral")
COMPILE_SOLVERS = ("euler", "heun", "dpmpp_2m", "unipc", "deis")


def start(batch=3, dim=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, dim, generator=g, dtype=dtype) * SIGMAS[0].to(dtype)


def options(solver):
    # the SDE solvers' default eta is stochastic; eta=0 makes them deterministic
    return {"eta": 0.0} if solver == "dpmpp_3m_sde" else {}


@pytest.mark.parametrize("solver", DETERMINISTIC)
def test_plan_called_twice_equals_sample(solver):
    model, x = SmoothToy(), start()
    expected = ksampling.sample(model, x, SIGMAS, solver, **options(solver))
    plan = ksampling.plan(model, SIGMAS, solver, **options(solver))
    first, second = plan(x), plan(x)
    assert torch.equal(first, expected) and torch.equal(second, expected)


@pytest.mark.parametrize("solver", STOCHASTIC)
def test_plan_with_generators_equals_sample(solver):
    model, x = SmoothToy(), start()
    expected = ksampling.sample(model, x, SIGMAS, solver, generator=torch.Generator().manual_seed(7))
    plan = ksampling.plan(model, SIGMAS, solver)
    for _ in range(2):
        assert torch.equal(plan(x, torch.Generator().manual_seed(7)), expected)


def test_multistep_history_does_not_leak_between_calls_or_batches():
    model = SmoothToy()
    plan = ksampling.plan(model, SIGMAS, "dpmpp_3m_sde", eta=0.0)
    a, b = start(seed=1), start(batch=5, seed=2)
    out_a = plan(a)
    out_b = plan(b)  # another batch size in between
    assert torch.equal(plan(a), out_a)
    assert torch.equal(out_b, ksampling.sample(model, b, SIGMAS, "dpmpp_3m_sde", eta=0.0))
    assert plan.solver.history == []  # nothing kept alive after a run


def test_return_info_and_final_step_policies():
    model, x = SmoothToy(), start()
    for final_step, nfe in (("solver", 15), ("denoise", 15), ("stop", 14)):
        out, info = ksampling.plan(model, SIGMAS, "heun", final_step=final_step)(x, return_info=True)
        ref, ref_info = ksampling.sample(model, x, SIGMAS, "heun", final_step=final_step, return_info=True)
        assert torch.equal(out, ref) and info == ref_info and info.nfe == nfe


def test_the_denoise_final_step_is_a_complete_step():
    plan = ksampling.plan(SmoothToy(), SIGMAS, "dpmpp_2m", final_step="denoise")
    reference = plan.steps[-1]
    assert set(vars(plan.final)) >= {"index", "sigma", "sigma_next", "sigma_prev", "first", "last", "to_zero", "n_steps"}
    assert plan.final.index == reference.index + 1 == len(SIGMAS) - 2
    assert plan.final.sigma == reference.sigma_next and plan.final.sigma_prev == reference.sigma
    assert plan.final.last and plan.final.to_zero and not plan.final.first and plan.final.sigma_next == 0.0
    single = ksampling.plan(SmoothToy(), [2.0, 0.0], "euler", final_step="denoise").final
    assert single.first and single.sigma_prev is None and single.n_steps == 1


class _Counting:
    def __init__(self):
        self.calls = 0

    def __call__(self, x, sigma):
        self.calls += 1
        return x * 0.5


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(sigmas=torch.tensor([1.0, 2.0])), ValueError, "descending"),
        (dict(sigmas=torch.tensor([1.0])), ValueError, "at least 2"),
        (dict(sigmas=[1.0, float("nan"), 0.0]), ValueError, "finite"),
        (dict(sigmas=[1e308, 1.0, 0.0]), ValueError, "too large"),
        (dict(solver="no_such_solver"), ValueError, "known solvers"),
        (dict(solver="euler", eta=1.0), TypeError, "unknown option"),
        (dict(solver="euler_ancestral", eta=-1.0), ValueError, "eta"),
        (dict(final_step="never"), ValueError, "final_step"),
        (dict(extra_args=[1]), TypeError, "extra_args"),
        (dict(callback=3), TypeError, "callback"),
    ],
)
def test_bad_input_is_refused_when_the_plan_is_made(kwargs, error, words):
    model = _Counting()
    kwargs = {"sigmas": SIGMAS, **kwargs}
    sigmas = kwargs.pop("sigmas")
    with pytest.raises(error, match=words):
        ksampling.plan(model, sigmas, **kwargs)
    assert model.calls == 0


def test_a_non_callable_model_is_refused_when_the_plan_is_made():
    with pytest.raises(TypeError, match="model must be callable"):
        ksampling.plan(object(), SIGMAS)


def test_bad_x_is_refused_at_the_call():
    plan = ksampling.plan(_Counting(), SIGMAS)
    with pytest.raises(TypeError, match="floating-point"):
        plan(torch.ones(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="NaN or inf"):
        plan(torch.full((2, 3), float("nan")))
    with pytest.raises(ValueError, match="does not fit in x's dtype"):
        ksampling.plan(_Counting(), [1e10, 1.0, 0.0])(torch.ones(1, 2, dtype=torch.float16))


def test_huge_sigmas_give_a_value_error_not_an_overflow():
    for solver in ("euler", "euler_ancestral", "dpmpp_2m"):
        with pytest.raises(ValueError, match="too large"):
            ksampling.sample(_Counting(), torch.ones(1, 2), torch.tensor([1e308, 1.0, 0.0], dtype=torch.float64), solver)


def test_planned_loop_makes_no_host_sync():
    plan = ksampling.plan(SmoothToy(), SIGMAS, "dpmpp_2m", check_finite=False)
    x = start()
    plan(x)  # the first run makes the plan's sigma tensors
    with HostSyncCounter() as counter:
        plan(x)
    assert counter.count == 0, counter.names


def test_sigma_tensors_are_made_once_and_equal_fresh_ones():
    seen = []

    def model(x, sigma):
        seen.append(sigma)
        return x * 0.5

    plan = ksampling.plan(model, SIGMAS, "heun")
    x = start()
    plan(x)
    fresh = [s.clone() for s in seen]
    seen.clear()
    plan(x)
    assert all(torch.equal(a, b) for a, b in zip(seen, fresh)) and len(seen) == len(fresh)
    assert len({s.untyped_storage().data_ptr() for s in seen}) == 1  # the rows of one tensor


# -- differentiable ------------------------------------------------------------------------------
def test_differentiable_run_gives_the_closed_form_gradient():
    # D(x; σ) = w·x: each Euler step is x <- x (1 − c_i + c_i w), c_i = 1 − σ_{i+1}/σ_i, so
    # d(sum out)/dx = Π (1 − c_i + c_i w) and d(sum out)/dw = sum over x of the product's derivative.
    w = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    sigmas = [10.0, 4.0, 1.0, 0.25]

    def model(x, sigma):
        return w * x

    x = start(batch=2, dim=3).requires_grad_()
    out = ksampling.plan(model, sigmas)(x, differentiable=True)
    out.sum().backward()
    c = [1 - b / a for a, b in zip(sigmas, sigmas[1:])]
    factors = [1 - ci + ci * 0.7 for ci in c]
    product = math.prod(factors)
    torch.testing.assert_close(x.grad, torch.full_like(x, product), rtol=1e-12, atol=0)
    d_product = sum(product / f * ci for f, ci in zip(factors, c))
    torch.testing.assert_close(w.grad, (x.detach().sum() * d_product).to(w.grad), rtol=1e-12, atol=0)


def test_default_run_keeps_no_graph():
    x = start().requires_grad_()
    assert not ksampling.sample(SmoothToy(), x, SIGMAS).requires_grad
    assert ksampling.sample(SmoothToy(), x, SIGMAS, differentiable=True).requires_grad


# -- pre-drawn noise -----------------------------------------------------------------------------
@pytest.mark.parametrize("solver", STOCHASTIC + ("euler",))
def test_predrawn_noise_equals_the_generators_noise(solver):
    model, x = SmoothToy(), start()
    plan = ksampling.plan(model, SIGMAS, solver)
    noise = plan.draw_noise(x, torch.Generator().manual_seed(3))
    assert noise.shape == (plan.noise_draws(), *x.shape)
    assert torch.equal(plan(x, noise=noise), plan(x, torch.Generator().manual_seed(3)))


def test_predrawn_noise_per_sample_generators():
    model, x = SmoothToy(), start()
    plan = ksampling.plan(model, SIGMAS, "euler_ancestral")
    gens = lambda: [torch.Generator().manual_seed(s) for s in range(3)]  # noqa: E731
    assert torch.equal(plan(x, noise=plan.draw_noise(x, gens())), plan(x, gens()))


def test_too_little_predrawn_noise_is_a_clear_error():
    plan = ksampling.plan(SmoothToy(), SIGMAS, "euler_ancestral")
    x = start()
    with pytest.raises(ValueError, match="pre-drawn"):
        plan(x, noise=plan.draw_noise(x, torch.Generator().manual_seed(0))[:2])
    with pytest.raises(ValueError, match="not several"):
        plan(x, torch.Generator(), noise=plan.draw_noise(x))


# -- issue 12: the loop's error messages ---------------------------------------------------------
def test_nan_from_the_noise_sampler_is_blamed_on_the_noise():
    x = start()
    bad = lambda sigma, sigma_next: torch.full_like(x, float("nan"))  # noqa: E731
    with pytest.raises(ValueError, match="noise_sampler returned non-finite values at step 0|noise_sampler returned non-finite"):
        ksampling.sample(SmoothToy(), x, SIGMAS, "euler_ancestral", noise_sampler=bad)


def test_a_noise_sampler_returning_a_list_is_a_type_error():
    x = start()
    with pytest.raises(TypeError, match="noise_sampler must return a tensor"):
        ksampling.sample(SmoothToy(), x, SIGMAS, "euler_ancestral", noise_sampler=lambda s, t: x.tolist())


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_an_integer_model_output_is_a_type_error(dtype):
    with pytest.raises(TypeError, match="floating-point"):
        ksampling.sample(lambda x, s: x.to(dtype), start(), SIGMAS)


def test_model_nan_is_still_blamed_on_the_model_with_user_noise():
    x = start()

    def model(x, sigma):
        return x * float("nan")

    with pytest.raises(ValueError, match="the model returned non-finite values .* at step 0"):
        ksampling.sample(model, x, SIGMAS, "euler_ancestral", noise_sampler=lambda s, t: torch.zeros_like(x))


class _UncondSolver(Solver):
    name = ""  # not registered

    def step(self, ctx, x, step):
        denoised, uncond = ctx.denoise_with_uncond(x, step.sigma)
        return torch.lerp(x, denoised + 0 * uncond, 1 - step.sigma_next / step.sigma)


class _Guided:
    def __init__(self):
        self.calls = 0

    def __call__(self, x, sigma):
        return x * 0.5

    def denoise_with_uncond(self, x, sigma):
        self.calls += 1
        return x * 0.5, x * 0.25


def test_denoise_with_uncond_is_one_counted_call():
    model, x = _Guided(), start()
    out, info = ksampling.sample(model, x, SIGMAS, _UncondSolver(), return_info=True)
    assert info.nfe == model.calls == len(SIGMAS) - 1
    torch.testing.assert_close(out, ksampling.sample(model, x, SIGMAS, "euler"))
    with pytest.raises(TypeError, match="guidance-wrapped|ClassifierFreeGuidance"):
        ksampling.sample(lambda x, sigma: x * 0.5, x, SIGMAS, _UncondSolver())  # no uncond output


# -- CUDA graphs: the static-buffer runner, eagerly on the CPU -----------------------------------
@pytest.mark.parametrize("solver", ("dpmpp_2m", "euler_ancestral", "dpmpp_2m_sde"))
def test_static_buffer_runner_equals_sample(solver):
    model, x = SmoothToy(), start()
    plan = ksampling.plan(model, SIGMAS, solver)
    runner = CapturedPlan(plan, torch.zeros_like(x), use_graph=False)
    for seed in (1, 2):
        expected = ksampling.sample(model, x, SIGMAS, solver, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(runner(x, torch.Generator().manual_seed(seed)), expected)


def test_static_buffer_runner_reports_non_finite_outputs():
    plan = ksampling.plan(lambda x, s: x / (s.view(-1, 1) > 1).to(x), SIGMAS, "euler")
    runner = CapturedPlan(plan, start(), use_graph=False)
    with pytest.raises(ValueError, match="non-finite values .* at step"):
        runner(start())


def test_capture_needs_cuda_and_says_so():
    plan = ksampling.plan(SmoothToy(), SIGMAS, "euler")
    with pytest.raises(RuntimeError, match="CUDA"):
        plan.capture(start())
    with pytest.raises(ValueError, match="callback"):
        CapturedPlan(ksampling.plan(SmoothToy(), SIGMAS, callback=print), start(), use_graph=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_replay_equals_eager():
    model = SmoothToy()
    sigmas = SIGMAS.cuda()
    x = start(dtype=torch.float32).cuda()
    for solver in ("dpmpp_2m", "euler_ancestral"):
        plan = ksampling.plan(model, sigmas, solver)
        captured = plan.capture(x)
        noise = plan.draw_noise(x, torch.Generator("cuda").manual_seed(0))
        torch.testing.assert_close(captured(x, noise=noise), plan(x, noise=noise), rtol=1e-5, atol=1e-5)


# -- torch.compile ---------------------------------------------------------------------------------
def _compiled_equals_eager(solver, backend, sigmas=SIGMAS, **kwargs):
    torch._dynamo.reset()
    model, x = SmoothToy(), start(dtype=torch.float32)
    plan = ksampling.plan(model, sigmas, solver, **kwargs)
    compiled = torch.compile(plan, fullgraph=True, backend=backend)
    if plan.solver.draws_noise:
        noise = plan.draw_noise(x, torch.Generator().manual_seed(0))
        eager, out = plan(x, noise=noise), compiled(x, noise=noise)
    else:
        eager, out = plan(x), compiled(x)
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("solver", COMPILE_SOLVERS)
def test_compile_fullgraph_equals_eager(solver):
    _compiled_equals_eager(solver, "eager")


@pytest.mark.slow
@pytest.mark.parametrize("solver", ("euler_ancestral", "er_sde"))
def test_compile_fullgraph_with_predrawn_noise_equals_eager(solver):
    # er_sde: its quadrature once returned numpy scalars, which dynamo traces as tensors
    _compiled_equals_eager(solver, "eager", sigmas=ksampling.schedules.karras(4, 0.03, 14.6))


@pytest.mark.slow
def test_compile_with_inductor_equals_eager():
    # inductor generates and builds C++ (tens of seconds on a small CPU): a short grid keeps it cheap
    _compiled_equals_eager("dpmpp_2m", "inductor", sigmas=[14.6, 2.0, 0.3, 0.0])


@pytest.mark.slow
def test_a_compiled_stochastic_run_asks_for_predrawn_noise():
    torch._dynamo.reset()
    plan = ksampling.plan(SmoothToy(), SIGMAS, "euler_ancestral")
    compiled = torch.compile(plan, fullgraph=True, backend="eager")
    with pytest.raises(Exception, match="draw_noise"):
        compiled(start(), torch.Generator().manual_seed(0))


@pytest.mark.slow
def test_a_compiled_run_asserts_finiteness():
    torch._dynamo.reset()
    plan = ksampling.plan(lambda x, s: x * float("nan"), SIGMAS, "euler")
    compiled = torch.compile(plan, fullgraph=True, backend="eager")
    with pytest.raises(RuntimeError, match="non-finite"):
        compiled(start())
