"""Parity of ``ksampling.sample`` with the real k-diffusion 0.1.1 for all 13 of its samplers.

Same float64 inputs, the same analytic denoiser (a Gaussian mixture, smooth and nonlinear)
and the same noise: a deterministic noise sampler that is a smooth function of (sigma,
sigma_next), so that the ~1e-16 differences between k-diffusion's tensor arithmetic on sigma
and our host-side float64 arithmetic cannot change the noise. The answer must agree to 1e-8
relative, at eta = 0 and eta = 1 where eta exists.
"""

from __future__ import annotations

import contextlib
import math
import warnings

import pytest
import torch

import ksampling
from ksampling.denoisers.analytic import GaussianMixture
from reference import k_diffusion

F64 = torch.float64
RTOL = 1e-8


@pytest.fixture(scope="module")
def K():
    return k_diffusion()


@pytest.fixture(scope="module")
def model():
    g = torch.Generator().manual_seed(0)
    means = torch.randn(3, 2, 3, generator=g, dtype=F64) * 2
    return GaussianMixture(torch.tensor([0.5, 0.3, 0.2], dtype=F64), means, var=torch.tensor([0.25, 0.6, 0.1], dtype=F64))


def start(seed=1, sigma_max=10.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 2, 3, generator=g, dtype=F64) * sigma_max


def smooth_noise(shape, seed=2):
    """A fixed, deterministic 'noise' that varies smoothly with (sigma, sigma_next)."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(shape, generator=g, dtype=F64), torch.randn(shape, generator=g, dtype=F64)

    def sampler(sigma, sigma_next):
        s, s_next = float(sigma), float(sigma_next)
        return a * math.cos(3 * s + 1.7 * s_next) + b * math.sin(2 * s - s_next)

    return sampler


def karras(n, sigma_min=0.05, sigma_max=10.0, zero=True):
    ramp = torch.linspace(0, 1, n, dtype=F64)
    sigmas = (sigma_max ** (1 / 7) + ramp * (sigma_min ** (1 / 7) - sigma_max ** (1 / 7))) ** 7
    return torch.cat([sigmas, sigmas.new_zeros(1)]) if zero else sigmas


def rel_err(a, b):
    return float((a - b).norm() / b.norm())


# name -> list of option sets; "noise" marks samplers that take a noise_sampler
FIXED_GRID = [
    ("euler", {}),
    ("heun", {}),
    ("dpm_2", {}),
    ("lms", {}),
    ("lms", {"order": 2}),
    ("dpmpp_2m", {}),
    ("euler_ancestral", {"eta": 0.0}),
    ("euler_ancestral", {"eta": 1.0}),
    ("dpm_2_ancestral", {"eta": 0.0}),
    ("dpm_2_ancestral", {"eta": 1.0}),
    ("dpmpp_2s_ancestral", {"eta": 0.0}),
    ("dpmpp_2s_ancestral", {"eta": 1.0, "s_noise": 0.7}),
    ("dpmpp_sde", {"eta": 0.0}),
    ("dpmpp_sde", {"eta": 1.0}),
    ("dpmpp_sde", {"eta": 1.0, "r": 0.3}),
    ("dpmpp_2m_sde", {"eta": 0.0}),
    ("dpmpp_2m_sde", {"eta": 1.0}),
    ("dpmpp_2m_sde", {"eta": 0.0, "solver_type": "heun"}),
    ("dpmpp_2m_sde", {"eta": 1.0, "solver_type": "heun"}),
    ("dpmpp_3m_sde", {"eta": 0.0}),
    ("dpmpp_3m_sde", {"eta": 1.0, "s_noise": 0.5}),
]
TAKES_NOISE = {"euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde"}


def _ids(case):
    name, options = case
    return name + "".join(f"-{k}={v}" for k, v in options.items())


@pytest.mark.parametrize("case", FIXED_GRID, ids=_ids)
@pytest.mark.parametrize("grid", ["to_zero", "to_sigma_min", "three_steps"])
def test_fixed_grid_parity(K, model, case, grid):
    name, options = case
    sigmas = {"to_zero": karras(8), "to_sigma_min": karras(7, zero=False), "three_steps": karras(3)}[grid]
    x = start()
    extra = {"noise_sampler": smooth_noise(x.shape)} if name in TAKES_NOISE else {}
    ref_calls, our_calls = [], []
    reference = getattr(K.sampling, f"sample_{name}")(
        model, x.clone(), sigmas, disable=True, callback=ref_calls.append, **options, **extra
    )
    ours = ksampling.sample(model, x.clone(), sigmas, name, callback=our_calls.append, **options, **extra)
    assert rel_err(ours, reference) < RTOL
    # the same callback dicts, step by step
    assert [c["i"] for c in our_calls] == [c["i"] for c in ref_calls]
    for mine, theirs in zip(our_calls, ref_calls):
        assert float(mine["sigma"]) == pytest.approx(float(theirs["sigma"]), rel=1e-12)
        assert float(mine["sigma_hat"]) == pytest.approx(float(theirs["sigma_hat"]), rel=1e-12)
        assert rel_err(mine["denoised"], theirs["denoised"]) < RTOL
        assert rel_err(mine["x"], theirs["x"]) < RTOL


def test_lms_tolerance_is_not_limited_by_quad(K):
    """k-diffusion integrates the Lagrange basis with ``quad(epsrel=1e-4)``; the integrand is a
    polynomial of degree <= 3, which quad's 21-point Gauss-Kronrod rule integrates exactly, so
    our closed-form weights agree with it to rounding (we check 1e-11 relative per weight)."""
    from ksampling.samplers.lms import lms_coefficients

    sigmas = karras(10, 0.03, 80.0)
    values = sigmas.numpy()
    for i in range(len(sigmas) - 1):
        p = min(i + 1, 4)
        ours = lms_coefficients(sigmas.tolist(), i, 4)
        theirs = [K.sampling.linear_multistep_coeff(p, values, i, j) for j in range(p)]
        for a, b in zip(ours, theirs):
            assert a == pytest.approx(b, rel=1e-11, abs=1e-13)
    # and an independent check: the weights integrate polynomials of degree < p exactly
    nodes = sigmas.tolist()
    i = 6
    weights = lms_coefficients(nodes, i, 4)
    for degree in range(4):
        exact = (nodes[i + 1] ** (degree + 1) - nodes[i] ** (degree + 1)) / (degree + 1)
        quadrature = sum(w * nodes[i - j] ** degree for j, w in enumerate(weights))
        assert quadrature == pytest.approx(exact, rel=1e-10)


@pytest.mark.parametrize("name", ["dpmpp_2m_sde", "dpmpp_3m_sde"])
def test_one_step_grid_where_kdiffusion_crashes(K, model, name):
    """k-diffusion raises UnboundLocalError on a one-step grid to 0; we take the step to 0,
    which for these solvers is x = D(x; σ_0)."""
    sigmas = karras(1)
    x = start()
    with pytest.raises(UnboundLocalError):
        getattr(K.sampling, f"sample_{name}")(model, x.clone(), sigmas, disable=True, noise_sampler=smooth_noise(x.shape))
    ours = ksampling.sample(model, x.clone(), sigmas, name, noise_sampler=smooth_noise(x.shape))
    expected = model(x, torch.full((x.shape[0],), float(sigmas[0]), dtype=F64))
    assert torch.allclose(ours, expected, rtol=1e-14, atol=0)


@contextlib.contextmanager
def float64_default():
    """k-diffusion's DPMSolver builds its λ grid with torch.linspace and its tolerances with
    torch.tensor, which take the default dtype; float32 there would round λ at 1e-7."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(F64)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.tensor(tensor) copy-construct warnings
            yield
    finally:
        torch.set_default_dtype(previous)


@pytest.mark.parametrize("nfe", [1, 2, 3, 4, 5, 6, 7, 10])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_dpm_fast_parity(K, model, nfe, eta):
    sigmas = karras(6)
    x = start()
    noise = {"noise_sampler": smooth_noise(x.shape)} if eta else {}
    with float64_default():
        reference = K.sampling.sample_dpm_fast(model, x.clone(), sigmas[-2], sigmas[0], nfe, disable=True, eta=eta, **noise)
    ours, info = ksampling.sample(model, x.clone(), sigmas, "dpm_fast", nfe=nfe, eta=eta, return_info=True, **noise)
    assert rel_err(ours, reference) < RTOL
    assert info.nfe == nfe


def test_dpm_fast_default_nfe_is_the_number_of_grid_steps(K, model):
    sigmas = karras(9, zero=False)  # 8 steps
    x = start()
    with float64_default():
        reference = K.sampling.sample_dpm_fast(model, x.clone(), sigmas[-1], sigmas[0], 8, disable=True)
    ours, info = ksampling.sample(model, x.clone(), sigmas, "dpm_fast", return_info=True)
    assert rel_err(ours, reference) < RTOL and info.nfe == 8


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_dpm_adaptive_parity(K, model, order, eta):
    sigmas = karras(6)
    x = start()
    noise = {"noise_sampler": smooth_noise(x.shape)} if eta else {}
    options = dict(order=order, rtol=0.02, atol=0.005, h_init=0.1, pcoeff=0.1, icoeff=0.9, dcoeff=0.05, eta=eta)
    with float64_default():
        reference, ref_info = K.sampling.sample_dpm_adaptive(
            model, x.clone(), sigmas[-2], sigmas[0], disable=True, return_info=True, **options, **noise
        )
    ours, info = ksampling.sample(model, x.clone(), sigmas, "dpm_adaptive", return_info=True, **options, **noise)
    assert rel_err(ours, reference) < RTOL
    assert (info.nfe, info.steps, info.accepted, info.rejected) == (
        ref_info["nfe"],
        ref_info["steps"],
        ref_info["n_accept"],
        ref_info["n_reject"],
    )
    assert info.rejected > 0 or eta == 0  # the controller was exercised


def test_churn_parity(K, model):
    """euler, heun and dpm_2 with EDM churn: k-diffusion draws torch.randn_like(x) from the
    global RNG once per step; we replay the same stream through a noise sampler."""
    sigmas = karras(6)
    x = start()
    options = dict(s_churn=2.0, s_tmin=0.0, s_tmax=math.inf, s_noise=1.003)
    for name in ("euler", "heun", "dpm_2"):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(123)
            reference = getattr(K.sampling, f"sample_{name}")(model, x.clone(), sigmas, disable=True, **options)
        stream = torch.Generator().manual_seed(123)
        ours = ksampling.sample(
            model,
            x.clone(),
            sigmas,
            name,
            noise_sampler=lambda s, s_next: torch.randn(x.shape, generator=stream, dtype=F64),
            **options,
        )
        assert rel_err(ours, reference) < RTOL, name
