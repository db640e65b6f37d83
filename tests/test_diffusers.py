"""diffusers interop: ksampling's solvers on a diffusers UNet match diffusers' own scheduler
loops, and a diffusers pipeline runs on ksampling's solvers through KSamplingScheduler.

Everything runs on a tiny randomly initialised UNet2DModel (8×8, no downloads), float32.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

import ksampling  # noqa: E402
from ksampling.integrations.diffusers import KSamplingScheduler, from_diffusers  # noqa: E402

RTOL = 1e-4

# diffusers' schedulers call np.array on tensors in a way numpy 2 deprecates
pytestmark = [
    pytest.mark.usefixtures("one_thread"),  # the UNet is tiny (tests/conftest.py)
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning"),
]
SD_BETAS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def tiny_unet(seed=0, conditional=False):
    torch.manual_seed(seed)
    common = dict(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16), norm_num_groups=4)
    if conditional:
        net = diffusers.UNet2DConditionModel(
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=8, attention_head_dim=2, **common,
        )
    else:
        net = diffusers.UNet2DModel(down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), **common)
    return net.eval()


@pytest.fixture(scope="module")
def unet():
    return tiny_unet()


def noise(seed=1, batch=2):
    return torch.randn(batch, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def rel_err(a, b):
    return float((a - b).norm() / b.norm())


@torch.no_grad()
def diffusers_loop(unet, scheduler, latents, **step_kwargs):
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(latents, t)
        latents = scheduler.step(unet(model_input, t).sample, t, latents, **step_kwargs).prev_sample
    return latents


def vp_alphas_sigmas(alphas_cumprod, timesteps):
    ac = alphas_cumprod.double()[timesteps.long()]
    return ((1 - ac) / ac).sqrt()


def _euler(config, n):
    s = diffusers.EulerDiscreteScheduler(**config)
    s.set_timesteps(n)
    return s, s.sigmas.double(), "ve", "linear"


def _heun(config, n):
    s = diffusers.HeunDiscreteScheduler(**config)
    s.set_timesteps(n)
    return s, torch.unique_consecutive(s.sigmas.double()), "ve", "linear"


def _dpmpp_2m(config, n):
    s = diffusers.DPMSolverMultistepScheduler(**config)
    s.set_timesteps(n)
    return s, s.sigmas.double(), "vp", "round"


def _dpmpp_2m_karras(config, n):
    # Karras sigmas with the timesteps diffusers rounds from them: the model sees an integer
    # timestep while the state is at the exact Karras sigma
    s = diffusers.DPMSolverMultistepScheduler(use_karras_sigmas=True, **config)
    s.set_timesteps(n)
    return s, s.sigmas.double(), "vp", "round"


def _unipc(config, n):
    s = diffusers.UniPCMultistepScheduler(**config)
    s.set_timesteps(n)
    return s, s.sigmas.double(), "vp", "round"


def _ddim(config, n):
    s = diffusers.DDIMScheduler(clip_sample=False, set_alpha_to_one=True, **config)
    s.set_timesteps(n)
    sigmas = torch.cat([vp_alphas_sigmas(s.alphas_cumprod, s.timesteps), torch.zeros(1, dtype=torch.float64)])
    return s, sigmas, "vp", "round"


CASES = {"euler": _euler, "heun": _heun, "dpmpp_2m": _dpmpp_2m, "dpmpp_2m karras": _dpmpp_2m_karras, "unipc": _unipc, "ddim": _ddim}


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("solver", list(CASES))
def test_solvers_match_diffusers_schedulers(unet, solver, prediction_type):
    case, solver = solver, solver.split()[0]
    if solver not in ksampling.available():
        pytest.skip(f"solver {solver!r} is not registered yet")
    config = dict(SD_BETAS, prediction_type=prediction_type)
    scheduler, sigmas, state, timestep = CASES[case](config, 7)
    start = noise() * scheduler.init_noise_sigma
    theirs = diffusers_loop(unet, scheduler, start)
    # VP schedulers (DDIM, DPM-Solver, UniPC) keep x_vp = x/√(1+σ²); the VE state is x itself
    x = start * (1 + sigmas[0] ** 2) ** 0.5 if state == "vp" else start
    denoiser = from_diffusers(unet, scheduler.config, timestep=timestep)
    ours, info = ksampling.sample(denoiser, x, sigmas.float(), solver, return_info=True)
    assert sigmas[-1] == 0  # both end at σ = 0, where VP and VE coincide
    assert rel_err(ours, theirs) < RTOL, rel_err(ours, theirs)
    assert info.nfe == len(scheduler.timesteps)
    if case == "dpmpp_2m karras":
        # the rounded timesteps are a real convention: interpolating them instead is off by ~1e-3
        off = ksampling.sample(from_diffusers(unet, scheduler.config, timestep="interpolate"), x, sigmas.float(), solver)
        assert rel_err(off, theirs) > 10 * RTOL
    # and the test has teeth: the network's output matters to the last digits compared
    other = ksampling.sample(from_diffusers(tiny_unet(seed=5), scheduler.config, timestep=timestep), x, sigmas.float(), solver)
    assert rel_err(other, theirs) > 100 * RTOL


def test_timestep_mapping_options_are_what_the_schedulers_feed(unet):
    """EulerDiscrete places its fractional timesteps linearly in σ ("linear"); with Karras
    sigmas it interpolates in log σ ("interpolate"); DPMSolverMultistep feeds integers
    ("round"). Each mode reproduces the scheduler's own timesteps from its sigmas."""
    euler = diffusers.EulerDiscreteScheduler(**SD_BETAS)
    euler.set_timesteps(9)
    karras = diffusers.EulerDiscreteScheduler(use_karras_sigmas=True, **SD_BETAS)
    karras.set_timesteps(9)
    dpm = diffusers.DPMSolverMultistepScheduler(**SD_BETAS)
    dpm.set_timesteps(9)
    from ksampling.integrations.diffusers import process_from_config

    for scheduler, mode in ((euler, "linear"), (karras, "interpolate"), (dpm, "round")):
        process = process_from_config(scheduler.config, timestep=mode)
        t = process.sigma_to_t(scheduler.sigmas[:-1].double()).double()
        torch.testing.assert_close(t, scheduler.timesteps.double(), rtol=0, atol=2e-3)
    # "linear" inverts diffusers' np.interp(t, arange(T), sigmas) exactly; the log-σ map differs
    # between training steps (by a few 1e-4 timesteps for this schedule, above float64 noise)
    import numpy as np

    linear = process_from_config(euler.config, timestep="linear")
    log = process_from_config(euler.config, timestep="interpolate")
    t_frac = torch.tensor([998.3, 874.125, 500.5, 3.75], dtype=torch.float64)
    sigma = torch.from_numpy(np.interp(t_frac.numpy(), np.arange(1000), linear.sigmas.numpy()))
    torch.testing.assert_close(linear.sigma_to_t(sigma), t_frac, rtol=0, atol=1e-9)
    assert (log.sigma_to_t(sigma) - t_frac).abs().max() > 1e-5


def test_from_diffusers_conditioning_and_guidance():
    """UNet2DConditionModel: encoder_hidden_states goes through extra_args; D is x − σ ε with
    ε the UNet's output on (x·α, t)."""
    unet = tiny_unet(conditional=True)
    denoiser = from_diffusers(unet, diffusers.DDIMScheduler(**SD_BETAS))
    x = noise() * 3
    sigma = torch.tensor([2.5, 0.7])
    cond = torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got = denoiser(x, sigma, encoder_hidden_states=cond)
        alpha = (1 + sigma**2).rsqrt().reshape(-1, 1, 1, 1)
        ac = diffusers.DDIMScheduler(**SD_BETAS).alphas_cumprod.double()
        t = torch.tensor([int(((1 - ac) / ac).sqrt().sub(s).abs().argmin()) for s in sigma.double()])
        process = denoiser.process
        t_ours = process.sigma_to_t(sigma)
        eps = unet(x * alpha, t_ours, encoder_hidden_states=cond).sample
        expected = x - sigma.reshape(-1, 1, 1, 1) * eps
        other = denoiser(x, sigma, encoder_hidden_states=cond * 0)
    torch.testing.assert_close(got, expected)
    assert (t_ours - t.float()).abs().max() < 1  # fractional timesteps between the right training steps
    assert rel_err(got, other) > 1e-4  # the conditioning reached the network
    out = ksampling.sample(denoiser, x, ksampling.schedules.karras(4, 0.1, 10.0), "dpmpp_2m",
                           extra_args={"encoder_hidden_states": cond})
    assert out.shape == x.shape and torch.isfinite(out).all()
    # classifier-free guidance: D_u + w (D_c − D_u), the model called once on the doubled batch
    guided = from_diffusers(unet, diffusers.DDIMScheduler(**SD_BETAS), guidance_scale=4.0)
    uncond = torch.zeros_like(cond)
    calls = []
    hook = unet.register_forward_pre_hook(lambda module, args, kwargs: calls.append(args[0].shape[0]), with_kwargs=True)
    try:
        with torch.no_grad():
            got = guided(x, sigma, encoder_hidden_states=cond, negative_encoder_hidden_states=uncond)
    finally:
        hook.remove()
    with torch.no_grad():
        d_cond, d_uncond = denoiser(x, sigma, encoder_hidden_states=cond), denoiser(x, sigma, encoder_hidden_states=uncond)
    torch.testing.assert_close(got, d_uncond + 4.0 * (d_cond - d_uncond), rtol=1e-4, atol=1e-5)
    assert calls == [4]


def test_from_diffusers_bad_input(unet):
    with pytest.raises(ValueError, match="prediction_type"):
        from_diffusers(unet, dict(SD_BETAS, prediction_type="score"))
    with pytest.raises(ValueError, match="timestep"):
        from_diffusers(unet, dict(SD_BETAS), timestep="nearest")
    with pytest.raises(TypeError, match="scheduler_or_config"):
        from_diffusers(unet, 42)
    with pytest.raises(ValueError, match="flow"):
        from_diffusers(unet, dict(SD_BETAS), prediction_type="flow")


def test_flow_match_config_gives_a_rectified_flow_denoiser():
    """FlowMatch schedulers: x_t = (1 − t) x0 + t n, the network predicts n − x0 at t·1000."""
    config = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0).config
    seen = {}

    def velocity_net(sample, timestep):
        seen["t"] = timestep
        return sample * 0 + 0.5  # a constant velocity

    denoiser = from_diffusers(velocity_net, config)
    x, sigma = noise(), torch.tensor([1.0, 3.0])
    out = denoiser(x, sigma)
    t = sigma / (1 + sigma)
    torch.testing.assert_close(seen["t"], t * 1000)
    expected = x / (1 + sigma.reshape(-1, 1, 1, 1)) - t.reshape(-1, 1, 1, 1) * 0.5
    torch.testing.assert_close(out, expected)


# -- the other direction ------------------------------------------------------------------------
PIPELINE_SOLVERS = ["euler", "heun", "dpmpp_2m", "unipc", "dpm_2", "dpmpp_3m_sde", "dpmpp_sde", "edm"]


@pytest.mark.parametrize("solver", PIPELINE_SOLVERS)
def test_ddpm_pipeline_on_a_ksampling_solver_matches_ksampling_sample(unet, solver):
    if solver not in ksampling.available():
        pytest.skip(f"solver {solver!r} is not registered yet")
    scheduler = KSamplingScheduler.from_config(diffusers.DDPMScheduler(**SD_BETAS).config, solver=solver)
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    image = pipe(batch_size=2, generator=torch.Generator().manual_seed(1), num_inference_steps=5, output_type="np",
                 return_dict=False)[0]
    # the same run through ksampling.sample: the pipeline draws the VP latents from the
    # generator first, then the solver's noise comes from the same generator
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(2, 3, 8, 8, generator=generator)
    sigmas = scheduler.run_sigmas
    denoiser = from_diffusers(unet, scheduler.config, timestep=scheduler.timestep_mode)
    x = ksampling.sample(denoiser, latents * (1 + sigmas[0] ** 2) ** 0.5, sigmas, solver, generator=generator)
    expected = (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert abs(image - expected).max() < 1e-4
    info = ksampling.samplers.info(solver)
    assert scheduler.order == info["nfe_per_step"]
    # a timestep per model call, as diffusers' Heun duplicates its timesteps
    assert len(scheduler.timesteps) >= 5


def test_multi_call_solvers_repeat_timesteps_like_heun_discrete(unet):
    ours = KSamplingScheduler(solver="heun", **SD_BETAS)
    ours.set_timesteps(6)
    heun = diffusers.HeunDiscreteScheduler(**SD_BETAS)
    heun.set_timesteps(6)
    torch.testing.assert_close(ours.timesteps.float(), heun.timesteps.float(), rtol=0, atol=1e-3)
    assert ours.order == heun.order == 2
    # and in the VE state (EulerDiscrete/Heun's convention) its loop is Heun's loop
    ours_ve = KSamplingScheduler(solver="heun", state="ve", **SD_BETAS)
    ours_ve.set_timesteps(6)
    assert ours_ve.init_noise_sigma == pytest.approx(float(heun.sigmas[0]))
    start = noise()
    a = diffusers_loop(unet, ours_ve, start * ours_ve.init_noise_sigma)
    b = diffusers_loop(unet, heun, start * heun.init_noise_sigma)
    assert rel_err(a, b) < RTOL


def test_sd_style_loop_with_guidance_and_return_tuple():
    """The Stable Diffusion pipeline's loop: init_noise_sigma, scale_model_input on the doubled
    (classifier-free guidance) batch, step(..., return_dict=False)[0], generator in step()."""
    unet = tiny_unet(conditional=True)
    cond = torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(3))
    uncond = torch.zeros_like(cond)
    scale = 4.0
    for state in ("vp", "ve"):
        scheduler = KSamplingScheduler(solver="dpmpp_2m_sde" if "dpmpp_2m_sde" in ksampling.available() else "euler_ancestral",
                                       state=state, use_karras_sigmas=True, **SD_BETAS)
        scheduler.set_timesteps(5)
        generator = torch.Generator().manual_seed(4)
        latents = torch.randn(2, 3, 8, 8, generator=generator) * scheduler.init_noise_sigma
        x_start = latents if state == "ve" else latents * (1 + scheduler.run_sigmas[0] ** 2) ** 0.5
        with torch.no_grad():
            for t in scheduler.timesteps:
                model_input = scheduler.scale_model_input(torch.cat([latents] * 2), t)
                eps_uncond, eps_cond = unet(model_input, t, encoder_hidden_states=torch.cat([uncond, cond])).sample.chunk(2)
                eps = eps_uncond + scale * (eps_cond - eps_uncond)
                latents = scheduler.step(eps, t, latents, generator=generator, return_dict=False)[0]

        def guided(x, sigma):
            d_uncond = base(x, sigma, encoder_hidden_states=uncond)
            d_cond = base(x, sigma, encoder_hidden_states=cond)
            return d_uncond + scale * (d_cond - d_uncond)

        base = from_diffusers(unet, scheduler.config, timestep=scheduler.timestep_mode)
        generator = torch.Generator().manual_seed(4)
        torch.randn(2, 3, 8, 8, generator=generator)
        expected = ksampling.sample(guided, x_start, scheduler.run_sigmas, scheduler.solver, generator=generator)
        assert rel_err(latents, expected) < 1e-4, state


def test_restarting_and_errors():
    scheduler = KSamplingScheduler(solver="euler", **SD_BETAS)
    with pytest.raises(RuntimeError, match="set_timesteps"):
        scheduler.step(torch.zeros(1, 3, 8, 8), 0, torch.zeros(1, 3, 8, 8))
    scheduler.set_timesteps(4)
    out = torch.zeros(1, 3, 8, 8)
    sample = noise(batch=1)
    scheduler.step(out, scheduler.timesteps[0], sample)
    assert scheduler._run is not None and scheduler.step_index == 1
    scheduler.set_timesteps(4)  # abandons the run
    assert scheduler._run is None and scheduler.step_index is None
    for t in scheduler.timesteps:
        sample = scheduler.step(out, t, sample).prev_sample
    with pytest.raises(RuntimeError, match="model calls"):
        scheduler.step(out, 0, sample)
    # a non-finite model output is reported when the run ends
    scheduler.set_timesteps(3)
    sample = noise(batch=1)
    with pytest.raises(ValueError, match="non-finite"):
        for t in scheduler.timesteps:
            sample = scheduler.step(out * float("nan"), t, sample).prev_sample
    with pytest.raises(ValueError, match="unknown solver"):
        KSamplingScheduler(solver="rk45")
    if "dpm_adaptive" in ksampling.available():
        with pytest.raises(ValueError, match="fixed-grid"):
            KSamplingScheduler(solver="dpm_adaptive")
    with pytest.raises(TypeError, match="unknown option"):
        KSamplingScheduler(solver="euler", solver_options={"eta": 1.0})
    with pytest.raises(ValueError, match="state"):
        KSamplingScheduler(state="latent")
    with pytest.raises(ValueError, match="num_inference_steps"):
        scheduler.set_timesteps(0)


def test_config_round_trip_and_img2img_start(tmp_path, unet):
    scheduler = KSamplingScheduler(solver="heun", solver_options={"s_churn": 0.0}, state="vp", **SD_BETAS)
    scheduler.save_config(tmp_path)
    again = KSamplingScheduler.from_pretrained(tmp_path)
    assert again.config.solver == "heun" and again.config.beta_schedule == "scaled_linear"
    # image-to-image: add_noise at the start timestep, set_begin_index, then the rest of the loop
    scheduler.set_timesteps(6)
    begin = scheduler.first_call_of_step[2]
    scheduler.set_begin_index(begin)
    clean = noise(seed=9) * 0.5
    start_t = scheduler.timesteps[begin : begin + 1].repeat(2)
    latents = scheduler.add_noise(clean, noise(seed=10), start_t)
    sigma = scheduler.sigmas[begin].double()
    torch.testing.assert_close(latents, (clean + noise(seed=10) * sigma.float()) / (1 + sigma.float() ** 2) ** 0.5)
    with torch.no_grad():
        for t in scheduler.timesteps[begin:]:
            latents = scheduler.step(unet(latents, t).sample, t, latents).prev_sample
    x = (clean + noise(seed=10) * sigma.float())
    expected = ksampling.sample(from_diffusers(unet, scheduler.config, timestep=scheduler.timestep_mode), x,
                                scheduler.run_sigmas[2:], "heun")
    assert rel_err(latents, expected) < 1e-4
    with pytest.raises(ValueError, match="first model call"):
        scheduler.set_begin_index(begin + 1)


def test_importing_ksampling_does_not_import_diffusers():
    code = "import sys, ksampling, ksampling.denoisers, ksampling.kdiffusion; print('diffusers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_scheduler_copies_and_pickles_idle(unet):
    import copy
    import pickle

    scheduler = KSamplingScheduler(solver="dpmpp_2m", **SD_BETAS)
    scheduler.set_timesteps(3)
    sample = noise(batch=1)
    with torch.no_grad():
        sample = scheduler.step(unet(sample, scheduler.timesteps[0]).sample, scheduler.timesteps[0], sample).prev_sample
    for clone in (copy.deepcopy(scheduler), pickle.loads(pickle.dumps(scheduler))):
        assert clone._run is None and clone.config.solver == "dpmpp_2m"
        clone.set_timesteps(3)
        assert torch.equal(clone.timesteps, scheduler.timesteps)
    # learned-variance outputs (twice the channels) are cut to the prediction half
    scheduler.set_timesteps(2)
    x = noise(batch=1)
    eps = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    a = scheduler.step(torch.cat([eps, eps * 0 + 5], dim=1), scheduler.timesteps[0], x).pred_original_sample
    scheduler.set_timesteps(2)
    b = scheduler.step(eps, scheduler.timesteps[0], x).pred_original_sample
    torch.testing.assert_close(a, b)


def test_ddim_without_alpha_one_ends_at_the_first_training_sigma(unet):
    """DDIM with set_alpha_to_one=False ends at ᾱ_0, i.e. at σ(t=0) > 0, in the VP state. With
    "leading" spacing its last timestep is 0 itself, so its last step (σ(0) -> σ(0)) is the
    identity and spends a model call: the ksampling grid is the timesteps' sigmas, ending at
    σ(0), and x_vp = α x at the end."""
    if "ddim" not in ksampling.available():
        pytest.skip("ddim is not registered yet")
    scheduler = diffusers.DDIMScheduler(clip_sample=False, set_alpha_to_one=False, **SD_BETAS)
    scheduler.set_timesteps(6)
    start = noise()
    theirs = diffusers_loop(unet, scheduler, start)
    ac = scheduler.alphas_cumprod.double()
    assert scheduler.timesteps[-1] == 0
    sigmas = vp_alphas_sigmas(ac, scheduler.timesteps)
    x = start * (1 + sigmas[0] ** 2) ** 0.5
    ours = ksampling.sample(from_diffusers(unet, scheduler.config, timestep="round"), x, sigmas.float(), "ddim")
    ours_vp = ours / (1 + sigmas[-1] ** 2) ** 0.5
    assert rel_err(ours_vp.float(), theirs) < RTOL


def test_rounded_timesteps_reproduce_dpm_solver_multistep_with_karras_sigmas(unet):
    if "dpmpp_2m" not in ksampling.available():
        pytest.skip("dpmpp_2m is not registered yet")
    config = diffusers.DPMSolverMultistepScheduler(use_karras_sigmas=True, **SD_BETAS).config
    reference = diffusers.DPMSolverMultistepScheduler.from_config(config)
    reference.set_timesteps(6)
    ours = KSamplingScheduler.from_config(config, solver="dpmpp_2m", round_timesteps=True)
    ours.set_timesteps(6)
    assert ours.timestep_mode == "round" and ours.timesteps.dtype == torch.int64
    assert torch.equal(ours.timesteps, reference.timesteps)
    start = noise()
    assert rel_err(diffusers_loop(unet, ours, start), diffusers_loop(unet, reference, start)) < RTOL


def _cheap_eps_net(sample, timestep):
    """A smooth stand-in ε network (elementwise, so batch-invariant), cheap enough to run
    every solver."""
    t = torch.as_tensor(timestep, dtype=sample.dtype).reshape(-1, *([1] * (sample.ndim - 1)))
    return torch.tanh(sample * 0.8) * (0.5 + t / 2000) + 0.1 * sample


@pytest.mark.parametrize(
    "solver",
    [
        n for n in ksampling.available()
        if ksampling.samplers.info(n)["fixed_grid"] and not ksampling.samplers.info(n)["needs_uncond"] and n != "restart"
    ],
)
def test_every_fixed_grid_solver_runs_as_a_scheduler(solver):
    """Every fixed-grid solver, driven one model call at a time through step(), gives what
    ksampling.sample gives (VP state, as DDPMPipeline uses it; the pipeline's generator seeds
    the solver's noise)."""
    scheduler = KSamplingScheduler(solver=solver, state="vp", **SD_BETAS)
    scheduler.set_timesteps(5)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 3, 4, 4, generator=generator)
    start = latents * (1 + scheduler.run_sigmas[0] ** 2) ** 0.5
    with torch.no_grad():
        for t in scheduler.timesteps:
            latents = scheduler.step(_cheap_eps_net(latents, t), t, latents, generator=generator).prev_sample
    generator = torch.Generator().manual_seed(0)
    torch.randn(2, 3, 4, 4, generator=generator)
    denoiser = from_diffusers(_cheap_eps_net, scheduler.config, timestep=scheduler.timestep_mode)
    expected, info = ksampling.sample(denoiser, start, scheduler.run_sigmas, solver, generator=generator, return_info=True)
    # one timestep per model call, plus one for solvers that churn before their first call
    churns_first = solver == "edm"
    assert len(scheduler.timesteps) == info.nfe + churns_first
    assert rel_err(latents, expected) < 1e-5, rel_err(latents, expected)


@pytest.mark.parametrize("variance_type", ["learned_range", "fixed_small", "fixed_large"])
def test_ddpm_matches_ddpm_scheduler_including_learned_variances(unet, variance_type):
    """ksampling's ddpm solver vs DDPMScheduler's ancestral loop on the same generator: the
    improved-DDPM learned_range variance (a 6-channel UNet; from_diffusers reads
    variance_type from the config) and the fixed small / large variances."""
    if "ddpm" not in ksampling.available():
        pytest.skip("ddpm is not registered yet")
    if variance_type == "learned_range":
        torch.manual_seed(0)
        unet = diffusers.UNet2DModel(
            sample_size=8, in_channels=3, out_channels=6, layers_per_block=1, block_out_channels=(8, 16), norm_num_groups=4,
            down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        ).eval()
    scheduler = diffusers.DDPMScheduler(variance_type=variance_type, clip_sample=False, **SD_BETAS)
    scheduler.set_timesteps(8)
    generator = torch.Generator().manual_seed(5)
    start = torch.randn(2, 3, 8, 8, generator=generator)
    theirs = diffusers_loop(unet, scheduler, start, generator=generator)
    sigmas = torch.cat([vp_alphas_sigmas(scheduler.alphas_cumprod, scheduler.timesteps), torch.zeros(1, dtype=torch.float64)])
    denoiser = from_diffusers(unet, scheduler.config, timestep="round")
    assert denoiser.learned_variance == ("learned_range" if variance_type == "learned_range" else None)
    generator = torch.Generator().manual_seed(5)
    torch.randn(2, 3, 8, 8, generator=generator)
    variance = {"learned_range": "auto", "fixed_small": "small", "fixed_large": "large"}[variance_type]
    ours = ksampling.sample(denoiser, start * (1 + sigmas[0] ** 2) ** 0.5, sigmas.float(), "ddpm",
                            generator=generator, variance=variance)
    assert rel_err(ours, theirs) < RTOL


MORE_SCHEDULERS = {
    # diffusers scheduler -> (ksampling solver, timestep mode, draws noise)
    "EulerAncestralDiscreteScheduler": ("euler_ancestral", "linear", True),
    "LMSDiscreteScheduler": ("lms", "linear", False),
    "KDPM2DiscreteScheduler": ("dpm_2", "interpolate", False),
}


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("name", list(MORE_SCHEDULERS))
def test_more_k_style_schedulers_match(unet, name, prediction_type):
    """diffusers' ports of k-diffusion samplers (VE state) against ksampling's; the ancestral
    one on the same generator. KDPM2 lists its grid sigmas twice: the unique ones are the grid."""
    solver, timestep, noisy = MORE_SCHEDULERS[name]
    if solver not in ksampling.available():
        pytest.skip(f"solver {solver!r} is not registered yet")
    scheduler = getattr(diffusers, name)(prediction_type=prediction_type, **SD_BETAS)
    scheduler.set_timesteps(7)
    start = noise() * scheduler.init_noise_sigma
    step_kwargs = {"generator": torch.Generator().manual_seed(3)} if noisy else {}
    theirs = diffusers_loop(unet, scheduler, start, **step_kwargs)
    sigmas = torch.unique_consecutive(scheduler.sigmas.double())
    generator = torch.Generator().manual_seed(3) if noisy else None
    ours = ksampling.sample(from_diffusers(unet, scheduler.config, timestep=timestep), start, sigmas.float(), solver,
                            generator=generator)
    assert rel_err(ours, theirs) < RTOL


@pytest.mark.parametrize("solver", ["restart", "euler_cfg_pp"])
def test_a_solver_the_pipeline_cannot_drive_is_refused(solver):
    """restart's cycles call the model off the pipeline's timesteps; CFG++ needs the
    unconditional output, which a pipeline does not hand to step()."""
    with pytest.raises(ValueError, match="restart|unconditional"):
        KSamplingScheduler(solver=solver, state="vp", **SD_BETAS)
