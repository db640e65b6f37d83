"""k-diffusion's solver set beyond parity: eta = 0 equals the ODE counterpart, convergence
orders on Gaussian data (closed-form ODE solution), short grids, no host syncs per step,
the SDE solvers' stationary statistics, the off-grid solvers' bookkeeping, bad options."""

from __future__ import annotations

import math

import pytest
import torch

import ksampling
from helpers import GaussianData, HostSyncCounter, SmoothToy, fitted_order, karras_grid, rel_err, start
from ksampling.samplers import available, info

F64 = torch.float64
MINE = [
    "dpm_2",
    "dpm_2_ancestral",
    "lms",
    "dpm_fast",
    "dpm_adaptive",
    "dpmpp_2s_ancestral",
    "dpmpp_sde",
    "dpmpp_2m",
    "dpmpp_2m_sde",
    "dpmpp_3m_sde",
]
FIXED_GRID = [name for name in MINE if name not in ("dpm_fast", "dpm_adaptive")]


def forbidden(sigma, sigma_next):
    raise AssertionError("eta = 0 must draw no noise")


# (SDE form at eta = 0, its ODE counterpart): each pair must agree to round-off.
ETA_ZERO_PAIRS = [
    (("euler_ancestral", {"eta": 0.0}), ("euler", {})),
    (("dpm_2_ancestral", {"eta": 0.0}), ("dpm_2", {})),
    # dpmpp_sde with r = 1/2 puts all weight on the midpoint model call: DPM-Solver++(2S)
    (("dpmpp_sde", {"eta": 0.0}), ("dpmpp_2s_ancestral", {"eta": 0.0})),
    # the midpoint correction φ/2 · (D_i − D_{i−1})/r is DPM-Solver++(2M)'s extrapolation
    (("dpmpp_2m_sde", {"eta": 0.0}), ("dpmpp_2m", {})),
    # k-diffusion's 3M coefficients are the official DPM-Solver ones, with no lower-order final steps
    (("dpmpp_3m_sde", {"eta": 0.0}), ("dpmpp_3m", {"official_coefficients": True, "lower_order_final": False})),
]


@pytest.mark.parametrize("pair", ETA_ZERO_PAIRS, ids=lambda p: f"{p[0][0]}={p[1][0]}")
@pytest.mark.parametrize("to_zero", [True, False])
def test_eta_zero_equals_the_ode_solver(pair, to_zero):
    (sde, sde_options), (ode, ode_options) = pair
    if ode not in available():
        pytest.skip(f"{ode} is not registered")
    grid = karras_grid(9, 0.05, 10.0, append_zero=to_zero)
    x = start(3, 4)
    a = ksampling.sample(SmoothToy(), x, grid, sde, noise_sampler=forbidden, **sde_options)
    b = ksampling.sample(SmoothToy(), x, grid, ode, **ode_options)
    assert rel_err(a, b) < 1e-13


def test_heun_variant_of_2m_sde_is_a_different_method():
    grid = karras_grid(9, 0.05, 10.0)
    x = start(3, 4)
    heun = ksampling.sample(SmoothToy(), x, grid, "dpmpp_2m_sde", eta=0.0, solver_type="heun")
    midpoint = ksampling.sample(SmoothToy(), x, grid, "dpmpp_2m_sde", eta=0.0)
    assert rel_err(heun, midpoint) > 1e-6


# Measured on N = 16…128 (64…512 for dpmpp_3m_sde; σ 10 → 0.01, no step to 0). Expected: the method's order.
# dpmpp_3m_sde at eta = 0 uses k-diffusion's (and the official DPM-Solver's) coefficient on
# the second difference, half the Taylor one, so it converges with order 2 (see its docstring).
# lms is order 4 once its history is full, but its first three steps are of order 1..3, which
# limits it on short grids (k-diffusion's behaviour): we check > 3.
ORDERS = [
    ("dpm_2", {}, 2),
    ("dpm_2_ancestral", {"eta": 0.0}, 2),
    ("dpmpp_2m", {}, 2),
    ("dpmpp_2s_ancestral", {"eta": 0.0}, 2),
    ("dpmpp_sde", {"eta": 0.0}, 2),
    ("dpmpp_2m_sde", {"eta": 0.0, "solver_type": "heun"}, 2),
    ("dpm_fast", {}, 3),
    ("dpmpp_3m_sde", {"eta": 0.0}, 2),
]


@pytest.mark.parametrize("name,options,expected", ORDERS, ids=[f"{n}-{o}" for n, o, _ in ORDERS])
def test_convergence_order_on_gaussian_data(name, options, expected):
    data = GaussianData([0.5, -1.0, 2.0], [0.3, 1.5, 0.05])
    x = start(4, 3)
    sigma_min, sigma_max = 0.01, 10.0
    exact = data.ode_solution(x, sigma_max, sigma_min)
    ns = [64, 128, 256, 512] if name == "dpmpp_3m_sde" else [16, 32, 64, 128]  # 3M: later asymptotics
    errors = []
    for n in ns:
        grid = karras_grid(n + 1, sigma_min, sigma_max, append_zero=False)
        errors.append(rel_err(ksampling.sample(data, x, grid, name, **options), exact))
    assert abs(fitted_order(ns, errors) - expected) < 0.3, errors


def test_lms_is_high_order():
    data = GaussianData([0.5, -1.0, 2.0], [0.3, 1.5, 0.05])
    x = start(4, 3)
    exact = data.ode_solution(x, 10.0, 0.01)
    ns = [16, 32, 64]
    errors = [
        rel_err(ksampling.sample(data, x, karras_grid(n + 1, 0.01, 10.0, append_zero=False), "lms"), exact) for n in ns
    ]
    assert fitted_order(ns, errors) > 3.0, errors
    low = [
        rel_err(ksampling.sample(data, x, karras_grid(n + 1, 0.01, 10.0, append_zero=False), "lms", order=1), exact)
        for n in ns
    ]
    assert abs(fitted_order(ns, low) - 1) < 0.3  # order 1 is Euler


@pytest.mark.parametrize("name", MINE)
@pytest.mark.parametrize("steps", [1, 2, 3])
@pytest.mark.parametrize("to_zero", [True, False])
def test_short_grids(name, steps, to_zero):
    grid = karras_grid(steps, 0.1, 10.0) if to_zero else karras_grid(steps + 1, 0.1, 10.0, append_zero=False)
    x = start(3, 4)
    options = {"eta": 1.0} if "eta" in ksampling.samplers.get(name).option_names() else {}
    out = ksampling.sample(SmoothToy(), x, grid, name, generator=torch.Generator().manual_seed(1), **options)
    assert out.shape == x.shape and torch.isfinite(out).all()
    if to_zero and steps == 1:
        # the only step goes to 0: every one of these solvers then returns D(x; σ_0)
        expected = SmoothToy()(x, torch.full((3,), 10.0, dtype=F64))
        assert torch.allclose(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", FIXED_GRID)
def test_no_host_syncs_per_step_with_brownian_noise(name):
    options = {"eta": 1.0} if "eta" in ksampling.samplers.get(name).option_names() else {}
    counts = []
    for n in (4, 12):
        x = start(3, 4)
        with HostSyncCounter() as counter:
            ksampling.sample(
                SmoothToy(), x, karras_grid(n, 0.05, 10.0), name, generator=torch.Generator().manual_seed(1), **options
            )
        counts.append((counter.count, counter.names))
    assert counts[0][0] == counts[1][0], f"per-step host conversions: {counts[1][1]}"


STOCHASTIC = [
    ("dpmpp_2m_sde", {}),
    ("dpmpp_2m_sde", {"solver_type": "heun"}),
    ("dpmpp_3m_sde", {}),
    ("dpmpp_sde", {}),
    ("dpmpp_2s_ancestral", {}),
    ("dpm_2_ancestral", {}),
    ("dpm_fast", {"eta": 1.0}),
    ("dpm_adaptive", {"eta": 1.0}),
]


@pytest.mark.parametrize("name,options", STOCHASTIC, ids=[f"{n}-{o}" for n, o in STOCHASTIC])
def test_sde_samples_have_the_data_statistics(name, options):
    """Gaussian data N(0.5, 1): 4000 one-dimensional samples from σ = 80 must have mean 0.5
    and variance 1 within ~4 standard errors (a wrong noise scale moves the variance)."""
    data = GaussianData([0.5], [1.0])
    n = 4000
    x = torch.randn(n, 1, generator=torch.Generator().manual_seed(0), dtype=F64) * math.sqrt(1 + 80.0**2)
    grid = karras_grid(80, 0.01, 80.0)
    out = ksampling.sample(data, x, grid, name, generator=torch.Generator().manual_seed(1), **options)
    assert abs(out.mean().item() - 0.5) < 0.06
    assert abs(out.var().item() - 1.0) < 0.1
    if name == "dpmpp_2m_sde" and not options:
        # and half the noise gives visibly too little variance
        half = ksampling.sample(data, x, grid, name, generator=torch.Generator().manual_seed(1), s_noise=0.5)
        assert half.var().item() < 0.5


def test_dpm_adaptive_reports_its_work_and_meets_its_tolerance():
    data = GaussianData([0.5, -1.0, 2.0], [0.3, 1.5, 0.05])
    x = start(4, 3)
    grid = karras_grid(5, 0.05, 10.0)
    exact = data.ode_solution(x, 10.0, 0.05)  # the run ends at sigma_min
    results = []
    for rtol in (0.05, 0.005, 0.0005):
        out, run = ksampling.sample(data, x, grid, "dpm_adaptive", rtol=rtol, atol=rtol / 10, return_info=True)
        assert run.accepted + run.rejected == run.steps
        assert run.nfe == 3 * run.steps
        results.append((rel_err(out, exact), run.nfe))
    errors, nfes = zip(*results)
    assert errors[0] > errors[1] > errors[2] and nfes[0] < nfes[1] < nfes[2]
    assert all(error < rtol for error, rtol in zip(errors, (0.05, 0.005, 0.0005)))
    _, run2 = ksampling.sample(data, x, grid, "dpm_adaptive", order=2, return_info=True)
    assert run2.nfe == 2 * run2.steps


def test_dpm_fast_ends_at_sigma_min_and_final_step_denoise():
    data = GaussianData([0.5, -1.0, 2.0], [0.3, 1.5, 0.05])
    x = start(4, 3)
    grid = karras_grid(12, 0.05, 10.0)  # 12 steps, sigma_min = 0.05, then 0
    out, run = ksampling.sample(data, x, grid, "dpm_fast", return_info=True)
    assert run.nfe == 12
    error_12 = rel_err(out, data.ode_solution(x, 10.0, 0.05))
    more = ksampling.sample(data, x, grid, "dpm_fast", nfe=48)
    assert rel_err(more, data.ode_solution(x, 10.0, 0.05)) < error_12 / 8 and error_12 < 1e-2
    denoised = ksampling.sample(data, x, grid, "dpm_fast", nfe=12, final_step="denoise")
    expected = data(out, torch.full((4,), 0.05, dtype=F64))
    assert torch.allclose(denoised, expected, rtol=1e-12, atol=1e-12)


def test_off_grid_callbacks_report_the_solver_sigmas():
    data = GaussianData([0.0, 0.0, 0.0], [1.0, 1.0, 1.0])
    x = start(2, 3)
    for name in ("dpm_fast", "dpm_adaptive"):
        calls = []
        ksampling.sample(data, x, karras_grid(6, 0.05, 10.0), name, callback=calls.append)
        sigmas = [float(c["sigma"]) for c in calls]
        assert [c["i"] for c in calls] == list(range(len(calls)))
        assert sigmas[0] == pytest.approx(10.0, rel=1e-12)
        assert all(0.05 * (1 - 1e-12) <= s <= 10.0 * (1 + 1e-12) for s in sigmas)
        assert sorted(sigmas, reverse=True) == sigmas or name == "dpm_adaptive"  # rejected attempts repeat
        assert all(c["denoised"].shape == x.shape for c in calls)


@pytest.mark.parametrize(
    "name,options,match",
    [
        ("dpmpp_2m_sde", {"eta": -1.0}, "eta"),
        ("dpmpp_2m_sde", {"solver_type": "euler"}, "solver_type"),
        ("dpmpp_3m_sde", {"s_noise": float("nan")}, "s_noise"),
        ("dpmpp_sde", {"r": 0.0}, "r"),
        ("dpmpp_2s_ancestral", {"eta": "1"}, "eta"),
        ("lms", {"order": 0}, "order"),
        ("lms", {"order": 2.5}, "order"),
        ("dpm_fast", {"nfe": 0}, "nfe"),
        ("dpm_adaptive", {"order": 4}, "order"),
        ("dpm_adaptive", {"rtol": -0.1}, "rtol"),
        ("dpm_adaptive", {"h_init": 0.0}, "h_init"),
        ("dpm_adaptive", {"pcoeff": math.inf}, "pcoeff"),
        ("dpm_2", {"s_churn": -1.0}, "s_churn"),
    ],
)
def test_bad_options_name_the_option(name, options, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ksampling.sample(SmoothToy(), start(3, 4), karras_grid(4, 0.05, 10.0), name, **options)


def test_metadata():
    for name in MINE:
        meta = info(name)
        assert meta["fixed_grid"] == (name not in ("dpm_fast", "dpm_adaptive"))
    for name in ("dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde"):
        cls = ksampling.samplers.get(name)
        assert cls.default_noise == "brownian" and cls.kind == "sde"
        assert not cls(eta=0.0).draws_noise and cls().draws_noise
    assert info("lms")["order"] == 2 and info("lms")["order_with_start"] == 4 and info("lms")["multistep"]
    assert info("dpmpp_2m")["multistep"] and not info("dpmpp_2s_ancestral")["multistep"]


@pytest.mark.parametrize("name", ["dpm_fast", "dpm_adaptive"])
def test_off_grid_callback_with_final_denoise(name):
    """The loop's own last step (final_step="denoise") reports the grid's sigma_min."""
    data = GaussianData([0.0, 0.0, 0.0], [1.0, 1.0, 1.0])
    x = start(2, 3)
    grid = karras_grid(6, 0.05, 10.0)
    calls = []
    ksampling.sample(data, x, grid, name, callback=calls.append, final_step="denoise")
    assert float(calls[-1]["sigma"]) == pytest.approx(0.05, rel=1e-12)
    assert calls[-1]["i"] == 5
