"""Sigma schedules against k-diffusion, diffusers, scipy and their closed forms."""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from ksampling import schedules
from reference import k_diffusion

# diffusers 0.42 calls np.array on a torch tensor internally; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@contextmanager
def default_dtype(dtype):
    # k-diffusion builds its grids with torch's default dtype; float64 makes it a 1e-12 reference
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def assert_grid(sigmas: torch.Tensor, n: int):
    assert sigmas.dtype == torch.float64
    assert sigmas.ndim == 1 and sigmas.numel() == n + 1
    assert sigmas[-1].item() == 0.0
    assert bool((sigmas[1:] < sigmas[:-1]).all()), sigmas
    assert bool(torch.isfinite(sigmas).all())


# ---------------------------------------------------------------------------------------
# parity with k-diffusion's get_sigmas_*


@pytest.mark.parametrize("n", [1, 2, 10, 37])
def test_k_diffusion_parity(n):
    K = k_diffusion()
    with default_dtype(torch.float64):
        cases = [
            (schedules.karras(n, 0.0292, 14.6146), K.sampling.get_sigmas_karras(n, 0.0292, 14.6146)),
            (schedules.karras(n, 0.002, 80.0, rho=3.0), K.sampling.get_sigmas_karras(n, 0.002, 80.0, rho=3.0)),
            (schedules.exponential(n, 0.0292, 14.6146), K.sampling.get_sigmas_exponential(n, 0.0292, 14.6146)),
            (
                schedules.polyexponential(n, 0.002, 80.0, rho=2.5),
                K.sampling.get_sigmas_polyexponential(n, 0.002, 80.0, rho=2.5),
            ),
            (schedules.polyexponential(n, 0.1, 10.0), K.sampling.get_sigmas_polyexponential(n, 0.1, 10.0)),
            (schedules.vp(n), K.sampling.get_sigmas_vp(n)),
            (schedules.vp(n, beta_d=10.0, beta_min=0.5, eps_s=1e-2), K.sampling.get_sigmas_vp(n, 10.0, 0.5, 1e-2)),
        ]
    for ours, theirs in cases:
        assert_grid(ours, n)
        torch.testing.assert_close(ours, theirs.to(torch.float64), rtol=1e-12, atol=1e-12)


def test_karras_closed_form_and_endpoints():
    sigmas = schedules.karras(5, 0.002, 80.0)
    assert sigmas[0].item() == pytest.approx(80.0, rel=1e-14)
    assert sigmas[4].item() == pytest.approx(0.002, rel=1e-12)
    # σ^(1/ρ) is an arithmetic sequence
    roots = sigmas[:-1] ** (1 / 7)
    diffs = roots[1:] - roots[:-1]
    torch.testing.assert_close(diffs, diffs[:1].expand(4), rtol=1e-12, atol=0)


def test_exponential_is_uniform_in_log_sigma():
    sigmas = schedules.exponential(9, 0.01, 100.0)
    steps = sigmas[:-2].log() - sigmas[1:-1].log()
    torch.testing.assert_close(steps, torch.full_like(steps, math.log(1e4) / 8), rtol=1e-12, atol=0)


def test_vp_closed_form():
    # σ(t)² + 1 = exp(∫ β) for β(t) = 0.1 + 19.9 t
    sigmas = schedules.vp(4)
    t = np.linspace(1, 1e-3, 4)
    expected = np.sqrt(np.expm1(19.9 * t**2 / 2 + 0.1 * t))
    np.testing.assert_allclose(sigmas[:-1].numpy(), expected, rtol=1e-14)


def test_device_argument():
    assert schedules.karras(3, 0.1, 10.0, device="cpu").device.type == "cpu"
    assert schedules.karras(3, 0.1, 10.0, device=torch.device("cpu")).device.type == "cpu"


# ---------------------------------------------------------------------------------------
# discrete models against diffusers' EulerDiscreteScheduler and k-diffusion


def _euler_discrete(beta_schedule, spacing, steps_offset=0):
    diffusers = pytest.importorskip("diffusers")
    betas = {"linear": (0.0001, 0.02), "scaled_linear": (0.00085, 0.012)}[beta_schedule]
    return diffusers.EulerDiscreteScheduler(
        beta_schedule=beta_schedule,
        beta_start=betas[0],
        beta_end=betas[1],
        timestep_spacing=spacing,
        steps_offset=steps_offset,
    )


@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear"])
@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("n", [2, 7, 10, 50, 999])
def test_discrete_matches_diffusers(beta_schedule, spacing, n):
    steps_offset = 1 if spacing == "leading" else 0
    scheduler = _euler_discrete(beta_schedule, spacing, steps_offset)
    scheduler.set_timesteps(n)
    ours = schedules.discrete(
        n, alphas_cumprod=scheduler.alphas_cumprod, spacing=spacing, steps_offset=steps_offset
    )
    assert_grid(ours, n)
    # diffusers rounds its time grid and its sigmas to float32: agreement to float32 precision
    torch.testing.assert_close(ours.float(), scheduler.sigmas, rtol=1e-6, atol=0)
    # the same through train_sigmas
    train_sigmas = ((1 - scheduler.alphas_cumprod.double()) / scheduler.alphas_cumprod.double()).sqrt()
    torch.testing.assert_close(
        schedules.discrete(n, train_sigmas, spacing, steps_offset), ours, rtol=1e-15, atol=0
    )


def test_discrete_spacings_time_grid():
    # with train_sigmas = t + 1 the interpolated σ reveals the time grid itself
    train_sigmas = torch.arange(1000, dtype=torch.float64) + 1
    linspace = schedules.discrete(4, train_sigmas)[:-1] - 1
    torch.testing.assert_close(linspace, torch.tensor([999.0, 666.0, 333.0, 0.0], dtype=torch.float64))
    leading = schedules.discrete(4, train_sigmas, "leading", steps_offset=1)[:-1] - 1
    torch.testing.assert_close(leading, torch.tensor([751.0, 501.0, 251.0, 1.0], dtype=torch.float64))
    trailing = schedules.discrete(3, train_sigmas, "trailing")[:-1] - 1
    torch.testing.assert_close(trailing, torch.tensor([999.0, 666.0, 332.0], dtype=torch.float64))


# k-diffusion rounds its time grid to float32; with n − 1 a power of two the times
# 999·k/(n−1) are dyadic fractions, exact in float32, so the comparison can be to 1e-12
@pytest.mark.parametrize("n", [1, 2, 5, 9, 33])
def test_discrete_log_interpolation_matches_k_diffusion(n):
    K = k_diffusion()
    scheduler = _euler_discrete("scaled_linear", "linspace")
    ac = scheduler.alphas_cumprod.double()
    train_sigmas = ((1 - ac) / ac).sqrt()
    with default_dtype(torch.float64):
        theirs = K.external.DiscreteSchedule(train_sigmas, quantize=False).get_sigmas(n)
    ours = schedules.discrete(n, train_sigmas, interpolate="log")
    assert_grid(ours, n)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=0)


def test_discrete_nearest_uses_training_sigmas_only():
    train_sigmas = torch.linspace(0.03, 14.6, 1000, dtype=torch.float64)
    ours = schedules.discrete(7, train_sigmas, interpolate=False)
    t = np.rint(np.linspace(999, 0, 7)).astype(int)
    np.testing.assert_array_equal(ours[:-1].numpy(), train_sigmas.numpy()[t])


def test_discrete_bad_inputs():
    ac = torch.linspace(0.999, 0.01, 100, dtype=torch.float64)
    with pytest.raises(ValueError, match="exactly one"):
        schedules.discrete(5)
    with pytest.raises(ValueError, match="exactly one"):
        schedules.discrete(5, ac, alphas_cumprod=ac)
    with pytest.raises(ValueError, match="spacing"):
        schedules.discrete(5, alphas_cumprod=ac, spacing="uniform")
    with pytest.raises(ValueError, match="interpolate"):
        schedules.discrete(5, alphas_cumprod=ac, interpolate="cubic")
    with pytest.raises(ValueError, match="alphas_cumprod"):
        schedules.discrete(5, alphas_cumprod=torch.cat([ac[:-1], torch.zeros(1, dtype=torch.float64)]))
    with pytest.raises(ValueError, match="increasing"):
        schedules.discrete(5, train_sigmas=torch.tensor([3.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match="steps_offset"):
        schedules.discrete(100, alphas_cumprod=ac, spacing="leading", steps_offset=1)
    with pytest.raises(ValueError, match="steps_offset"):
        schedules.discrete(5, alphas_cumprod=ac, spacing="leading", steps_offset=-1)
    with pytest.raises(ValueError, match="n must be"):
        schedules.discrete(101, alphas_cumprod=ac, spacing="trailing")


# ---------------------------------------------------------------------------------------
# kl_optimal, ays, beta


def test_kl_optimal_uniform_in_arctan():
    sigmas = schedules.kl_optimal(6, 0.03, 14.6)
    assert_grid(sigmas, 6)
    angles = sigmas[:-1].atan()
    torch.testing.assert_close(angles, torch.linspace(math.atan(14.6), math.atan(0.03), 6, dtype=torch.float64))
    assert sigmas[0].item() == pytest.approx(14.6, rel=1e-14)
    assert sigmas[5].item() == pytest.approx(0.03, rel=1e-14)
    assert_grid(schedules.kl_optimal(1, 0.03, 14.6), 1)


@pytest.mark.parametrize("sigma_min, sigma_max", [(0.002, 80.0), (0.002, 1e10), (0.002, 1e17), (1e-8, 1e300), (0.5, 2.0)])
def test_kl_optimal_keeps_full_precision_for_any_sigma_max(sigma_min, sigma_max):
    # before: kl_optimal(5, 0.002, 1e17)[0] was 1.63e16 (tan near π/2 of a rounded angle)
    mpmath = pytest.importorskip("mpmath")
    n = 9
    sigmas = schedules.kl_optimal(n, sigma_min, sigma_max)
    assert_grid(sigmas, n)
    with mpmath.workdps(700):  # atan(1e300) needs 300 digits to differ from π/2
        exact = [
            mpmath.tan((1 - mpmath.mpf(i) / (n - 1)) * mpmath.atan(sigma_max) + mpmath.mpf(i) / (n - 1) * mpmath.atan(sigma_min))
            for i in range(n)
        ]
        errors = [abs(float(mpmath.mpf(ours) / value - 1)) for ours, value in zip(sigmas[:-1].tolist(), exact)]
    assert max(errors) < 1e-14, errors
    assert sigmas[0].item() == pytest.approx(sigma_max, rel=1e-15)


def _nvidia_loglinear_interp(levels, num):
    # NVIDIA's AYS notes: interpolate log σ (ascending) over positions linspace(0, 1)
    xs = np.linspace(0, 1, len(levels))
    ys = np.log(np.asarray(levels)[::-1])
    return np.exp(np.interp(np.linspace(0, 1, num), xs, ys))[::-1]


@pytest.mark.parametrize("model", ["sd15", "sdxl", "svd"])
@pytest.mark.parametrize("n", [1, 4, 10, 25])
def test_ays(model, n):
    sigmas = schedules.ays(n, model)
    assert_grid(sigmas, n)
    table = schedules.AYS_TABLES[model]
    expected = _nvidia_loglinear_interp(table, n + 1)[:-1]
    np.testing.assert_allclose(sigmas[:-1].numpy(), expected, rtol=1e-12)
    assert sigmas[0].item() == pytest.approx(table[0], rel=1e-14)


# NVIDIA's AYS how-to page publishes the 10-step schedules of the discrete SD models as
# time steps; the tables are the SD training sigmas (scaled_linear betas) at those steps
AYS_TIMESTEPS = {
    "sd15": [999, 850, 736, 645, 545, 455, 343, 233, 124, 24, 0],
    "sdxl": [999, 845, 730, 587, 443, 310, 193, 116, 53, 13, 0],
}


@pytest.mark.parametrize("model", ["sd15", "sdxl"])
def test_ays_tables_are_the_published_time_steps(model):
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    train_sigmas = ((1 - alphas_cumprod) / alphas_cumprod).sqrt()
    expected = train_sigmas[AYS_TIMESTEPS[model]]
    # the table is printed to 10 decimals
    np.testing.assert_allclose(schedules.AYS_TABLES[model], expected.numpy(), rtol=0, atol=5.1e-11)
    # ays(10) is the table with σ_min replaced by the final step to 0
    np.testing.assert_allclose(schedules.ays(10, model)[:-1].numpy(), expected[:-1].numpy(), rtol=1e-9)


def test_ays_svd_table_and_bad_model():
    np.testing.assert_allclose(schedules.ays(10, "svd")[:3].numpy(), [700.0, 54.5, 15.886], rtol=1e-15)
    with pytest.raises(ValueError, match="model"):
        schedules.ays(10, "sd3")


@pytest.mark.parametrize("a,b", [(0.6, 0.6), (0.5, 0.5), (2.0, 3.0), (0.1, 5.0), (5.0, 0.1), (30.0, 40.0), (1.0, 1.0)])
def test_beta_ppf_matches_scipy(a, b):
    stats = pytest.importorskip("scipy.stats")
    qs = np.concatenate([np.linspace(0, 1, 41), [1e-10, 1e-4, 0.5, 1 - 1e-4]])
    ours = np.array([schedules.beta_ppf(q, a, b) for q in qs])
    np.testing.assert_allclose(ours, stats.beta.ppf(qs, a, b), rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("n", [1, 2, 10, 40])
def test_beta_schedule_matches_diffusers_mapping(n):
    stats = pytest.importorskip("scipy.stats")
    sigmas = schedules.beta(n, 0.0292, 14.6146)
    assert_grid(sigmas, n)
    quantiles = stats.beta.ppf(1 - np.linspace(0, 1, n), 0.6, 0.6)
    np.testing.assert_allclose(sigmas[:-1].numpy(), 0.0292 + quantiles * (14.6146 - 0.0292), rtol=1e-12)
    skewed = schedules.beta(n, 0.1, 10.0, alpha=0.3, beta=2.0)
    quantiles = stats.beta.ppf(1 - np.linspace(0, 1, n), 0.3, 2.0)
    np.testing.assert_allclose(skewed[:-1].numpy(), 0.1 + quantiles * 9.9, rtol=1e-12)


def test_beta_schedule_measures_its_upper_half_from_sigma_max():
    stats = pytest.importorskip("scipy.stats")
    n, a, b = 10, 0.1, 0.1
    sigmas = schedules.beta(n, 0.002, 80.0, alpha=a, beta=b)
    assert_grid(sigmas, n)
    # 80 − σ_i near the top is (80 − 0.002)·F⁻¹_{β,α}(t_i), not 1 − (a number that rounded to 1)
    upper = 80.0 - sigmas[1:3].numpy()
    np.testing.assert_allclose(upper, 79.998 * stats.beta.ppf(np.linspace(0, 1, n)[1:3], b, a), rtol=1e-9)


def test_beta_schedule_refuses_steps_closer_than_float64_resolves():
    # before: beta(10, 0.002, 80, alpha=0.01, beta=0.01) returned 80, 80, 80, 80, ..., 0.002, 0.002
    with pytest.raises(ValueError, match=r"alpha=0.01, beta=0.01.*steps 0 and 1.*larger alpha and beta or fewer steps"):
        schedules.beta(10, 0.002, 80, alpha=0.01, beta=0.01)


def test_beta_schedule_matches_diffusers_scheduler():
    pytest.importorskip("scipy")
    scheduler = _euler_discrete("scaled_linear", "linspace")
    scheduler.register_to_config(use_beta_sigmas=True)
    scheduler.set_timesteps(12)
    sigmas_t = ((1 - scheduler.alphas_cumprod.double()) / scheduler.alphas_cumprod.double()).sqrt()
    ours = schedules.beta(12, sigmas_t[0].item(), sigmas_t[-1].item())
    torch.testing.assert_close(ours.float(), scheduler.sigmas, rtol=1e-6, atol=0)


# ---------------------------------------------------------------------------------------
# flow matching


def test_flow_shift_is_the_sd3_time_shift():
    sigmas = schedules.karras(8, 0.002, 80.0)
    for shift in (0.5, 1.0, 3.0):
        shifted = schedules.flow_shift(sigmas, shift)
        t = sigmas / (1 + sigmas)
        t_shifted = shift * t / (1 + (shift - 1) * t)
        torch.testing.assert_close(shifted, t_shifted / (1 - t_shifted), rtol=1e-9, atol=0)
        assert shifted[-1].item() == 0.0
    assert schedules.flow_shift([2.0, 1.0, 0.0], 3.0).tolist() == [6.0, 3.0, 0.0]


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("n", [1, 4, 28])
def test_flow_matches_diffusers(shift, n):
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(sigmas=np.linspace(0.999, 0.001, n))
    ours = schedules.flow(n, shift=shift)
    assert_grid(ours, n)
    # diffusers' sigmas are flow times t = σ/(1+σ), in float32
    torch.testing.assert_close(ours / (1 + ours), scheduler.sigmas.double(), rtol=2e-7, atol=0)
    assert ours[0].item() == pytest.approx(999 * shift, rel=1e-12)


def test_flow_bad_inputs():
    with pytest.raises(ValueError, match="t_max"):
        schedules.flow(10, t_max=1.0)
    with pytest.raises(ValueError, match="t_min"):
        schedules.flow(10, t_min=0.0)
    with pytest.raises(ValueError, match="shift"):
        schedules.flow(10, shift=0.0)
    with pytest.raises(ValueError, match="shift"):
        schedules.flow_shift(schedules.karras(3, 0.1, 1.0), -2.0)
    with pytest.raises(ValueError, match="sigmas"):
        schedules.flow_shift(torch.ones(2, 2), 2.0)
    with pytest.raises(ValueError, match="sigmas"):
        schedules.flow_shift(torch.tensor([1.0, -1.0]), 2.0)


# ---------------------------------------------------------------------------------------
# registry and validation


def test_registry():
    assert schedules.available() == sorted(schedules.SCHEDULES)
    assert {"karras", "exponential", "polyexponential", "kl_optimal", "beta"} <= set(schedules.available())
    for name in schedules.available():
        sigmas = schedules.get(name, 6, 0.03, 14.6)
        assert_grid(sigmas, 6)
        assert sigmas[0].item() == pytest.approx(14.6, rel=1e-12)
        assert sigmas[5].item() == pytest.approx(0.03, rel=1e-12)
    torch.testing.assert_close(schedules.get("karras", 6, 0.03, 14.6, rho=3.0), schedules.karras(6, 0.03, 14.6, 3.0))
    with pytest.raises(ValueError, match="karras"):
        schedules.get("karas", 6, 0.03, 14.6)


RANGE_SCHEDULES = ["karras", "exponential", "polyexponential", "kl_optimal", "beta"]


@pytest.mark.parametrize("name", RANGE_SCHEDULES)
def test_bad_inputs(name):
    fn = schedules.SCHEDULES[name]
    with pytest.raises(ValueError, match="n must be"):
        fn(0, 0.1, 10.0)
    with pytest.raises(TypeError, match="n must be"):
        fn(2.5, 0.1, 10.0)
    with pytest.raises(TypeError, match="n must be"):
        fn(True, 0.1, 10.0)
    with pytest.raises(ValueError, match="sigma_min"):
        fn(5, 0.0, 10.0)
    with pytest.raises(ValueError, match="sigma_min"):
        fn(5, -1.0, 10.0)
    with pytest.raises(ValueError, match="sigma_min must be < sigma_max"):
        fn(5, 10.0, 1.0)
    with pytest.raises(ValueError, match="sigma_max"):
        fn(5, 0.1, math.inf)
    with pytest.raises(ValueError, match="sigma_max"):
        fn(5, 0.1, math.nan)


def test_bad_options():
    with pytest.raises(ValueError, match="rho"):
        schedules.karras(5, 0.1, 10.0, rho=0.0)
    with pytest.raises(ValueError, match="rho"):
        schedules.polyexponential(5, 0.1, 10.0, rho=-1.0)
    with pytest.raises(ValueError, match="alpha"):
        schedules.beta(5, 0.1, 10.0, alpha=0.0)
    with pytest.raises(ValueError, match="beta"):
        schedules.beta(5, 0.1, 10.0, beta=-0.5)
    with pytest.raises(ValueError, match="eps_s"):
        schedules.vp(5, eps_s=0.0)
    with pytest.raises(ValueError, match="beta_d"):
        schedules.vp(5, beta_d=-1.0)
    with pytest.raises(ValueError, match="n must be"):
        schedules.vp(0)
    with pytest.raises(ValueError, match="q"):
        schedules.beta_ppf(1.5, 0.6, 0.6)
