"""The core loop and the first samplers: parity, exactness, convergence, determinism, bad input."""

from __future__ import annotations

import math

import pytest
import torch

import ksampling
from helpers import GaussianData, HostSyncCounter, SmoothToy, TableNoise, fitted_order, karras_grid
from ksampling.denoisers.base import LearnedVariance
from reference import k_diffusion

F64 = torch.float64


def _noise(shape, seed, scale=1.0):
    return torch.randn(shape, dtype=F64, generator=torch.Generator().manual_seed(seed)) * scale


# -- parity with the real k-diffusion ---------------------------------------------------------
@pytest.mark.parametrize("name", ["euler", "heun"])
@pytest.mark.parametrize("s_churn", [0.0, 3.0])
def test_parity_with_k_diffusion_euler_heun(name, s_churn):
    K = k_diffusion()
    model = SmoothToy()
    sigmas = karras_grid(7, 0.03, 14.6)
    x = _noise((3, 2, 4), 1, 14.6)
    options = dict(s_churn=s_churn, s_noise=1.01)
    # k-diffusion draws its churn noise with torch.randn_like from the global RNG at every
    # step; ours draws only when gamma > 0, which here is every step, from the same stream.
    with torch.random.fork_rng():
        torch.manual_seed(123)
        expected = getattr(K.sampling, f"sample_{name}")(model, x.clone(), sigmas, disable=True, **options)
    g = torch.Generator().manual_seed(123)
    got = ksampling.sample(model, x.clone(), sigmas, name, generator=g, **options)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_parity_with_k_diffusion_euler_ancestral(eta):
    K = k_diffusion()
    model = SmoothToy()
    sigmas = karras_grid(6, 0.05, 10.0)
    x = _noise((2, 5), 2, 10.0)
    expected = K.sampling.sample_euler_ancestral(
        model, x.clone(), sigmas, disable=True, eta=eta, s_noise=0.9, noise_sampler=TableNoise(x.shape, 7)
    )
    got = ksampling.sample(
        model, x.clone(), sigmas, "euler_ancestral", eta=eta, s_noise=0.9, noise_sampler=TableNoise(x.shape, 7)
    )
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_callback_dicts_match_k_diffusion():
    K = k_diffusion()
    model = SmoothToy()
    sigmas = karras_grid(4, 0.1, 10.0)
    x = _noise((2, 3), 3, 10.0)
    ours, theirs = [], []
    K.sampling.sample_heun(model, x.clone(), sigmas, disable=True, callback=theirs.append)
    ksampling.sample(model, x.clone(), sigmas, "heun", callback=ours.append)
    assert len(ours) == len(theirs) == len(sigmas) - 1
    for a, b in zip(ours, theirs):
        assert a.keys() == b.keys() == {"x", "i", "sigma", "sigma_hat", "denoised"}
        assert a["i"] == b["i"]
        for key in ("x", "sigma", "sigma_hat", "denoised"):
            torch.testing.assert_close(torch.as_tensor(a[key]), torch.as_tensor(b[key]), rtol=1e-12, atol=0)


# -- exact problems -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["euler", "ddim"])
def test_dirac_is_exact_at_every_step(name):
    point = torch.tensor([0.3, -1.2, 2.0], dtype=F64)

    def dirac(x, sigma):
        return point.expand_as(x)

    generator = torch.Generator().manual_seed(0)
    for trial in range(5):
        n = int(torch.randint(1, 9, (), generator=generator))
        grid = torch.sort(torch.rand(n + 1, generator=generator, dtype=F64) * 50 + 1e-3, descending=True).values
        grid = torch.unique_consecutive(grid)
        x_start = _noise((4, 3), trial, float(grid[0]))
        seen = []
        got = ksampling.sample(dirac, x_start.clone(), grid, name, callback=seen.append)
        # the PF-ODE solution for one data point: x(σ) = p + (x_T − p) σ / σ_T
        exact = point + (x_start - point) * (grid[-1] / grid[0])
        torch.testing.assert_close(got, exact, rtol=1e-13, atol=1e-13)
        for item in seen:
            torch.testing.assert_close(item["x"], point + (x_start - point) * (item["sigma"] / grid[0]), rtol=1e-13, atol=1e-13)
    # and one step to sigma = 0 returns the point
    one_step = torch.tensor([7.0, 0.0], dtype=F64)
    torch.testing.assert_close(ksampling.sample(dirac, _noise((2, 3), 9, 7.0), one_step, name), point.expand(2, 3))


@pytest.mark.parametrize("name, order", [("euler", 1.0), ("heun", 2.0)])
def test_convergence_order_on_gaussian_data(name, order):
    data = GaussianData([0.5, -1.0, 0.0], [0.3, 2.0, 1.0])
    sigma_max, sigma_min = 80.0, 1e-2
    x_start = _noise((32, 3), 0, sigma_max)
    exact = data.ode_solution(x_start, sigma_max, sigma_min)
    ns = [16, 32, 64, 128, 256]
    errors = []
    for n in ns:
        got = ksampling.sample(data, x_start.clone(), karras_grid(n, sigma_min, sigma_max, append_zero=False), name)
        errors.append((got - exact).pow(2).mean().sqrt().item())
    assert all(a > b for a, b in zip(errors, errors[1:]))
    assert abs(fitted_order(ns, errors) - order) <= 0.15


@pytest.mark.parametrize("name", ["euler", "heun", "ddim", "edm", "euler_ancestral", "ddpm"])
def test_every_core_sampler_reaches_the_gaussian_answer(name):
    """ODE samplers converge pathwise to the closed-form solution; stochastic ones in
    distribution: the output of a linear denoiser on Gaussian data is Gaussian with the data's
    mean and variance."""
    data = GaussianData([1.0, -2.0], [0.25, 4.0])
    sigma_max = 80.0
    if ksampling.samplers.info(name)["kind"] == "ode" and name != "edm":
        x_start = _noise((16, 2), 1, sigma_max)
        exact = data.ode_solution(x_start, sigma_max, 0.0)
        errors = [
            (ksampling.sample(data, x_start.clone(), karras_grid(n, 0.002, sigma_max), name) - exact).abs().max()
            for n in (32, 128)
        ]
        assert errors[1] < errors[0] / 3 and errors[1] < 0.2
        return
    x_start = _noise((20000, 2), 2, sigma_max)
    got = ksampling.sample(data, x_start, karras_grid(256, 0.002, sigma_max), name, generator=torch.Generator().manual_seed(5))
    # 20000 samples: standard errors of the mean ~ 0.007 · std, of the variance ~ 1 %; the
    # first-order ancestral samplers' variance bias at 256 steps is ~ 4 %.
    torch.testing.assert_close(got.mean(0), data.mean, atol=0.05, rtol=0)
    torch.testing.assert_close(got.var(0), data.var, rtol=0.06, atol=0)


def test_ddpm_learned_variance_endpoints_are_small_and_large():
    """improved DDPM's learned_range: v = −1 gives the posterior variance β̃ (\"small\"), v = +1
    gives β (\"large\")."""
    data = GaussianData([0.0, 0.0], [1.0, 1.0])

    class WithVariance:
        def __init__(self, v):
            self.v = v

        def __call__(self, x, sigma):
            return data(x, sigma)

        def denoise_with_variance(self, x, sigma):
            return data(x, sigma), LearnedVariance("learned_range", torch.full_like(x, self.v))

    grid = karras_grid(5, 0.1, 10.0)
    x = _noise((3, 2), 4, 10.0)
    for v, variance in ((-1.0, "small"), (1.0, "large")):
        learned = ksampling.sample(WithVariance(v), x.clone(), grid, "ddpm", noise_sampler=TableNoise(x.shape, 3))
        fixed = ksampling.sample(data, x.clone(), grid, "ddpm", variance=variance, noise_sampler=TableNoise(x.shape, 3))
        torch.testing.assert_close(learned, fixed, rtol=1e-12, atol=1e-12)


def test_ddim_eta_one_is_ddpm_small_variance():
    data = GaussianData([0.0, 1.0], [1.0, 0.5])
    grid = karras_grid(6, 0.1, 10.0)
    x = _noise((3, 2), 5, 10.0)
    a = ksampling.sample(data, x.clone(), grid, "ddim", eta=1.0, noise_sampler=TableNoise(x.shape, 1))
    b = ksampling.sample(data, x.clone(), grid, "ddpm", variance="small", noise_sampler=TableNoise(x.shape, 1))
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


# -- loop features --------------------------------------------------------------------------------
def test_nfe_and_info():
    grid = karras_grid(10, 0.01, 10.0)
    calls = []

    def model(x, sigma):
        calls.append(sigma)
        return x * 0.5

    x, info = ksampling.sample(model, torch.ones(2, 3, dtype=F64), grid, "heun", return_info=True)
    assert info.nfe == len(calls) == 2 * 10 - 1  # the step to 0 is an Euler step
    assert info.steps == 10 and info.solver == "heun"
    assert all(s.shape == (2,) for s in calls)


def test_final_step_policies():
    model = SmoothToy()
    grid = karras_grid(5, 0.05, 10.0)
    x = _noise((2, 3), 6, 10.0)
    at_sigma_min = ksampling.sample(model, x.clone(), grid[:-1], "heun")
    stop, info = ksampling.sample(model, x.clone(), grid, "heun", final_step="stop", return_info=True)
    torch.testing.assert_close(stop, at_sigma_min, rtol=0, atol=0)
    denoised = ksampling.sample(model, x.clone(), grid, "heun", final_step="denoise")
    torch.testing.assert_close(denoised, model(at_sigma_min, grid[-2].expand(2)), rtol=0, atol=0)
    assert info.nfe == 2 * 4


def test_dtype_is_kept_and_sigmas_may_be_a_list():
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(0)) * 10
    out = ksampling.sample(lambda x, s: (x * 0.5).double(), x, [10.0, 1.0, 0.0], "heun")
    assert out.dtype == torch.float32


def test_extra_args_reach_the_model():
    seen = {}

    def model(x, sigma, cond=None):
        seen["cond"] = cond
        return x * 0

    ksampling.sample(model, torch.ones(1, 2), torch.tensor([1.0, 0.0]), extra_args={"cond": "c"})
    assert seen["cond"] == "c"


# -- bad input ------------------------------------------------------------------------------------
GOOD_X = torch.ones(2, 3, dtype=F64)
GOOD_SIGMAS = torch.tensor([10.0, 1.0, 0.0], dtype=F64)


def _ident(x, sigma):
    return x * 0


@pytest.mark.parametrize(
    "sigmas, error, words",
    [
        (torch.ones(2, 2, dtype=F64), ValueError, "1-D"),
        (torch.tensor([1.0, 10.0, 0.0]), ValueError, "descending"),
        (torch.tensor([10.0, 10.0, 0.0]), ValueError, "descending"),
        (torch.tensor([10.0, 1.0, -0.5]), ValueError, "negative"),
        (torch.tensor([math.inf, 1.0, 0.0]), ValueError, "finite"),
        (torch.tensor([10.0, math.nan, 0.0]), ValueError, "finite"),
        (torch.tensor([10.0]), ValueError, "at least 2"),
        (torch.tensor([10, 0]), TypeError, "floating"),
        ("10, 0", TypeError, "sigmas"),
        (torch.tensor([10.0, 0.0], device="meta"), ValueError, "device"),
    ],
)
def test_bad_sigmas(sigmas, error, words):
    with pytest.raises(error, match=words) as info:
        ksampling.sample(_ident, GOOD_X, sigmas)
    assert "sigmas" in str(info.value)


def test_bad_x():
    with pytest.raises(TypeError, match="x must be a floating-point"):
        ksampling.sample(_ident, torch.ones(2, 3, dtype=torch.int64), GOOD_SIGMAS)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        ksampling.sample(_ident, [[1.0]], GOOD_SIGMAS)
    with pytest.raises(ValueError, match="x contains NaN"):
        ksampling.sample(_ident, torch.full((1, 2), math.nan), GOOD_SIGMAS)


def test_model_output_of_the_wrong_shape_names_step_and_sigma():
    with pytest.raises(ValueError, match=r"shape \(2,\) at step 0 \(sigma=10\)"):
        ksampling.sample(lambda x, s: x[:, 0], GOOD_X, GOOD_SIGMAS)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_model_output_names_step_and_sigma(bad):
    def model(x, sigma):
        out = x * 0
        out[0, 1] = torch.where(sigma[0] < 5, bad, 0.0)
        return out

    with pytest.raises(ValueError, match=r"non-finite.*step 1 \(sigma=1\)"):
        ksampling.sample(model, GOOD_X, GOOD_SIGMAS)


def test_unknown_solver_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown solver 'eulr'.*euler_ancestral"):
        ksampling.sample(_ident, GOOD_X, GOOD_SIGMAS, "eulr")


@pytest.mark.parametrize(
    "solver, options, error, words",
    [
        ("euler_ancestral", {"eta": -1.0}, ValueError, "eta"),
        ("euler", {"s_churn": math.nan}, ValueError, "s_churn"),
        ("euler", {"s_noise": "1"}, TypeError, "s_noise"),
        ("ddim", {"eta": 1.5}, ValueError, "eta"),
        ("ddpm", {"variance": "huge"}, ValueError, "variance"),
        ("euler", {"etaa": 0.0}, TypeError, "etaa"),
    ],
)
def test_bad_options(solver, options, error, words):
    with pytest.raises(error, match=words):
        ksampling.sample(_ident, GOOD_X, GOOD_SIGMAS, solver, **options)


def test_solver_may_be_a_class_or_a_configured_instance():
    from ksampling.samplers.ancestral import EulerAncestral

    noise = lambda: TableNoise(GOOD_X.shape, 2)  # noqa: E731
    by_name = ksampling.sample(SmoothToy(), GOOD_X * 10, GOOD_SIGMAS, "euler_ancestral", eta=0.5, noise_sampler=noise())
    by_class = ksampling.sample(SmoothToy(), GOOD_X * 10, GOOD_SIGMAS, EulerAncestral, eta=0.5, noise_sampler=noise())
    by_instance = ksampling.sample(SmoothToy(), GOOD_X * 10, GOOD_SIGMAS, EulerAncestral(eta=0.5), noise_sampler=noise())
    assert torch.equal(by_name, by_class) and torch.equal(by_name, by_instance)
    with pytest.raises(TypeError, match="options cannot be given with a Solver instance"):
        ksampling.sample(SmoothToy(), GOOD_X, GOOD_SIGMAS, EulerAncestral(), eta=0.5)


def test_bad_loop_arguments():
    with pytest.raises(ValueError, match="final_step"):
        ksampling.sample(_ident, GOOD_X, GOOD_SIGMAS, final_step="last")
    with pytest.raises(ValueError, match="generator: got 3 generators for a batch of 2"):
        ksampling.sample(_ident, GOOD_X, GOOD_SIGMAS, "euler_ancestral", generator=[torch.Generator()] * 3)
    with pytest.raises(TypeError, match="generator"):
        ksampling.sample(_ident, GOOD_X, GOOD_SIGMAS, "euler_ancestral", generator=42)
    with pytest.raises(ValueError, match="either generator or noise_sampler"):
        ksampling.sample(_ident, GOOD_X, GOOD_SIGMAS, generator=torch.Generator(), noise_sampler=lambda a, b: a)
    with pytest.raises(TypeError, match="model must be callable"):
        ksampling.sample("model", GOOD_X, GOOD_SIGMAS)
    with pytest.raises(TypeError, match="extra_args"):
        ksampling.sample(_ident, GOOD_X, GOOD_SIGMAS, extra_args=[1])


def test_host_sync_counter_sees_the_conversions_k_diffusion_makes():
    """The counter used by the all-solver test is not blind: k-diffusion's heun syncs per step."""
    K = k_diffusion()
    counts = []
    for n in (4, 8):
        with HostSyncCounter() as counter:
            K.sampling.sample_heun(SmoothToy(), torch.ones(1, 2, dtype=F64) * 10, karras_grid(n, 0.1, 10.0), disable=True)
        counts.append(counter.count)
    assert counts[1] > counts[0] > 0
