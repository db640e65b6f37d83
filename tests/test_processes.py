"""Noise processes: schedules against diffusers, σ ↔ t against k-diffusion and closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import HostSyncCounter
from ksampling.denoisers import VE, RectifiedFlow, VPContinuous, VPDiscrete
from reference import k_diffusion

F64 = torch.float64


def _diffusers():
    return pytest.importorskip("diffusers")


# -- VPDiscrete schedules vs diffusers' DDPMScheduler ----------------------------------------

SCHEDULES = [
    dict(beta_schedule="linear"),
    dict(beta_schedule="linear", beta_start=2e-4, beta_end=0.03, num_train_timesteps=500),
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    dict(beta_schedule="squaredcos_cap_v2"),
]


@pytest.mark.parametrize("config", SCHEDULES, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_betas_match_diffusers_ddpm_scheduler(config):
    diffusers = _diffusers()
    theirs = diffusers.DDPMScheduler(**config)
    ours = VPDiscrete(**config)
    # diffusers keeps float32; ours is float64, so agreement is to float32 rounding
    torch.testing.assert_close(ours.betas, theirs.betas.double(), rtol=5e-7, atol=0)
    torch.testing.assert_close(ours.alphas_cumprod, theirs.alphas_cumprod.double(), rtol=3e-5, atol=1e-8)
    assert ours.sigmas.dtype == F64
    assert bool((ours.sigmas[1:] > ours.sigmas[:-1]).all())
    # σ from diffusers' betas (1 − ᾱ cancels too badly in float32 to take their ᾱ)
    alphas_cumprod = torch.cumprod(1 - theirs.betas.double(), 0)
    expected_sigmas = ((1 - alphas_cumprod) / alphas_cumprod).sqrt()
    # (1e-5: the capped β = 0.999 rounded to float32 is off by 6e-8, and 1 − β by 6e-5 relative)
    torch.testing.assert_close(ours.sigmas, expected_sigmas, rtol=1e-5, atol=0)


def test_scaled_linear_defaults_are_stable_diffusion_and_linear_defaults_are_ddpm():
    sd = VPDiscrete(beta_schedule="scaled_linear")
    assert sd.betas[0].item() == pytest.approx(0.00085, rel=1e-12)
    assert sd.betas[-1].item() == pytest.approx(0.012, rel=1e-12)
    # √β is linear: constant differences of √β
    root = sd.betas.sqrt()
    torch.testing.assert_close(root.diff(), torch.full((999,), (0.012**0.5 - 0.00085**0.5) / 999, dtype=F64))
    ddpm = VPDiscrete()
    assert (ddpm.betas[0].item(), ddpm.betas[-1].item()) == pytest.approx((1e-4, 0.02), rel=1e-12)


def test_cosine_schedule_is_nichol_dhariwal_closed_form():
    # ᾱ_k = f((k+1)/T)/f(0), f(t) = cos²((t + s)/(1 + s) π/2), wherever the β cap is inactive
    T, s = 1000, 0.008
    ours = VPDiscrete(beta_schedule="squaredcos_cap_v2", num_train_timesteps=T)
    f = [math.cos(((k / T) + s) / (1 + s) * math.pi / 2) ** 2 for k in range(T + 1)]
    expected = torch.tensor([f[k + 1] / f[0] for k in range(T)], dtype=F64)
    uncapped = ours.betas < 0.999
    assert int(uncapped.sum()) >= T - 2
    first_capped = int(uncapped.long().argmin()) if not bool(uncapped.all()) else T
    torch.testing.assert_close(ours.alphas_cumprod[:first_capped], expected[:first_capped], rtol=1e-12, atol=1e-300)


def test_zero_terminal_snr_matches_diffusers_and_is_clamped():
    diffusers = _diffusers()
    from diffusers.schedulers.scheduling_ddpm import rescale_zero_terminal_snr

    config = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    ours = VPDiscrete(**config, rescale_zero_terminal_snr=True)
    # the same algorithm run in float64 by diffusers' own function
    plain = VPDiscrete(**config)
    torch.testing.assert_close(ours.betas, rescale_zero_terminal_snr(plain.betas.clone()), rtol=1e-12, atol=1e-15)
    assert ours.betas[-1].item() == pytest.approx(1.0, abs=1e-15)
    # the scheduler agrees to its float32 rounding (ᾱ → 0 at the end cancels in float32)
    theirs = diffusers.DDPMScheduler(**config, rescale_betas_zero_snr=True)
    torch.testing.assert_close(ours.betas, theirs.betas.double(), rtol=0, atol=2e-5)
    # ᾱ_T = 0 would make σ_max infinite: clamped to 2^-24 as EulerDiscreteScheduler does
    euler = diffusers.EulerDiscreteScheduler(**config, rescale_betas_zero_snr=True)
    assert ours.alphas_cumprod[-1].item() == 2.0**-24 == euler.alphas_cumprod[-1].item()
    assert ours.sigma_max == pytest.approx(math.sqrt((1 - 2.0**-24) / 2.0**-24), rel=1e-12)
    # √ᾱ was shifted and scaled: the first value is kept
    assert ours.alphas_cumprod[0].item() == pytest.approx(plain.alphas_cumprod[0].item(), rel=1e-12)


def test_a_schedule_that_already_ends_at_zero_snr_is_clamped():
    # e.g. diffusers' rescaled betas passed as trained betas (last β = 1)
    rescaled = VPDiscrete(beta_schedule="scaled_linear", rescale_zero_terminal_snr=True)
    again = VPDiscrete(betas=rescaled.betas, rescale_zero_terminal_snr=True)
    torch.testing.assert_close(again.alphas_cumprod, rescaled.alphas_cumprod, rtol=1e-12, atol=0)
    assert again.sigma_max == rescaled.sigma_max


def test_betas_and_alphas_cumprod_inputs_agree():
    betas = torch.linspace(1e-4, 0.02, 100, dtype=F64)
    from_betas = VPDiscrete(betas=betas)
    from_cumprod = VPDiscrete(alphas_cumprod=torch.cumprod(1 - betas, 0))
    torch.testing.assert_close(from_betas.sigmas, from_cumprod.sigmas, rtol=1e-14, atol=0)
    torch.testing.assert_close(from_cumprod.betas, betas, rtol=1e-10, atol=0)
    assert from_betas.sigma_min == from_betas.sigmas[0].item() and from_betas.sigma_max == from_betas.sigmas[-1].item()


# -- σ ↔ t vs k-diffusion's DiscreteSchedule ---------------------------------------------------


def _probe_sigmas(process):
    g = torch.Generator().manual_seed(3)
    lo, hi = math.log(process.sigma_min), math.log(process.sigma_max)
    inside = torch.exp(lo + (hi - lo) * torch.rand(300, generator=g, dtype=F64))
    outside = torch.tensor([process.sigma_min * 0.5, process.sigma_max * 2.0, 1e-6, 1e6], dtype=F64)
    return torch.cat([inside, process.sigmas, outside])


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("time", ["interpolate", "round"])
def test_sigma_to_t_matches_k_diffusion(schedule, time):
    K = k_diffusion()
    process = VPDiscrete(beta_schedule=schedule, time=time)
    reference = K.external.DiscreteSchedule(process.sigmas.clone(), quantize=time == "round")
    sigma = _probe_sigmas(process)
    ours, theirs = process.sigma_to_t(sigma), reference.sigma_to_t(sigma)
    if time == "round":  # integer indices, as k-diffusion's
        assert ours.dtype == torch.int64 and torch.equal(ours, theirs)
    else:
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10)
    # the training sigmas map to their own indices
    indices = process.sigma_to_t(process.sigmas).double()
    torch.testing.assert_close(indices, torch.arange(1000, dtype=F64), rtol=0, atol=1e-9)


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear"])
def test_t_to_sigma_matches_k_diffusion(schedule):
    K = k_diffusion()
    process = VPDiscrete(beta_schedule=schedule)
    reference = K.external.DiscreteSchedule(process.sigmas.clone(), quantize=False)
    # k-diffusion casts t to float32, so probe t exactly representable there (multiples of 1/8)
    t = torch.arange(0, 999 * 8 + 1, 7, dtype=F64) / 8
    torch.testing.assert_close(process.t_to_sigma(t), reference.t_to_sigma(t), rtol=1e-13, atol=0)
    # and the two maps are inverse inside the training range
    sigma = torch.exp(torch.linspace(math.log(process.sigma_min), math.log(process.sigma_max), 501, dtype=F64))
    torch.testing.assert_close(process.t_to_sigma(process.sigma_to_t(sigma)), sigma, rtol=1e-13, atol=0)


def test_discrete_interpolated_time_is_differentiable():
    process = VPDiscrete(beta_schedule="scaled_linear")
    sigma = torch.tensor([0.05, 1.3, 7.0], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(process.sigma_to_t, (sigma,))
    t = torch.tensor([3.25, 400.5, 876.125], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(process.t_to_sigma, (t,))


def test_discrete_keeps_the_input_dtype_and_float64_tables():
    process = VPDiscrete()
    sigma = torch.tensor([0.1, 1.0, 10.0], dtype=torch.float32)
    assert process.sigma_to_t(sigma).dtype == torch.float32
    assert process.t_to_sigma(torch.tensor([5, 500])).dtype == F64  # integer indices give float64
    # the float32 result is the float64 answer rounded once, not computed in float32
    torch.testing.assert_close(process.sigma_to_t(sigma), process.sigma_to_t(sigma.double()).float(), rtol=0, atol=0)


@pytest.mark.parametrize("process", [VPDiscrete(), VPContinuous(t_scale=1000), RectifiedFlow(t_scale=1000)], ids=repr)
def test_network_time_from_half_precision_sigma_is_float32(process):
    sigma = torch.tensor([0.05, 1.0, 9.0], dtype=torch.float16)
    t = process.sigma_to_t(sigma)
    assert t.dtype == torch.float32
    torch.testing.assert_close(t, process.sigma_to_t(sigma.double()).float(), rtol=1e-6, atol=0)


# -- continuous processes: closed forms ----------------------------------------------------------


def test_vp_continuous_linear_is_the_score_sde_vp_marginal():
    # ᾱ(t) = exp(−∫₀ᵗ β(s) ds) with β(s) = β_min + s (β_max − β_min); σ² = 1/ᾱ − 1
    beta_min, beta_max = 0.1, 20.0
    process = VPContinuous("linear", beta_min, beta_max, t_scale=1000)
    t = torch.tensor([1e-3, 0.01, 0.1, 0.37, 0.5, 0.9, 1.0], dtype=F64)
    integral = beta_min * t + 0.5 * (beta_max - beta_min) * t**2
    expected_sigma = torch.sqrt(1 / torch.exp(-integral) - 1)
    torch.testing.assert_close(process.t_to_sigma(1000 * t), expected_sigma, rtol=1e-12, atol=0)
    torch.testing.assert_close(process.sigma_to_t(expected_sigma), 1000 * t, rtol=1e-12, atol=0)
    assert process.sigma_min == pytest.approx(expected_sigma[0].item(), rel=1e-12)
    assert process.sigma_max == pytest.approx(expected_sigma[-1].item(), rel=1e-12)
    torch.testing.assert_close(process.input_scale(expected_sigma), torch.exp(-integral / 2), rtol=1e-12, atol=0)


def test_vp_continuous_cosine_matches_the_discrete_cosine_schedule():
    # ᾱ_k of squaredcos_cap_v2 telescopes to f((k+1)/T)/f(0): the continuous schedule at t = (k+1)/T
    T = 1000
    discrete = VPDiscrete(beta_schedule="squaredcos_cap_v2", num_train_timesteps=T)
    continuous = VPContinuous("cosine")
    k = torch.arange(0, 990, dtype=F64)
    torch.testing.assert_close(continuous.t_to_sigma((k + 1) / T), discrete.sigmas[:990], rtol=1e-10, atol=0)
    sigma = discrete.sigmas[:990]
    torch.testing.assert_close(continuous.sigma_to_t(sigma), (k + 1) / T, rtol=1e-9, atol=1e-12)
    assert continuous.t_max == 0.9946


def test_rectified_flow_input_is_the_interpolation():
    process = RectifiedFlow(t_scale=1000)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(5, 3, generator=g, dtype=F64), torch.randn(5, 3, generator=g, dtype=F64)
    t = torch.tensor([0.01, 0.2, 0.5, 0.8, 0.99], dtype=F64)
    sigma = t / (1 - t)
    x = x0 + sigma[:, None] * noise
    x_t = (1 - t[:, None]) * x0 + t[:, None] * noise
    torch.testing.assert_close(x * process.input_scale(sigma)[:, None], x_t, rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(process.sigma_to_t(sigma), 1000 * t, rtol=1e-14, atol=0)
    torch.testing.assert_close(process.t_to_sigma(1000 * t), sigma, rtol=1e-12, atol=0)
    shifted = RectifiedFlow(shift=3.0)
    assert shifted.sigma_max == pytest.approx(3 * RectifiedFlow().sigma_max)


def test_ve_times():
    sigma = torch.tensor([0.002, 0.5, 80.0], dtype=F64)
    torch.testing.assert_close(VE().sigma_to_t(sigma), sigma)
    torch.testing.assert_close(VE(time="log_sigma").sigma_to_t(sigma), sigma.log())
    quarter = VE(time="quarter_log_sigma")
    torch.testing.assert_close(quarter.sigma_to_t(sigma), sigma.log() / 4)
    torch.testing.assert_close(quarter.t_to_sigma(quarter.sigma_to_t(sigma)), sigma, rtol=1e-15, atol=0)
    assert bool((VE().input_scale(sigma) == 1).all())


PROCESSES = [
    VE(),
    VPDiscrete(),
    VPDiscrete(time="round"),
    VPContinuous(),
    VPContinuous("cosine", t_scale=999),
    RectifiedFlow(t_scale=1000),
]


@pytest.mark.parametrize("process", PROCESSES, ids=repr)
def test_no_host_syncs(process):
    sigma = torch.tensor([0.05, 0.7, 3.0], dtype=F64)
    process.sigma_to_t(sigma)  # copies the tables to the device once
    with HostSyncCounter() as counter:
        t = process.sigma_to_t(sigma)
        process.t_to_sigma(t)
        process.input_scale(sigma)
        process.alpha(sigma)
    assert counter.count == 0, counter.names


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, exc, name",
    [
        (dict(betas=[0.1, 0.2], alphas_cumprod=[0.9, 0.7]), ValueError, "betas or alphas_cumprod"),
        (dict(beta_schedule="quadratic"), ValueError, "beta_schedule"),
        (dict(time="nearest"), ValueError, "time"),
        (dict(num_train_timesteps=1), ValueError, "num_train_timesteps"),
        (dict(num_train_timesteps=10.5), TypeError, "num_train_timesteps"),
        (dict(beta_start=0.0), ValueError, "beta_start"),
        (dict(beta_end=1.5), ValueError, "beta_end"),
        (dict(betas=[0.1, -0.2]), ValueError, "betas"),
        (dict(betas=[[0.1, 0.2]]), ValueError, "betas"),
        (dict(betas=["a", "b"]), TypeError, "betas"),
        (dict(alphas_cumprod=[0.9, 0.95]), ValueError, "alphas_cumprod"),
        (dict(alphas_cumprod=[0.9, 0.0]), ValueError, "rescale_zero_terminal_snr=True"),
        (dict(betas=[0.1, 0.5, 1.0]), ValueError, "rescale_zero_terminal_snr=True"),
        (dict(alphas_cumprod=[0.9, 0.0, 0.0]), ValueError, "alphas_cumprod"),
        (dict(alphas_cumprod=[0.9, float("nan")]), ValueError, "alphas_cumprod"),
        (dict(beta_schedule="squaredcos_cap_v2", beta_start=0.1), ValueError, "beta_start"),
    ],
)
def test_vp_discrete_bad_input(kwargs, exc, name):
    with pytest.raises(exc, match=name):
        VPDiscrete(**kwargs)


@pytest.mark.parametrize(
    "factory, exc, name",
    [
        (lambda: VE(sigma_min=1.0, sigma_max=0.5), ValueError, "sigma_min"),
        (lambda: VE(sigma_min=-1.0), ValueError, "sigma_min"),
        (lambda: VE(sigma_max="80"), TypeError, "sigma_max"),
        (lambda: VE(time="t"), ValueError, "time"),
        (lambda: VPContinuous("quadratic"), ValueError, "schedule"),
        (lambda: VPContinuous(beta_min=20.0, beta_max=0.1), ValueError, "beta_max"),
        (lambda: VPContinuous(beta_min=0.0), ValueError, "beta_min"),
        (lambda: VPContinuous(t_scale=float("inf")), ValueError, "t_scale"),
        (lambda: VPContinuous(t_min=0.5, t_max=0.4), ValueError, "t_min"),
        (lambda: VPContinuous(t_max=1.5), ValueError, "t_max"),
        (lambda: RectifiedFlow(shift=0.0), ValueError, "shift"),
        (lambda: RectifiedFlow(t_scale=-1.0), ValueError, "t_scale"),
        (lambda: RectifiedFlow(t_max=1.0), ValueError, "t_max"),
    ],
)
def test_continuous_bad_input(factory, exc, name):
    with pytest.raises(exc, match=name):
        factory()
