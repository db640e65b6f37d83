"""ComfyUI's and A1111's call sites, replayed on ksampling.kdiffusion.

Each test calls the drop-in the way those programs call ``k_diffusion.sampling`` (read from
their sources: ComfyUI's ``comfy/k_diffusion/sampling.py`` and ``comfy/samplers.py``, A1111's
``modules/sd_samplers_kdiffusion.py`` and ``sd_samplers_common.py``) and checks the result
against the real k-diffusion 0.1.1 (tests/reference.py) given the noise those programs would
have drawn. ComfyUI's own noise conventions are transcribed here from its source.
"""

from __future__ import annotations

import inspect
import math
from collections import deque

import pytest
import torch

import ksampling
import ksampling.kdiffusion as KS
import ksampling.kdiffusion.sampling as sampling
from reference import k_diffusion

RTOL = 1e-10


class ComfyModel(torch.nn.Module):
    """A denoiser called as ComfyUI calls its model: ``model(x, sigma, seed=..., model_options=...)``.
    It treats each batch item on its own (as a real denoiser does), so per-image seeds are
    independent of the batch."""

    def forward(self, x, sigma, seed=None, model_options=None, **kwargs):
        s = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        return torch.tanh((x + 0.1 * x.roll(1, dims=-1)) / (1 + s)) / (1 + 0.1 * s)


class ComfyCFGModel(torch.nn.Module):
    """Classifier-free guidance as ComfyUI's ``cfg_function`` does it: after the mix, every
    function in ``model_options['sampler_post_cfg_function']`` gets
    ``{'denoised', 'uncond_denoised', 'cond_denoised', ...}`` and returns the new denoised."""

    def __init__(self, cond_scale=3.0):
        super().__init__()
        self.cond_scale = cond_scale

    def parts(self, x, sigma):
        s = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        cond = torch.tanh(x / (1 + s)) / (1 + 0.1 * s)
        uncond = 0.8 * torch.tanh(x.roll(1, dims=-1) / (1 + s))
        return cond, uncond

    def forward(self, x, sigma, seed=None, model_options=None):
        cond, uncond = self.parts(x, sigma)
        denoised = uncond + (cond - uncond) * self.cond_scale
        for fn in (model_options or {}).get("sampler_post_cfg_function", []):
            denoised = fn({"denoised": denoised, "cond_denoised": cond, "uncond_denoised": uncond,
                           "cond_scale": self.cond_scale, "sigma": sigma, "input": x, "model_options": model_options})
        return denoised


def comfy_default_noise_sampler(x, seed):
    """ComfyUI's ``default_noise_sampler(x, seed)`` (comfy/k_diffusion/sampling.py), transcribed."""
    if x.device == torch.device("cpu"):
        seed += 1
    generator = torch.Generator(device=x.device)
    generator.manual_seed(seed)
    return lambda sigma, sigma_next: torch.randn(x.size(), dtype=x.dtype, layout=x.layout, device=x.device, generator=generator)


def grid(n=7, sigma_min=0.05, sigma_max=10.0, dtype=torch.float64):
    return KS.append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64).exp()).to(dtype)


def start(seed=0, batch=2, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 3, 4, 4, generator=g, dtype=torch.float64) * 10.0).to(dtype)


def rel_err(a, b):
    return float((a - b).norm() / b.norm())


def _registered(name):
    entry = sampling.SAMPLERS.get(name)
    if entry is not None and entry.solver not in ksampling.samplers.available():
        pytest.skip("solver not registered yet")
    return entry


# -- every ComfyUI name ----------------------------------------------------------------------
def test_every_comfyui_sampler_name_resolves():
    assert len(sampling.KSAMPLER_NAMES) == 39
    head = ["model", "x", "sigmas", "extra_args", "callback", "disable"]
    for name in sampling.KSAMPLER_NAMES:
        function = getattr(KS, f"sample_{name}")
        assert function is getattr(sampling, f"sample_{name}") and callable(function)
        parameters = list(inspect.signature(function).parameters)
        if name in ("dpm_fast", "dpm_adaptive"):
            assert parameters[:3] == ["model", "x", "sigma_min"]
        else:
            assert parameters[:6] == head, name
            assert name in sampling.SAMPLERS


# ComfyUI's signatures (comfy/k_diffusion/sampling.py): the parameters after `disable`, with defaults.
COMFY_SIGNATURES = {
    "euler_cfg_pp": {},
    "euler_ancestral_cfg_pp": {"eta": 1.0, "s_noise": 1.0, "noise_sampler": None},
    "heunpp2": {"s_churn": 0.0, "s_tmin": 0.0, "s_tmax": float("inf"), "s_noise": 1.0},
    "dpmpp_2s_ancestral_cfg_pp": {"eta": 1.0, "s_noise": 1.0, "noise_sampler": None},
    "dpmpp_sde_gpu": {"eta": 1.0, "s_noise": 1.0, "noise_sampler": None, "r": 0.5},
    "dpmpp_2m_cfg_pp": {},
    "dpmpp_2m_sde_heun": {"eta": 1.0, "s_noise": 1.0, "noise_sampler": None, "solver_type": "heun"},
    "dpmpp_2m_sde_gpu": {"eta": 1.0, "s_noise": 1.0, "noise_sampler": None, "solver_type": "midpoint"},
    "ddpm": {"noise_sampler": None},
    "ipndm": {"max_order": 4},
    "ipndm_v": {"max_order": 4},
    "deis": {"max_order": 3, "deis_mode": "tab"},
    "res_multistep": {"s_noise": 1.0, "noise_sampler": None},
    "res_multistep_ancestral": {"eta": 1.0, "s_noise": 1.0, "noise_sampler": None},
    "gradient_estimation": {"ge_gamma": 2.0},
    "er_sde": {"s_noise": 1.0, "noise_sampler": None, "noise_scaler": None, "max_stage": 3},
    "seeds_2": {"eta": 1.0, "s_noise": 1.0, "noise_sampler": None, "r": 0.5, "solver_type": "phi_1"},
    "seeds_3": {"eta": 1.0, "s_noise": 1.0, "noise_sampler": None, "r_1": 1.0 / 3, "r_2": 2.0 / 3},
    "sa_solver_pece": {"tau_func": None, "s_noise": 1.0, "noise_sampler": None, "predictor_order": 3,
                       "corrector_order": 4, "simple_order_2": False},
}


@pytest.mark.parametrize("name", sorted(COMFY_SIGNATURES))
def test_signatures_are_comfyuis(name):
    parameters = inspect.signature(getattr(KS, f"sample_{name}")).parameters
    tail = {p.name: p.default for p in list(parameters.values())[6:]}
    assert tail == COMFY_SIGNATURES[name]


def _model_for(entry):
    return ComfyCFGModel() if entry.cfg_pp else ComfyModel()


@pytest.mark.parametrize("name", [n for n in sampling.KSAMPLER_NAMES if n not in ("dpm_fast", "dpm_adaptive")])
def test_every_comfyui_sampler_runs_as_comfyui_calls_it(name):
    """ComfyUI's KSAMPLER: ``sampler_function(model_k, noise, sigmas, extra_args={'model_options':
    ..., 'seed': seed}, callback=k_callback, disable=disable_pbar)``."""
    entry = _registered(name)
    model, x, sigmas = _model_for(entry), start(1), grid(6)
    steps = []

    def run(seed):
        return getattr(KS, f"sample_{name}")(model, x, sigmas, extra_args={"model_options": {}, "seed": seed},
                                              callback=lambda d: steps.append(d["i"]), disable=True)

    a = run(5)
    assert a.shape == x.shape and torch.isfinite(a).all()
    assert steps[0] == 0 and steps[-1] == len(sigmas) - 2
    # the seed in extra_args makes the run reproducible, whatever the global RNG does
    torch.manual_seed(123)
    assert torch.equal(run(5), a)
    if entry.noise in ("seeded", "brownian", "brownian_device") and ksampling.samplers.info(entry.solver)["kind"] == "sde":
        assert rel_err(run(6), a) > 1e-6


def test_gpu_variants_are_aliases_and_sde_heun_is_the_heun_solver_type():
    model, x, sigmas = ComfyModel(), start(2), grid()
    extra = {"seed": 3}
    for name in ("dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde", "dpmpp_2m_sde_heun"):
        # on the CPU the tree is on the CPU either way: the same numbers
        assert torch.equal(getattr(KS, f"sample_{name}")(model, x, sigmas, dict(extra), disable=True),
                           getattr(KS, f"sample_{name}_gpu")(model, x, sigmas, dict(extra), disable=True))
    assert torch.equal(KS.sample_dpmpp_2m_sde_heun(model, x, sigmas, dict(extra), disable=True),
                       KS.sample_dpmpp_2m_sde(model, x, sigmas, dict(extra), disable=True, solver_type="heun"))


# -- ComfyUI's seeds ------------------------------------------------------------------------
def test_default_noise_sampler_takes_comfyuis_seed():
    x = start(3)
    ours, theirs = KS.default_noise_sampler(x, seed=42), comfy_default_noise_sampler(x, 42)
    for _ in range(3):
        assert torch.equal(ours(1.0, 0.5), theirs(1.0, 0.5))
    torch.manual_seed(1)
    unseeded = KS.default_noise_sampler(x)(1.0, 0.5)
    torch.manual_seed(1)
    assert torch.equal(unseeded, torch.randn_like(x))


@pytest.mark.parametrize("name", ["euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral"])
def test_seed_in_extra_args_gives_comfyuis_noise(name):
    """ComfyUI's ancestral samplers are k-diffusion's with ``default_noise_sampler(x, seed=
    extra_args['seed'])``: the drop-in with the seed in extra_args equals k-diffusion given
    that noise sampler, and ignores the global RNG."""
    K = k_diffusion()
    model, x, sigmas = ComfyModel(), start(4), grid()
    extra_args = {"seed": 1234, "model_options": {}}
    theirs = getattr(K.sampling, f"sample_{name}")(model, x, sigmas, extra_args=extra_args, disable=True,
                                                   noise_sampler=comfy_default_noise_sampler(x, 1234))
    torch.manual_seed(0)
    ours = getattr(KS, f"sample_{name}")(model, x, sigmas, extra_args=extra_args, disable=True)
    assert rel_err(ours, theirs) < RTOL


@pytest.mark.parametrize("name", ["dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde"])
def test_seed_in_extra_args_seeds_the_brownian_tree(name):
    """ComfyUI: ``BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed=extra_args['seed'],
    cpu=True)``, which on the CPU is k-diffusion's tree with that seed."""
    K = k_diffusion()
    model, x, sigmas = ComfyModel(), start(5), grid()
    extra_args = {"seed": 77}
    tree = K.sampling.BrownianTreeNoiseSampler(x, sigmas[sigmas > 0].min(), sigmas.max(), seed=77)
    theirs = getattr(K.sampling, f"sample_{name}")(model, x, sigmas, extra_args=extra_args, disable=True, noise_sampler=tree)
    ours = getattr(KS, f"sample_{name}")(model, x, sigmas, extra_args=extra_args, disable=True)
    assert rel_err(ours, theirs) < RTOL


def test_brownian_tree_takes_comfyuis_cpu_option():
    x = start(6)
    on_device = KS.BrownianTreeNoiseSampler(x, 0.1, 10.0, seed=3)
    on_cpu = KS.BrownianTreeNoiseSampler(x, 0.1, 10.0, seed=3, cpu=True)
    a, b = on_device(torch.tensor(5.0), torch.tensor(2.0)), on_cpu(torch.tensor(5.0), torch.tensor(2.0))
    assert b.dtype == x.dtype and b.device == x.device and torch.equal(a, b)


# -- k-diffusion's global RNG and A1111's patched module `torch` ------------------------------
@pytest.mark.parametrize("name", ["dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_default_brownian_tree_is_k_diffusions(name, dtype):
    """No seed, no noise_sampler: both seed a torchsde tree from the global RNG."""
    K = k_diffusion()
    model, x, sigmas = ComfyModel(), start(7, dtype=dtype), grid(dtype=dtype)
    torch.manual_seed(99)
    theirs = getattr(K.sampling, f"sample_{name}")(model, x, sigmas, disable=True)
    torch.manual_seed(99)
    ours = getattr(KS, f"sample_{name}")(model, x, sigmas, disable=True)
    assert rel_err(ours, theirs) < (RTOL if dtype == torch.float64 else 1e-6)


class TorchHijack:
    """A1111's ``sd_samplers_common.TorchHijack``, transcribed: ``randn_like`` gives the next
    pre-drawn noise (its per-image seeds and the eta noise seed delta); everything else is torch's."""

    def __init__(self, noises):
        self.noises = deque(noises)
        self.draws = 0

    def __getattr__(self, item):
        if item == "randn_like":
            return self.randn_like
        if hasattr(torch, item):
            return getattr(torch, item)
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{item}'")

    def randn_like(self, x):
        self.draws += 1
        if self.noises:
            noise = self.noises.popleft()
            if noise.shape == x.shape:
                return noise
        return torch.randn_like(x)


class A1111CFGDenoiser(torch.nn.Module):
    """A1111's CFGDenoiser's calling convention: ``forward(x, sigma, uncond, cond, cond_scale,
    s_min_uncond, image_cond)``."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x, sigma, uncond, cond, cond_scale, s_min_uncond, image_cond):
        denoised_cond = self.inner(x + cond, sigma)
        denoised_uncond = self.inner(x + uncond, sigma)
        return denoised_uncond + (denoised_cond - denoised_uncond) * cond_scale


def a1111_sample(module, funcname, x, sigmas, noises, p):
    """A1111's KDiffusionSampler.initialize + sample, as it calls k-diffusion (1.x)."""
    func = getattr(module, funcname)
    hijack = TorchHijack(noises)
    previous = module.torch
    module.torch = hijack  # k_diffusion.sampling.torch = TorchHijack(p)
    try:
        parameters = inspect.signature(func).parameters
        extra_params_kwargs = {}
        for param_name in ("s_churn", "s_tmin", "s_tmax", "s_noise"):
            if param_name in p and param_name in parameters:
                extra_params_kwargs[param_name] = p[param_name]
        if "eta" in parameters:
            extra_params_kwargs["eta"] = p["eta"]
        if "sigma_min" in parameters:
            extra_params_kwargs["sigma_min"] = float(sigmas[-2])
            extra_params_kwargs["sigma_max"] = float(sigmas[0])
            if "n" in parameters:
                extra_params_kwargs["n"] = len(sigmas) - 1
        else:
            extra_params_kwargs["sigmas"] = sigmas
        if p.get("brownian_noise"):
            sigma_min, sigma_max = sigmas[sigmas > 0].min(), sigmas.max()
            extra_params_kwargs["noise_sampler"] = module.BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed=p["seeds"])
        seen = []
        model = A1111CFGDenoiser(ComfyModel())
        cond = torch.full_like(x, 0.1)
        samples = func(model, x * sigmas[0], extra_args={"cond": cond, "image_cond": None, "uncond": -cond,
                                                         "cond_scale": 2.0, "s_min_uncond": 0.0},
                       disable=True, callback=lambda d: seen.append(d["i"]), **extra_params_kwargs)
    finally:
        module.torch = previous
    return samples, hijack.draws, seen


@pytest.mark.parametrize(
    "funcname, p",
    [
        ("sample_euler_ancestral", {"eta": 1.0}),
        ("sample_dpm_2_ancestral", {"eta": 0.8}),
        ("sample_dpmpp_2s_ancestral", {"eta": 1.0}),
        ("sample_euler", {"s_churn": 1.0, "s_tmin": 0.0, "s_tmax": float("inf"), "s_noise": 1.0}),
        ("sample_heun", {"s_churn": 1.0, "s_tmin": 0.0, "s_tmax": float("inf"), "s_noise": 1.0}),
        ("sample_dpm_fast", {"eta": 0.5}),
        ("sample_dpmpp_2m_sde", {"eta": 1.0, "brownian_noise": True, "seeds": [11, 12]}),
        ("sample_dpmpp_sde", {"eta": 1.0, "brownian_noise": True, "seeds": [11, 12]}),
    ],
)
def test_a1111_call_site_with_its_patched_torch(funcname, p):
    """A1111 replaces ``k_diffusion.sampling.torch`` and passes per-image seeds to the
    Brownian tree; the drop-in, patched the same way, draws every default noise through the
    patch and gives k-diffusion's sample."""
    K = k_diffusion()
    x, sigmas = start(8) / 10.0, grid(7)
    noises = [torch.randn(x.shape, generator=torch.Generator().manual_seed(100 + k), dtype=x.dtype) for k in range(20)]
    theirs, their_draws, their_steps = a1111_sample(K.sampling, funcname, x, sigmas, noises, p)
    ours, our_draws, our_steps = a1111_sample(sampling, funcname, x, sigmas, noises, p)
    assert sampling.torch is torch  # restored
    # k-diffusion's dpm_fast draws one more number on its last step and multiplies it by 0
    discarded = 1 if funcname == "sample_dpm_fast" else 0
    assert our_draws == their_draws - discarded and (their_draws > 0) != bool(p.get("brownian_noise"))
    assert our_steps == their_steps
    # k-diffusion's dpm_fast builds its λ grid in float32 (the default dtype)
    assert rel_err(ours, theirs) < (1e-6 if funcname == "sample_dpm_fast" else RTOL)


def test_per_image_seeds_do_not_depend_on_the_batch():
    """A1111's reason for per-image seeds: image i with seed s is the same in any batch."""
    model, sigmas = ComfyModel(), grid()
    x = start(9, batch=3)
    sigma_min, sigma_max = sigmas[sigmas > 0].min(), sigmas.max()
    batch = KS.sample_dpmpp_2m_sde(model, x, sigmas, disable=True,
                                   noise_sampler=KS.BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed=[5, 6, 7]))
    alone = KS.sample_dpmpp_2m_sde(model, x[1:2], sigmas, disable=True,
                                   noise_sampler=KS.BrownianTreeNoiseSampler(x[1:2], sigma_min, sigma_max, seed=[6]))
    assert rel_err(batch[1:2], alone) < 1e-12


# -- CFG++: ComfyUI's post-CFG hook -----------------------------------------------------------
def test_cfg_pp_adapter_follows_comfyuis_post_cfg_hook():
    model, x = ComfyCFGModel(), start(10)
    sigma = torch.full((x.shape[0],), 2.0, dtype=x.dtype)
    options = {"sampler_post_cfg_function": [lambda args: args["denoised"]], "other": 1}
    denoised, uncond = sampling._UncondCapture(model).denoise_with_uncond(x, sigma, model_options=options, seed=1)
    cond, expected_uncond = model.parts(x, sigma)
    assert torch.equal(uncond, expected_uncond)
    assert torch.equal(denoised, expected_uncond + (cond - expected_uncond) * model.cond_scale)
    assert options == {"sampler_post_cfg_function": options["sampler_post_cfg_function"], "other": 1}  # not modified
    assert len(options["sampler_post_cfg_function"]) == 1
    with pytest.raises(TypeError, match="post_cfg"):
        sampling._UncondCapture(ComfyModel()).denoise_with_uncond(x, sigma)

    class Guided:
        def __call__(self, x, sigma):
            return x

        def denoise_with_uncond(self, x, sigma):
            return x, -x

    assert torch.equal(sampling._UncondCapture(Guided()).denoise_with_uncond(x, sigma)[1], -x)


# -- clear errors (issue 12) ------------------------------------------------------------------
def test_clear_errors_where_k_diffusion_gives_garbage():
    with pytest.raises(ValueError, match="sigma_to"):
        KS.get_ancestral_step(1.0, 2.0)
    with pytest.raises(TypeError, match="CompVis"):
        KS.external.CompVisDenoiser(object())
    with pytest.raises(TypeError, match="CompVis"):
        KS.external.CompVisVDenoiser(object())
    with pytest.raises(ValueError, match="sigma_min"):
        KS.log_likelihood(ComfyModel(), start(11), 20.0, 0.01)
    with pytest.raises(ValueError, match="seed"):
        KS.BrownianTreeNoiseSampler(start(11), 0.1, 1.0, seed=[1, 2, 3])


def test_v_scalings_are_the_closed_form():
    sigma = torch.tensor([0.5, 2.0], dtype=torch.float64)
    expected = (1 / (sigma**2 + 1), -sigma / (sigma**2 + 1).sqrt(), 1 / (sigma**2 + 1).sqrt())
    for wrapper in (KS.external.VDenoiser(torch.nn.Identity()),
                    KS.external.DiscreteVDDPMDenoiser(torch.nn.Identity(), torch.linspace(0.99, 0.01, 10), False)):
        for got, want in zip(wrapper.get_scalings(sigma), expected):
            torch.testing.assert_close(got, want, rtol=1e-15, atol=0)


def test_get_sigmas_laplace_is_comfyuis():
    """ComfyUI's get_sigmas_laplace (Tiankai et al. 2024), transcribed: n values, no final 0."""
    n, sigma_min, sigma_max, mu, beta = 9, 0.03, 14.6, 0.2, 0.7
    u = torch.linspace(0, 1, n, dtype=torch.float64)
    lmb = mu - beta * torch.sign(0.5 - u) * torch.log(1 - 2 * torch.abs(0.5 - u) + 1e-5)
    expected = torch.clamp(torch.exp(lmb), min=sigma_min, max=sigma_max)
    ours = KS.get_sigmas_laplace(n, sigma_min, sigma_max, mu=mu, beta=beta)
    assert ours.shape == (n,) and ours.dtype == torch.get_default_dtype()
    torch.testing.assert_close(ours, expected.to(ours.dtype), rtol=1e-6, atol=0)


# -- the table's mechanism --------------------------------------------------------------------
def test_table_maps_comfyui_options_onto_the_solver():
    model, x, sigmas = ComfyModel(), start(12), grid()
    # ComfyUI's er_sde noise_scaler is a function of tensors; its default is ksampling's "default"
    comfy_default_scaler = lambda t: t * ((t**0.3).exp() + 10.0)  # noqa: E731
    a = KS.sample_er_sde(model, x, sigmas, {"seed": 1}, disable=True, noise_scaler=comfy_default_scaler)
    b = KS.sample_er_sde(model, x, sigmas, {"seed": 1}, disable=True)
    assert rel_err(a, b) < 1e-12
    # deis: max_order is the solver's order, and the polynomial is in σ (variable="rho")
    ours = KS.sample_deis(model, x, sigmas, disable=True, max_order=2, deis_mode="rhoab")
    native = ksampling.sample(model, x, sigmas, "deis", order=2, variable="rho")
    assert torch.equal(ours, native)
    # ddpm: ComfyUI's step uses the posterior variance
    noise = comfy_default_noise_sampler(x, 3)
    assert torch.equal(KS.sample_ddpm(model, x, sigmas, {"seed": 3}, disable=True),
                       ksampling.sample(model, x, sigmas, "ddpm", variance="small", noise_sampler=noise))


def test_table_rejects_what_the_solver_cannot_do():
    model, x, sigmas = ComfyModel(), start(13), grid()
    sampler = sampling._make_sampler("toy", sampling.Sampler("euler", (("comfy_only", 1.0),)))
    assert list(inspect.signature(sampler).parameters)[-1] == "comfy_only"
    assert torch.equal(sampler(model, x, sigmas, disable=True), KS.sample_euler(model, x, sigmas, disable=True))
    with pytest.raises(TypeError, match="comfy_only=2.0"):
        sampler(model, x, sigmas, disable=True, comfy_only=2.0)
    with pytest.raises(TypeError):
        sampler(model, x, sigmas, disable=True, not_a_parameter=1)
    missing = sampling._make_sampler("toy", sampling.Sampler("no_such_solver"))
    with pytest.raises(NotImplementedError, match="no_such_solver"):
        missing(model, x, sigmas)


# -- ComfyUI's samplers that k-diffusion lacks, transcribed from comfy/k_diffusion/sampling.py --
def _noise_stream(x, seed):
    generator = torch.Generator().manual_seed(seed)
    return lambda sigma, sigma_next: torch.randn(x.shape, generator=generator, dtype=x.dtype)


def comfy_ddpm(model, x, sigmas, noise_sampler):
    for i in range(len(sigmas) - 1):
        sigma, sigma_prev = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * x.new_ones([x.shape[0]]))
        eps = (x - denoised) / sigma
        x_vp = x / torch.sqrt(1.0 + sigma**2.0)
        alpha_cumprod, alpha_cumprod_prev = 1 / (sigma * sigma + 1), 1 / (sigma_prev * sigma_prev + 1)
        alpha = alpha_cumprod / alpha_cumprod_prev
        mu = (1.0 / alpha).sqrt() * (x_vp - (1 - alpha) * eps / (1 - alpha_cumprod).sqrt())
        if sigma_prev > 0:
            mu += ((1 - alpha) * (1.0 - alpha_cumprod_prev) / (1.0 - alpha_cumprod)).sqrt() * noise_sampler(sigma, sigma_prev)
        x = mu
        if sigma_prev != 0:
            x = x * torch.sqrt(1.0 + sigma_prev**2.0)
    return x


def comfy_ipndm(model, x, sigmas, max_order=4):
    buffer = []
    for i in range(len(sigmas) - 1):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, t_cur * x.new_ones([x.shape[0]]))
        d_cur = (x - denoised) / t_cur
        order = min(max_order, i + 1)
        if t_next == 0:
            x_next = denoised
        elif order == 1:
            x_next = x + (t_next - t_cur) * d_cur
        elif order == 2:
            x_next = x + (t_next - t_cur) * (3 * d_cur - buffer[-1]) / 2
        elif order == 3:
            x_next = x + (t_next - t_cur) * (23 * d_cur - 16 * buffer[-1] + 5 * buffer[-2]) / 12
        else:
            x_next = x + (t_next - t_cur) * (55 * d_cur - 59 * buffer[-1] + 37 * buffer[-2] - 9 * buffer[-3]) / 24
        buffer = (buffer + [d_cur])[-(max_order - 1):]
        x = x_next
    return x


def comfy_gradient_estimation(model, x, sigmas, ge_gamma=2.0):
    old_d = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * x.new_ones([x.shape[0]]))
        d = (x - denoised) / sigmas[i]
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            x = x + d * dt
            if i >= 1:
                x = x + (ge_gamma - 1) * (d - old_d) * dt
        old_d = d
    return x


def comfy_res_multistep(model, x, sigmas):
    """ComfyUI's res_multistep with eta = 0 (its sample_res_multistep)."""
    t_fn = lambda sigma: sigma.log().neg()  # noqa: E731
    phi1 = lambda t: torch.expm1(t) / t  # noqa: E731
    phi2 = lambda t: (phi1(t) - 1.0) / t  # noqa: E731
    old_sigma_down, old_denoised = None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * x.new_ones([x.shape[0]]))
        sigma_down = sigmas[i + 1]
        if sigma_down == 0 or old_denoised is None:
            x = x + (x - denoised) / sigmas[i] * (sigma_down - sigmas[i])
        else:
            t, t_old, t_next, t_prev = t_fn(sigmas[i]), t_fn(old_sigma_down), t_fn(sigma_down), t_fn(sigmas[i - 1])
            h = t_next - t
            c2 = (t_prev - t_old) / h
            b1 = torch.nan_to_num(phi1(-h) - phi2(-h) / c2, nan=0.0)
            b2 = torch.nan_to_num(phi2(-h) / c2, nan=0.0)
            x = (-h).exp() * x + h * (b1 * denoised + b2 * old_denoised)
        old_denoised, old_sigma_down = denoised, sigma_down
    return x


@pytest.mark.parametrize("name", ["ddpm", "ipndm", "gradient_estimation", "res_multistep"])
def test_comfyui_samplers_without_a_k_diffusion_original_match_its_formulas(name):
    _registered(name)
    model, x, sigmas = ComfyModel(), start(14), grid(9)
    if name == "ddpm":
        theirs = comfy_ddpm(model, x, sigmas, _noise_stream(x, 8))
        ours = KS.sample_ddpm(model, x, sigmas, disable=True, noise_sampler=_noise_stream(x, 8))
    else:
        theirs = globals()[f"comfy_{name}"](model, x, sigmas)
        ours = getattr(KS, f"sample_{name}")(model, x, sigmas, disable=True)
    assert rel_err(ours, theirs) < 1e-10
