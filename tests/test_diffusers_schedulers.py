"""KSamplingScheduler behaves as the scheduler it replaces: the same timesteps and sigmas for
every config, the same pipeline output where the solver is the scheduler's own method, edited
latents reach the solver, flow matching, and errors instead of silence.

Everything runs offline on tiny random components (8×8 UNets, a 1-block VAE), float32.
"""

from __future__ import annotations

import inspect

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from ksampling.integrations.diffusers import SIGMA_INFINITY, KSamplingScheduler, from_diffusers  # noqa: E402

pytestmark = [
    pytest.mark.usefixtures("one_thread"),  # the UNet is tiny (tests/conftest.py)
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]
SD_BETAS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
STEPS = 7
RTOL = 1e-4


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16), norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    ).eval()


def rel_err(a, b):
    return float((a - b).norm() / b.norm())


@torch.no_grad()
def pipeline_loop(unet, scheduler, latents, seed=3):
    """A diffusers pipeline's loop: scale_model_input, the model, step (with the generator
    where the scheduler takes one)."""
    generator = torch.Generator().manual_seed(seed)
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters
    for t in scheduler.timesteps:
        output = unet(scheduler.scale_model_input(latents, t), t).sample
        kwargs = {"generator": generator} if takes_generator else {}
        latents = scheduler.step(output, t, latents, **kwargs).prev_sample
    return latents


# diffusers scheduler -> (its method in ksampling, config it needs to be that method)
NATIVE = {
    "DPMSolverMultistepScheduler": ("dpmpp_2m", {}),
    "UniPCMultistepScheduler": ("unipc", {}),
    "DEISMultistepScheduler": ("deis", {}),
    "DDIMScheduler": ("ddim", {"clip_sample": False}),
    "DDPMScheduler": ("ddpm", {"clip_sample": False}),
    "LMSDiscreteScheduler": ("lms", {}),
    "HeunDiscreteScheduler": ("heun", {}),
    "KDPM2DiscreteScheduler": ("dpm_2", {}),
    "KDPM2AncestralDiscreteScheduler": ("dpm_2_ancestral", {}),
    "EulerDiscreteScheduler": ("euler", {}),
    "EulerAncestralDiscreteScheduler": ("euler_ancestral", {}),
    "EDMEulerScheduler": ("euler", {}),
}
# ksampling has no exact method for these: their grid is still reproduced
GRID_ONLY = {"PNDMScheduler": {"skip_prk_steps": True}, "DPMSolverSinglestepScheduler": {}}


def variants(name):
    """Every option of the scheduler that changes its grid, one at a time (and the SD setup:
    "leading" spacing with steps_offset=1, with Karras sigmas)."""
    cls = getattr(diffusers, name)
    keys = set(cls._get_init_keys(cls))
    out = {"default": {}}
    if "timestep_spacing" in keys:
        for spacing in ("linspace", "leading", "trailing"):
            for offset in (0, 1):
                out[f"{spacing}-offset{offset}"] = dict(timestep_spacing=spacing, steps_offset=offset)
    for key in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"):
        if key in keys:
            out[key] = {key: True}
            if "timestep_spacing" in keys:
                out[key + "-leading-offset1"] = {key: True, "timestep_spacing": "leading", "steps_offset": 1}
    if "final_sigmas_type" in keys:
        out["final-sigma_min"] = dict(final_sigmas_type="sigma_min")
    if "rescale_betas_zero_snr" in keys:
        out["zero-snr-trailing"] = dict(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    if "interpolation_type" in keys:
        out["log_linear"] = dict(interpolation_type="log_linear")
    if "set_alpha_to_one" in keys:
        out["alpha-one-False-leading"] = dict(set_alpha_to_one=False, timestep_spacing="leading")
    if "sigma_schedule" in keys:
        out["exponential-schedule"] = dict(sigma_schedule="exponential")
    return out


def source_config(name, variant, prediction="epsilon"):
    extra = NATIVE[name][1] if name in NATIVE else GRID_ONLY[name]
    base = {} if name == "EDMEulerScheduler" else dict(SD_BETAS)
    return dict(base, prediction_type=prediction, **extra, **variants(name)[variant])


# KDPM2's own construction is slow (a Python loop over the training steps); KDPM2Ancestral
# shares its grid code, so it gets the SD setup and one of each kind only
_KDPM2_ANCESTRAL = ("default", "trailing-offset1", "use_karras_sigmas-leading-offset1", "use_beta_sigmas")
GRID_CASES = [
    (name, v) for name in list(NATIVE) + list(GRID_ONLY) for v in variants(name)
    if name != "KDPM2AncestralDiscreteScheduler" or v in _KDPM2_ANCESTRAL
]


@pytest.mark.parametrize("name,variant", GRID_CASES)
def test_grid_equals_the_source_schedulers(name, variant):
    """The timesteps and sigmas of KSamplingScheduler.from_config(X.config, solver=X's method)
    are X's, for every timestep_spacing, steps_offset, Karras/exponential/beta sigmas,
    final_sigmas_type, zero terminal SNR and interpolation_type X has."""
    reference = getattr(diffusers, name)(**source_config(name, variant))
    reference.set_timesteps(STEPS)
    solver = NATIVE[name][0] if name in NATIVE else "euler"
    ours = KSamplingScheduler.from_config(reference.config, solver=solver)
    ours.set_timesteps(STEPS)
    assert ours.source == name
    if name in NATIVE:
        torch.testing.assert_close(ours.timesteps.double(), reference.timesteps.double(), rtol=0, atol=2e-4)
        assert ours.order == reference.order
    else:
        # PNDM's PLMS repeats a timestep for its warm-up, DPMSolverSinglestep groups its steps:
        # the grid (unique timesteps) is theirs
        theirs = torch.unique_consecutive(reference.timesteps.double())
        torch.testing.assert_close(ours.timesteps.double(), theirs, rtol=0, atol=0)
    if name in ("HeunDiscreteScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler"):
        # they list each grid σ twice (KDPM2 keeps its midpoints apart): the unique ones are the grid
        theirs = torch.unique_consecutive(reference.sigmas.double())
        torch.testing.assert_close(torch.tensor(ours.run_sigmas, dtype=torch.float64), theirs, rtol=1e-6, atol=0)
    elif hasattr(reference, "sigmas") and name != "PNDMScheduler":
        # (EulerDiscrete's log_linear lists one σ more than its loop reaches)
        torch.testing.assert_close(ours.sigmas, reference.sigmas[: len(ours.sigmas)], rtol=1e-6, atol=0)
    else:  # σ of the alphas_cumprod at the timesteps
        ac = reference.alphas_cumprod.double()[reference.timesteps.long()]
        theirs = torch.unique_consecutive(((1 - ac) / ac).sqrt()).clamp(max=SIGMA_INFINITY)  # ᾱ = 0: σ = ∞
        torch.testing.assert_close(torch.tensor(ours.run_sigmas[:-1], dtype=torch.float64), theirs, rtol=1e-6, atol=0)
    assert ours.init_noise_sigma == pytest.approx(float(reference.init_noise_sigma), rel=1e-6)
    if name != "EDMEulerScheduler":
        assert torch.equal(ours.betas, reference.betas) and torch.equal(ours.alphas_cumprod, reference.alphas_cumprod)


# the grid test covers every option; the loops cover each spacing, the SD setup (Karras,
# "leading", offset 1), the final-σ and terminal-SNR conventions, ε and v
LOOP_VARIANTS = {
    "default": ("epsilon", "v_prediction"),
    "leading-offset1": ("epsilon",),
    "trailing-offset0": ("epsilon",),
    "use_karras_sigmas-leading-offset1": ("epsilon", "v_prediction"),
    "use_exponential_sigmas": ("epsilon",),
    "final-sigma_min": ("epsilon", "v_prediction"),
    "zero-snr-trailing": ("v_prediction",),
    "alpha-one-False-leading": ("epsilon",),
    "exponential-schedule": ("v_prediction",),
}
LOOP_CASES = [
    (name, v, p) for name in NATIVE for v in variants(name) if v in LOOP_VARIANTS for p in LOOP_VARIANTS[v]
    if not name.startswith("KDPM2") or v in ("default", "use_karras_sigmas-leading-offset1")
]


@pytest.mark.parametrize("name,variant,prediction", LOOP_CASES)
def test_pipeline_loop_equals_the_source_scheduler(unet, name, variant, prediction):
    """Where the solver is the scheduler's own method, a tiny UNet's loop gives the scheduler's
    output to 1e-4 (float32; the noisy ones on the same generator)."""
    config = source_config(name, variant, prediction)
    reference = getattr(diffusers, name)(**config)
    reference.set_timesteps(STEPS)
    ours = KSamplingScheduler.from_config(reference.config, solver=NATIVE[name][0])
    ours.set_timesteps(STEPS)
    start = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * reference.init_noise_sigma
    theirs = pipeline_loop(unet, reference, start)
    got = pipeline_loop(unet, ours, start)
    assert rel_err(got, theirs) < RTOL, rel_err(got, theirs)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("name,config,solver", [
    ("DPMSolverMultistepScheduler", dict(solver_order=3), "dpmpp_3m"),
    ("DPMSolverMultistepScheduler", dict(solver_order=3, use_karras_sigmas=True, final_sigmas_type="sigma_min"), "dpmpp_3m"),
    ("UniPCMultistepScheduler", dict(solver_order=3), "unipc"),
    ("DEISMultistepScheduler", dict(solver_order=2), "deis"),
    # the SDE variant, with noise drawn per step from the pipeline's generator as diffusers does
    ("DPMSolverMultistepScheduler", dict(algorithm_type="sde-dpmsolver++"), "dpmpp_2m_sde"),
])
def test_higher_orders_follow_the_source_config(unet, name, config, solver, prediction):
    """solver_order (and DPM-Solver's third-order coefficients and solver_type) come from the
    source config when the solver is its method."""
    reference = getattr(diffusers, name)(prediction_type=prediction, **config, **SD_BETAS)
    reference.set_timesteps(9)
    ours = KSamplingScheduler.from_config(reference, solver=solver)
    ours.set_timesteps(9)
    start = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    assert rel_err(pipeline_loop(unet, ours, start), pipeline_loop(unet, reference, start)) < RTOL


def test_the_loop_comparison_has_teeth(unet):
    """The previous defaults (an Euler grid whatever the config) differ from
    DPMSolverMultistep Karras with "leading" spacing by far more than the tolerance."""
    reference = diffusers.DPMSolverMultistepScheduler(use_karras_sigmas=True, timestep_spacing="leading", steps_offset=1, **SD_BETAS)
    reference.set_timesteps(STEPS)
    euler_grid = KSamplingScheduler(solver="dpmpp_2m", state="vp", use_karras_sigmas=True, timestep_spacing="leading",
                                    steps_offset=1, **SD_BETAS)
    euler_grid.set_timesteps(STEPS)
    start = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    assert rel_err(pipeline_loop(unet, euler_grid, start), pipeline_loop(unet, reference, start)) > 100 * RTOL


def test_ddpm_learned_variance_reaches_the_ddpm_solver():
    """DDPMScheduler(variance_type="learned_range") with a 6-channel UNet: the variance half of
    the output drives the ddpm solver's noise as in DDPMScheduler."""
    torch.manual_seed(0)
    unet6 = diffusers.UNet2DModel(
        sample_size=8, in_channels=3, out_channels=6, layers_per_block=1, block_out_channels=(8, 16), norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    ).eval()
    reference = diffusers.DDPMScheduler(variance_type="learned_range", clip_sample=False, **SD_BETAS)
    reference.set_timesteps(STEPS)
    ours = KSamplingScheduler.from_config(reference.config, solver="ddpm")
    ours.set_timesteps(STEPS)
    start = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    assert rel_err(pipeline_loop(unet6, ours, start), pipeline_loop(unet6, reference, start)) < RTOL


def test_source_found_from_the_config_keys_or_the_object():
    for name in ("DDIMScheduler", "UniPCMultistepScheduler", "EulerDiscreteScheduler", "FlowMatchEulerDiscreteScheduler"):
        scheduler = getattr(diffusers, name)()
        assert KSamplingScheduler.from_config(scheduler.config, solver="euler").source == name
        assert KSamplingScheduler.from_config(scheduler, solver="euler").source == name
    # LMS and KDPM2 share their config keys (and grid): the solver picks
    lms = diffusers.LMSDiscreteScheduler().config
    assert KSamplingScheduler.from_config(lms, solver="dpm_2").source == "KDPM2DiscreteScheduler"
    assert KSamplingScheduler.from_config(lms, solver="lms").source == "LMSDiscreteScheduler"
    with pytest.raises(ValueError, match="cannot tell"):
        KSamplingScheduler.from_config({"num_train_timesteps": 1000, "odd_key": 1}, solver="euler")
    # a saved KSamplingScheduler round-trips with its source
    ours = KSamplingScheduler.from_config(diffusers.DDIMScheduler(**SD_BETAS), solver="unipc")
    again = KSamplingScheduler.from_config(ours.config)
    assert again.source == "DDIMScheduler" and again.solver == "unipc"


# -- Stable Diffusion pipelines from tiny components ----------------------------------------------
@pytest.fixture(scope="module")
def sd_parts():
    pytest.importorskip("transformers")  # diffusers' SD pipelines import it; the tests pass prompt_embeds
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16), norm_num_groups=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8, attention_head_dim=2,
    ).eval()
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(8,), latent_channels=4, norm_num_groups=4, sample_size=8,
    ).eval()
    return unet, vae


SD_CONFIG = dict(SD_BETAS, timestep_spacing="leading", steps_offset=1)


def run_sd(parts, pipeline, scheduler, **kwargs):
    unet, vae = parts
    pipe = getattr(diffusers, pipeline)(
        vae=vae, text_encoder=None, tokenizer=None, unet=unet, scheduler=scheduler, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    embeddings = torch.randn(1, 4, 8, generator=torch.Generator().manual_seed(2))
    return pipe(
        prompt_embeds=embeddings, negative_prompt_embeds=torch.zeros_like(embeddings), num_inference_steps=8,
        guidance_scale=3.0, height=8, width=8, generator=torch.Generator().manual_seed(5), output_type="latent", **kwargs,
    ).images


IMAGE = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(7)) * 2 - 1
MASK = torch.zeros(1, 1, 8, 8)
MASK[..., :4] = 1


@pytest.mark.parametrize("case", ["txt2img", "inpaint", "inpaint-strength0.6", "img2img"])
def test_stable_diffusion_pipelines_equal_dpm_solver_multistep_karras(sd_parts, case):
    """DPM++ 2M Karras with SD's "leading" spacing and steps_offset=1: txt2img, inpainting (the
    mask blend edits the latents after every step) and img2img (add_noise start,
    set_begin_index) equal DPMSolverMultistepScheduler's."""
    pipeline, kwargs = {
        "txt2img": ("StableDiffusionPipeline", {}),
        "inpaint": ("StableDiffusionInpaintPipeline", dict(image=IMAGE, mask_image=MASK, strength=1.0)),
        "inpaint-strength0.6": ("StableDiffusionInpaintPipeline", dict(image=IMAGE, mask_image=MASK, strength=0.6)),
        "img2img": ("StableDiffusionImg2ImgPipeline", dict(image=IMAGE, strength=0.6)),
    }[case]
    reference = diffusers.DPMSolverMultistepScheduler(use_karras_sigmas=True, **SD_CONFIG)
    theirs = run_sd(sd_parts, pipeline, reference, **kwargs)
    ours = run_sd(sd_parts, pipeline, KSamplingScheduler.from_config(reference.config, solver="dpmpp_2m"), **kwargs)
    assert rel_err(ours, theirs) < RTOL, rel_err(ours, theirs)


@pytest.mark.parametrize("pipeline", ["StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline"])
@pytest.mark.parametrize("name,solver", [
    ("HeunDiscreteScheduler", "heun"), ("EulerAncestralDiscreteScheduler", "euler_ancestral"), ("UniPCMultistepScheduler", "unipc"),
    ("DDIMScheduler", "ddim"),
])
def test_img2img_and_inpainting_with_other_schedulers(sd_parts, pipeline, name, solver):
    """set_begin_index(t_start · order) with a two-call solver (Heun), an ancestral one on the
    pipeline's generator, UniPC's corrector across the mask blend, DDIM's VP latents."""
    reference = getattr(diffusers, name)(**SD_CONFIG, **({"clip_sample": False} if name == "DDIMScheduler" else {}))
    kwargs = dict(image=IMAGE, strength=0.7, **({"mask_image": MASK} if "Inpaint" in pipeline else {}))
    theirs = run_sd(sd_parts, pipeline, reference, **kwargs)
    ours = run_sd(sd_parts, pipeline, KSamplingScheduler.from_config(reference.config, solver=solver), **kwargs)
    assert rel_err(ours, theirs) < RTOL, rel_err(ours, theirs)


@pytest.mark.parametrize("name,solver", [("EulerDiscreteScheduler", "euler"), ("DPMSolverMultistepScheduler", "dpmpp_2m")])
def test_latents_edited_in_callback_reach_the_solver(sd_parts, name, solver):
    """callback_on_step_end halves the latents at step 3: the same result as diffusers' own
    scheduler with the same edit, and a different one from no edit."""

    def halve(pipe, i, t, kwargs):
        return {"latents": kwargs["latents"] * 0.5} if i == 3 else {}

    reference = getattr(diffusers, name)(**SD_CONFIG)
    theirs = run_sd(sd_parts, "StableDiffusionPipeline", reference, callback_on_step_end=halve)
    ours = run_sd(sd_parts, "StableDiffusionPipeline", KSamplingScheduler.from_config(reference.config, solver=solver),
                  callback_on_step_end=halve)
    unedited = run_sd(sd_parts, "StableDiffusionPipeline", KSamplingScheduler.from_config(reference.config, solver=solver))
    assert rel_err(ours, theirs) < RTOL
    assert rel_err(unedited, theirs) > 100 * RTOL


def test_an_edit_inside_a_multistep_run_keeps_the_history(unet):
    """dpmpp_2m with latents scaled between two steps: the next step starts from the edited
    latents and still uses the previous D (as DPMSolverMultistep does)."""
    reference = diffusers.DPMSolverMultistepScheduler(**SD_BETAS)
    reference.set_timesteps(STEPS)
    ours = KSamplingScheduler.from_config(reference.config, solver="dpmpp_2m")
    ours.set_timesteps(STEPS)
    results = []
    for scheduler in (reference, ours):
        latents = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            for i, t in enumerate(scheduler.timesteps):
                latents = scheduler.step(unet(latents, t).sample, t, latents).prev_sample
                if i == 2:
                    latents = latents * 0.7 + 0.1
        results.append(latents)
    assert rel_err(results[1], results[0]) < RTOL


# -- flow matching --------------------------------------------------------------------------------
class TinyFlowTransformer(torch.nn.Module):
    """Shaped like a diffusers transformer: ``model(hidden_states, timestep)`` -> velocity."""

    def __init__(self):
        super().__init__()
        self.mix = torch.nn.Conv2d(3, 3, 1)
        torch.nn.init.normal_(self.mix.weight, std=0.3, generator=torch.Generator().manual_seed(0))

    def forward(self, hidden_states, timestep):
        t = torch.as_tensor(timestep, dtype=hidden_states.dtype).reshape(-1, 1, 1, 1) / 1000
        return torch.tanh(self.mix(hidden_states)) * (1 + t) + 0.3 * hidden_states - 0.5


@torch.no_grad()
def flow_loop(model, scheduler, latents, num_inference_steps, **kwargs):
    """SD3 / Flux's loop: no scale_model_input, the velocity straight into step()."""
    scheduler.set_timesteps(num_inference_steps, **kwargs)
    for t in scheduler.timesteps:
        latents = scheduler.step(model(latents, t.expand(latents.shape[0])), t, latents).prev_sample
    return latents


FLOW_CONFIGS = {
    "default": ({}, {}),
    "sd3-shift3": (dict(shift=3.0), {}),
    "flux-mu": (dict(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15), dict(mu=0.8)),
    "flux-mu-linear": (dict(use_dynamic_shifting=True, time_shift_type="linear"), dict(mu=0.6)),
    "shift_terminal": (dict(shift=3.0, shift_terminal=0.1), {}),
    "karras": (dict(shift=3.0, use_karras_sigmas=True), {}),
    "exponential": (dict(use_exponential_sigmas=True), {}),
    "beta": (dict(use_beta_sigmas=True), {}),
    "invert_sigmas": (dict(invert_sigmas=True), {}),
}


@pytest.mark.parametrize("case", list(FLOW_CONFIGS))
def test_flow_match_euler_is_reproduced(case):
    config, kwargs = FLOW_CONFIGS[case]
    model = TinyFlowTransformer()
    start = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    reference = diffusers.FlowMatchEulerDiscreteScheduler(**config)
    ours = KSamplingScheduler.from_config(reference.config, solver="euler")
    theirs = flow_loop(model, reference, start, 8, **kwargs)
    got = flow_loop(model, ours, start, 8, **kwargs)
    torch.testing.assert_close(ours.timesteps.double(), reference.timesteps.double(), rtol=0, atol=1e-3)
    torch.testing.assert_close(ours.sigmas.double(), reference.sigmas.double(), rtol=0, atol=1e-6)
    assert rel_err(got, theirs) < 1e-5, rel_err(got, theirs)


def test_flow_sigmas_and_mu_as_flux_passes_them():
    import numpy as np

    model = TinyFlowTransformer()
    start = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    sigmas = np.linspace(1.0, 1 / 8, 8)
    reference = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    ours = KSamplingScheduler.from_config(reference.config, solver="euler")
    theirs = flow_loop(model, reference, start, None, sigmas=sigmas, mu=0.7)
    assert rel_err(flow_loop(model, ours, start, None, sigmas=sigmas, mu=0.7), theirs) < 1e-5


@pytest.mark.parametrize("solver", ["dpmpp_2m", "unipc", "heun"])
def test_flow_solvers_converge_to_the_same_answer(solver):
    """In an SD3-style loop (shift 3) every solver's error against a fine dpmpp_3m solve falls as
    the steps grow, and Heun's (second order) by about 4× per doubling."""
    model = TinyFlowTransformer()
    start = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    config = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0).config
    exact = flow_loop(model, KSamplingScheduler.from_config(config, solver="dpmpp_3m"), start, 400)
    errors = [rel_err(flow_loop(model, KSamplingScheduler.from_config(config, solver=solver), start, n), exact) for n in (8, 16, 32, 64)]
    assert errors[-1] < 2e-2 and all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[-2] / errors[-1] > 2.5, errors


def test_flow_img2img_scale_noise():
    """scale_noise at the begin index is FlowMatchEuler's t·noise + (1 − t)·x0, and the
    img2img run from there equals FlowMatchEuler's."""
    model = TinyFlowTransformer()
    clean = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(4))
    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(5))
    results = []
    for scheduler in (diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0), None):
        if scheduler is None:
            scheduler = KSamplingScheduler.from_config(diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0).config, solver="euler")
        scheduler.set_timesteps(10)
        scheduler.set_begin_index(4)
        timesteps = scheduler.timesteps[4:]
        latents = scheduler.scale_noise(clean, timesteps[:1].repeat(2), noise)
        results.append(latents)
        with torch.no_grad():
            for t in timesteps:
                latents = scheduler.step(model(latents, t.expand(2)), t, latents).prev_sample
        results.append(latents)
    torch.testing.assert_close(results[2], results[0])
    assert rel_err(results[3], results[1]) < 1e-5


# -- errors, not silence ------------------------------------------------------------------------
def test_flow_sigmas_with_mu_on_a_ddpm_config_raise():
    scheduler = KSamplingScheduler.from_config(diffusers.DDIMScheduler(**SD_BETAS).config, solver="euler")
    with pytest.raises(ValueError, match="mu"):
        scheduler.set_timesteps(sigmas=[1.0, 0.75, 0.5, 0.25], mu=0.8)
    with pytest.raises(TypeError, match="unexpected"):
        scheduler.set_timesteps(4, shift=3.0)


def test_model_output_shape_mismatch_is_an_error():
    scheduler = KSamplingScheduler.from_config(diffusers.DDIMScheduler(**SD_BETAS).config, solver="ddim")
    scheduler.set_timesteps(4)
    sample = torch.randn(2, 3, 8, 8)
    for bad in (torch.randn(1, 3, 8, 8), torch.randn(2, 3, 1, 1), torch.randn(2, 4, 8, 8)):
        with pytest.raises(ValueError, match="model_output has shape"):
            scheduler.step(bad, scheduler.timesteps[0], sample)


def test_timesteps_beyond_the_training_range_are_an_error():
    scheduler = KSamplingScheduler.from_config(diffusers.EulerDiscreteScheduler(**SD_BETAS).config, solver="euler")
    with pytest.raises(ValueError, match="training range"):
        scheduler.set_timesteps(timesteps=[1500, 900, 500])
    with pytest.raises(ValueError, match="training range"):
        scheduler.set_timesteps(timesteps=[900, 500, -3])
    with pytest.raises(ValueError, match="training range"):
        scheduler.set_timesteps(sigmas=[1e4, 5.0, 1.0])
    scheduler.set_timesteps(timesteps=[999, 500, 10])
    assert scheduler.timesteps.tolist() == [999, 500, 10]


def test_betas_and_alphas_cumprod_are_the_sources():
    for name in ("DDIMScheduler", "EulerDiscreteScheduler", "DPMSolverMultistepScheduler"):
        source = getattr(diffusers, name)(**SD_BETAS)
        ours = KSamplingScheduler.from_config(source.config, solver="euler")
        assert torch.equal(ours.betas, source.betas) and torch.equal(ours.alphas_cumprod, source.alphas_cumprod)
        assert torch.equal(ours.alphas, source.alphas)


def test_set_timesteps_is_linear_in_the_steps(monkeypatch):
    """The work of set_timesteps (solver steps replayed in its dry run) grows linearly: for
    heun, at most three step calls per step (two model calls, one replay), at 20000 steps."""
    from ksampling.samplers.base import get

    counted = {"n": 0}
    heun = get("heun")
    original = heun.step

    def counting(self, ctx, x, step):
        counted["n"] += 1
        return original(self, ctx, x, step)

    monkeypatch.setattr(heun, "step", counting)
    scheduler = KSamplingScheduler(solver="heun", **SD_BETAS)
    scheduler.set_timesteps(20000)
    assert len(scheduler.timesteps) == 2 * 20000 - 1
    assert counted["n"] <= 3 * 20000


def test_flow_shift_zero_is_an_error():
    config = dict(diffusers.FlowMatchEulerDiscreteScheduler().config)
    config["shift"] = 0.0
    with pytest.raises(ValueError, match="shift"):
        from_diffusers(TinyFlowTransformer(), config)
    with pytest.raises(ValueError, match="shift"):
        KSamplingScheduler.from_config(config, solver="euler")


def test_a_model_returning_none_is_a_type_error():
    denoiser = from_diffusers(lambda sample, timestep: None, diffusers.DDIMScheduler(**SD_BETAS).config)
    with pytest.raises(TypeError, match="NoneType"):
        denoiser(torch.randn(1, 3, 4, 4), torch.tensor([1.0]))


def test_stochastic_flow_sampling_config_is_refused():
    config = diffusers.FlowMatchEulerDiscreteScheduler(stochastic_sampling=True).config
    with pytest.raises(ValueError, match="stochastic_sampling"):
        KSamplingScheduler.from_config(config, solver="euler")


# -- an SD3 pipeline from tiny components ---------------------------------------------------------
@pytest.fixture(scope="module")
def sd3_parts():
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    transformer = diffusers.SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=8, caption_projection_dim=16, pooled_projection_dim=8, out_channels=4,
    ).eval()
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(8,), latent_channels=4, norm_num_groups=4, sample_size=8, shift_factor=0.0,
    ).eval()
    return transformer, vae


def run_sd3(parts, pipeline, scheduler, **kwargs):
    transformer, vae = parts
    pipe = getattr(diffusers, pipeline)(
        transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None, text_encoder_2=None,
        tokenizer_2=None, text_encoder_3=None, tokenizer_3=None,
    )
    pipe.set_progress_bar_config(disable=True)
    embeddings = torch.randn(1, 5, 8, generator=torch.Generator().manual_seed(2))
    pooled = torch.randn(1, 8, generator=torch.Generator().manual_seed(3))
    return pipe(
        prompt_embeds=embeddings, pooled_prompt_embeds=pooled, negative_prompt_embeds=torch.zeros_like(embeddings),
        negative_pooled_prompt_embeds=torch.zeros_like(pooled), num_inference_steps=8, guidance_scale=3.0, height=16,
        width=16, generator=torch.Generator().manual_seed(5), output_type="latent", **kwargs,
    ).images


@pytest.mark.parametrize("pipeline", ["StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline"])
def test_sd3_pipeline_euler_equals_flow_match_euler(sd3_parts, pipeline):
    """SD3 (shift 3) and its img2img (scale_noise, set_begin_index): euler is FlowMatchEuler;
    dpmpp_2m runs in the same pipeline."""
    kwargs = dict(image=IMAGE[:, :, :8, :8].repeat(1, 1, 2, 2), strength=0.6) if "Img2Img" in pipeline else {}
    reference = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    theirs = run_sd3(sd3_parts, pipeline, reference, **kwargs)
    ours = run_sd3(sd3_parts, pipeline, KSamplingScheduler.from_config(reference.config, solver="euler"), **kwargs)
    assert rel_err(ours, theirs) < 1e-5, rel_err(ours, theirs)
    other = run_sd3(sd3_parts, pipeline, KSamplingScheduler.from_config(reference.config, solver="dpmpp_2m"), **kwargs)
    assert torch.isfinite(other).all() and 1e-4 < rel_err(other, theirs) < 1
