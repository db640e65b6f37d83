"""Robustness of the solvers: bad options fail fast, degenerate grids do not blow up.

Every former hang runs under :func:`deadline`, so a regression fails the test instead of
stalling the suite.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading

import pytest
import torch

import ksampling
from helpers import GaussianData, karras_grid

F64 = torch.float64


@contextlib.contextmanager
def deadline(seconds: float):
    """Raise TimeoutError in the main thread if the block runs longer than ``seconds``
    (SIGALRM: Linux/macOS main thread; elsewhere the block runs without a deadline)."""
    usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def on_alarm(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _data():
    return GaussianData([0.5, -1.0, 0.0], [0.3, 2.0, 1.0])


def _start(batch=2, sigma_max=80.0, dtype=F64):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(batch, 3, generator=g, dtype=F64) * sigma_max).to(dtype)


# -- dpm_adaptive: every controller option is checked, and the attempts are bounded -----------
@pytest.mark.parametrize(
    "options, match",
    [
        (dict(h_init=math.inf), "h_init"),
        (dict(h_init=0.0), "h_init"),
        (dict(h_init=math.nan), "h_init"),
        (dict(accept_safety=1 + math.pi / 2 + 0.1), "accept_safety"),
        (dict(accept_safety=math.inf), "accept_safety"),
        (dict(accept_safety=1.2), "accept_safety"),
        (dict(accept_safety=-0.1), "accept_safety"),
        (dict(icoeff=-5.0), "pcoeff \\+ icoeff \\+ dcoeff"),
        (dict(pcoeff=math.inf), "pcoeff"),
        (dict(dcoeff=math.nan), "dcoeff"),
        (dict(rtol=math.inf), "rtol"),
        (dict(atol=-1.0), "atol"),
        (dict(rtol=0.0, atol=0.0), "rtol and atol"),
        (dict(max_attempts=0), "max_attempts"),
        (dict(eta=math.inf), "eta"),
        (dict(s_noise=math.inf), "s_noise"),
    ],
)
def test_dpm_adaptive_refuses_bad_controller_options(options, match):
    with deadline(10), pytest.raises(ValueError, match=match):
        ksampling.sample(_data(), _start(), karras_grid(8), "dpm_adaptive", **options)


def test_dpm_adaptive_bounds_its_attempts():
    # unreachable tolerances: the run must stop with a clear error, not loop
    with deadline(20), pytest.raises(RuntimeError, match="max_attempts=40"):
        ksampling.sample(_data(), _start(), karras_grid(8), "dpm_adaptive", rtol=1e-15, atol=1e-15, max_attempts=40)


def test_dpm_adaptive_stops_when_the_step_size_underflows():
    # a controller that shrinks the step on every attempt (p > 0 with i < 0): h underflows
    with deadline(20), pytest.raises(RuntimeError, match="dpm_adaptive stopped"):
        ksampling.sample(_data(), _start(), karras_grid(8), "dpm_adaptive", pcoeff=10.0, icoeff=-5.0)


def test_pid_controller_survives_extreme_exponents():
    from ksampling.samplers.dpm import PIDStepSizeController

    pid = PIDStepSizeController(0.1, pcoeff=0.0, icoeff=400.0, dcoeff=0.0, order=1)
    assert pid.propose_step(1e300) is False  # (1e-300)**400 underflows to 0: reject, shrink
    assert 0 < pid.h < 0.1
    pid = PIDStepSizeController(0.1, pcoeff=0.0, icoeff=400.0, dcoeff=0.0, order=1)
    assert pid.propose_step(0.0) is True  # (1e8)**400 overflows: accept, grow by 1 + π/2 at most
    assert pid.h == pytest.approx(0.1 * (1 + math.pi / 2))


@pytest.mark.parametrize(
    "name, options",
    [
        ("euler_ancestral", dict(s_noise=math.inf)),
        ("dpmpp_2m_sde", dict(s_noise=math.inf)),
        ("dpmpp_2m_sde", dict(eta=math.inf)),
        ("euler", dict(s_churn=math.inf)),
        ("er_sde", dict(s_noise=math.inf)),
        ("dpm_fast", dict(s_noise=math.inf)),
        ("gradient_estimation", dict(ge_gamma=math.inf)),
    ],
)
def test_infinite_noise_options_are_refused(name, options):
    with pytest.raises(ValueError, match=next(iter(options))):
        ksampling.sample(_data(), _start(), karras_grid(4), name, **options)


def test_infinite_s_tmax_is_still_the_default():
    out = ksampling.sample(_data(), _start(), karras_grid(4), "euler", s_churn=1.0, s_tmax=math.inf,
                           generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(out).all()


# -- tiny gaps: one step of relative size 1e-12 inside an ordinary grid -------------------------
def _grid_with_gap(n=12, at=5, gap=1e-12):
    base = karras_grid(n).tolist()
    return base, base[: at + 1] + [base[at] * (1 - gap)] + base[at + 1 :]


MULTISTEP_ODE = [
    ("lms", {}),
    ("unipc", {}),
    ("unipc", dict(order=3)),
    ("deis", {}),
    ("deis", dict(variable="rho")),
    ("deis", dict(prediction="data")),
    ("dpmpp_2m", {}),
    ("dpmpp_3m", {}),
    ("dpmpp_2m_sde", dict(eta=0.0)),
    ("dpmpp_3m_sde", dict(eta=0.0)),
    ("er_sde", dict(noise_scale="ode")),
    ("ipndm_v", {}),
    ("res_multistep", {}),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name, options", MULTISTEP_ODE)
def test_multistep_ode_solvers_fall_back_to_lower_order_at_a_tiny_gap(name, options, dtype):
    """Before: unipc's corrector 3e10 relative error, lms 1e4 (float32). The step next to the
    gap drops to a lower order, which costs accuracy once, not stability."""
    data = _data()
    x = _start(batch=64, dtype=dtype)
    exact = data.ode_solution(x.to(F64), 80.0, 0.0)
    errors = []
    for at in (1, 3, 5, 8):
        _, grid = _grid_with_gap(at=at)
        out = ksampling.sample(data, x, torch.tensor(grid, dtype=F64), name, **options)
        errors.append(((out.to(F64) - exact).norm() / exact.norm()).item())
    # 12 Karras steps give 0.003..0.2 without the gap; a blow-up gives 1e4 and more
    assert max(errors) < 0.3, errors


@pytest.mark.parametrize("name", ["dpmpp_2m_sde", "dpmpp_3m_sde", "er_sde"])
def test_multistep_sde_solvers_stay_bounded_at_a_tiny_gap(name):
    """Before: |x| grew from ~3 to 95, 280 and 8421 (the noise divided by the gap)."""
    data = _data()  # N(μ, var ≤ 2): 64 samples lie within |x| < 8 with overwhelming probability
    x = _start(batch=64)
    for at in (1, 3, 5, 8):
        _, grid = _grid_with_gap(at=at)
        out = ksampling.sample(data, x, torch.tensor(grid, dtype=F64), name, generator=torch.Generator().manual_seed(3))
        assert out.abs().max() < 8, (at, out.abs().max())


def test_step_order_stops_the_history_at_a_degenerate_ratio():
    from ksampling.samplers.common import degenerate_ratio, step_order

    sizes = [1.0, 1.0, 1e-12, 1.0, 1.0, 1.0]
    orders = [step_order(i, len(sizes), 3, step_size=sizes.__getitem__) for i in range(len(sizes))]
    # step 2 is the tiny one: stepping across it from a full history is harmless (the older
    # points' weights shrink with it); step 3 comes after it and would divide by it (first
    # order), step 4 can look back across steps 3 and 4 only, step 5 is third order again
    assert orders == [1, 2, 3, 1, 2, 3]
    assert degenerate_ratio(0.05, 1.0) and not degenerate_ratio(0.5, 1.0)
    assert not degenerate_ratio(1.0, 0.05)  # a much smaller next step: k-diffusion's order is kept
    assert degenerate_ratio(1.0, math.inf)


def test_er_sde_in_float16_at_a_large_sigma_max():
    """Before: 'value cannot be converted to type c10::Half without overflow' (w2 = O(Δσ²))."""
    data = _data()
    x = _start(batch=4, sigma_max=1e4)
    grid = karras_grid(10, sigma_max=1e4)
    half = ksampling.sample(data, x.half(), grid, "er_sde", generator=torch.Generator().manual_seed(0))
    full = ksampling.sample(data, x, grid, "er_sde", generator=torch.Generator().manual_seed(0))
    assert half.dtype == torch.float16 and torch.isfinite(half).all()
    assert (half.to(F64) - full).abs().max() < 0.05


def test_ancestral_step_refuses_a_step_up_in_noise():
    from ksampling.samplers.common import ancestral_step

    with pytest.raises(ValueError, match="sigma_next"):
        ancestral_step(1.0, 2.0)  # was: math domain error
    down, up = ancestral_step(2.0, 1.0)
    assert down**2 + up**2 == pytest.approx(1.0) and up == pytest.approx(math.sqrt(3) / 2)


@pytest.mark.parametrize("name", sorted(set(ksampling.samplers.available()) - {"dpm_fast", "dpm_adaptive"}))
def test_a_huge_sigma_max_gives_a_result_or_a_clear_error(name):
    """Before: OverflowError from σ² in the host math (ancestral split, DDPM's β, the
    Brownian tree's depth) at σ_max = 1e308."""
    class Zero:  # D = 0, with the unconditional output that the CFG++ solvers also read
        def __call__(self, x, sigma):
            return torch.zeros_like(x)

        def denoise_with_uncond(self, x, sigma):
            return torch.zeros_like(x), torch.zeros_like(x)

    from ksampling.samplers.loop import MAX_SIGMA

    with pytest.raises(ValueError, match="too large"):  # the loop refuses σ whose square overflows
        ksampling.sample(Zero(), torch.ones(2, 3, dtype=F64), [1e308, 1.0, 0.0], name)
    x = torch.ones(2, 3, dtype=F64) * MAX_SIGMA  # the largest σ a grid may hold
    try:
        out = ksampling.sample(Zero(), x, [MAX_SIGMA, 1.0, 0.0], name,
                               generator=torch.Generator().manual_seed(0))
    except ValueError as error:  # a clear one, naming what overflowed
        assert "noise_scale" in str(error) or "non-finite" in str(error), error
    else:
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted({name for name, _ in MULTISTEP_ODE}))
def test_a_zero_gap_is_rejected_naming_the_two_sigmas(name):
    """The other side of the tiny gap: a repeated sigma (gap 0) has no step to take and is
    refused before the first model call, naming both sigmas."""
    base = karras_grid(8).tolist()
    grid = base[:4] + [base[3]] + base[4:]
    calls = []

    def model(x, sigma):
        calls.append(1)
        return torch.zeros_like(x)

    with pytest.raises(ValueError, match=r"sigmas\[3\] = .* is not greater than sigmas\[4\]"):
        ksampling.sample(model, _start(), grid, name)
    assert not calls


# -- start="singlestep": the first steps of a multistep method by a singlestep one -------------
def test_singlestep_start_of_dpmpp_3m_and_deis_is_dpm_solver_3():
    data, x = _data(), _start()
    grid = [80.0, 9.0, 1.5]  # both steps are start steps (order − 1 = 2)
    for name, options, algorithm in [
        ("dpmpp_3m", {}, "data"),
        ("deis", {}, "noise"),
        ("deis", dict(prediction="data"), "data"),
    ]:
        ours, run = ksampling.sample(data, x, grid, name, start="singlestep", return_info=True, **options)
        reference = ksampling.sample(data, x, grid, "dpm_solver", order=3, algorithm=algorithm)
        torch.testing.assert_close(ours, reference, rtol=1e-13, atol=1e-13)
        assert run.nfe == 6


def test_singlestep_start_of_lms_is_classical_rk4():
    data, x = _data(), _start()
    grid = [80.0, 20.0, 5.0, 1.0]  # three start steps for order 4

    def rk4(x, sigma, sigma_next):  # written from the tableau, on dx/dσ = (x − D)/σ
        def d(u, s):
            return (u - data(u, torch.full((u.shape[0],), s, dtype=F64))) / s

        dt = sigma_next - sigma
        k1 = d(x, sigma)
        k2 = d(x + dt / 2 * k1, sigma + dt / 2)
        k3 = d(x + dt / 2 * k2, sigma + dt / 2)
        k4 = d(x + dt * k3, sigma_next)
        return x + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)

    expected = x
    for sigma, sigma_next in zip(grid, grid[1:]):
        expected = rk4(expected, sigma, sigma_next)
    ours, run = ksampling.sample(data, x, grid, "lms", start="singlestep", return_info=True)
    torch.testing.assert_close(ours, expected, rtol=1e-13, atol=1e-13)
    assert run.nfe == 12
    # after the start, one model call per step; the default start is k-diffusion's
    _, run = ksampling.sample(data, x, karras_grid(10), "lms", start="singlestep", return_info=True)
    assert run.nfe == 10 + 3 * 3
    with pytest.raises(ValueError, match="start"):
        ksampling.sample(data, x, karras_grid(4), "lms", start="runge_kutta")


@pytest.mark.parametrize("name", ["lms", "dpmpp_2m"])
def test_a_few_step_grid_keeps_k_diffusions_order(name):
    """Two Karras steps from 14.6 to 0.0292 end with a step 500x smaller than the first: an
    ordinary grid (the speed suite's), where the tiny-gap fallback must not lower the order:
    the result stays k-diffusion's."""
    from reference import k_diffusion

    K = k_diffusion()
    data = _data()
    sigmas = K.sampling.get_sigmas_karras(2, 0.0292, 14.6146).to(F64)
    x = _start(batch=4, sigma_max=14.6146)
    ours = ksampling.sample(data, x, sigmas, name)
    theirs = getattr(K.sampling, f"sample_{name}")(data, x, sigmas, disable=True)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
