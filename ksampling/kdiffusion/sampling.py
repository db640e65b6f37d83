"""``k_diffusion.sampling`` on ksampling, with ComfyUI's additions: a real module whose
attributes callers patch as they patch k-diffusion's (see :mod:`ksampling.kdiffusion`).

Every default noise draw looks up this module's ``torch`` attribute at call time, so
A1111's ``k_diffusion.sampling.torch = TorchHijack(p)`` works here unchanged
(``ksampling.kdiffusion.sampling.torch = ...``): its ``randn_like`` then gives every draw.
"""

from __future__ import annotations

import inspect
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch  # looked up at call time by every default noise draw: callers may replace it
from torch import nn

from .. import schedules as _schedules
from ..samplers import available as _available_solvers
from ..samplers import brownian as _brownian
from ..samplers import info as _solver_info
from ..samplers.common import ancestral_step as _ancestral_step
from ..samplers.dpm import PIDStepSizeController
from ..samplers.loop import sample as _sample
from ..samplers.loop import validate_sigmas as _validate_sigmas
from .utils import append_dims

try:  # k-diffusion's Brownian tree, for the same numbers from the same seeds
    import torchsde as _torchsde
except ImportError:  # pragma: no cover - depends on the environment
    _torchsde = None

__all__ = [
    "append_zero",
    "get_sigmas_karras",
    "get_sigmas_exponential",
    "get_sigmas_polyexponential",
    "get_sigmas_vp",
    "get_sigmas_laplace",
    "to_d",
    "get_ancestral_step",
    "default_noise_sampler",
    "BatchedBrownianTree",
    "BrownianTreeNoiseSampler",
    "linear_multistep_coeff",
    "log_likelihood",
    "sample_dpm_fast",
    "sample_dpm_adaptive",
    "DPMSolver",
    "PIDStepSizeController",
    "SAMPLERS",
    "KSAMPLER_NAMES",
]


# -- helpers of k_diffusion.sampling ------------------------------------------------------------
def append_zero(x):
    """``x`` with a 0 appended (the final sigma of a grid)."""
    return torch.cat([x, x.new_zeros([1])])


def to_d(x, sigma, denoised):
    """The Karras ODE derivative dx/dσ = (x − D(x; σ)) / σ; ``sigma`` has shape [B]."""
    return (x - denoised) / append_dims(sigma, x.ndim)


def get_ancestral_step(sigma_from, sigma_to, eta=1.0):
    """(σ_down, σ_up) of an ancestral step σ_from → σ_to with σ_down² + σ_up² = σ_to²
    (:func:`ksampling.samplers.common.ancestral_step`). Like k-diffusion it accepts floats or
    0-d tensors and returns tensors when given tensors (this helper is for callers' own code;
    the samplers compute it on the host before the loop). A step towards more noise
    (σ_to > σ_from) has no ancestral split and is a ``ValueError``."""
    if not eta:
        return sigma_to, 0.0
    sigma_from_value, sigma_to_value, eta_value = float(sigma_from), float(sigma_to), float(eta)
    for name, value in (("sigma_from", sigma_from_value), ("sigma_to", sigma_to_value)):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"get_ancestral_step: {name} must be finite and >= 0, got {value}")
    if sigma_to_value > sigma_from_value:
        raise ValueError(
            f"get_ancestral_step: sigma_to ({sigma_to_value}) must not exceed sigma_from ({sigma_from_value}); "
            "an ancestral step goes towards lower noise"
        )
    if sigma_from_value == 0:
        return sigma_to, 0.0
    down, up = _ancestral_step(sigma_from_value, sigma_to_value, eta_value)
    for ref in (sigma_from, sigma_to):
        if isinstance(ref, torch.Tensor):
            return ref.new_tensor(down), ref.new_tensor(up)
    return down, up


def default_noise_sampler(x, seed=None):
    """N(0, I) noise like ``x`` for every step.

    ``seed=None``: k-diffusion's default, a fresh ``torch.randn_like(x)`` from the **global**
    RNG through this module's ``torch`` attribute (so A1111's patched ``torch`` controls it).
    With a ``seed``: ComfyUI's, a generator on ``x``'s device seeded with ``seed`` (``seed + 1``
    on the CPU, as ComfyUI does, so that it does not repeat the initial latent noise drawn
    from ``seed``) and ``torch.randn(x.size(), generator=...)``.
    """
    if seed is None:
        return lambda sigma, sigma_next: torch.randn_like(x)
    if x.device == torch.device("cpu"):
        seed += 1
    generator = torch.Generator(device=x.device)
    generator.manual_seed(seed)
    return lambda sigma, sigma_next: torch.randn(
        x.size(), dtype=x.dtype, layout=x.layout, device=x.device, generator=generator
    )


def _global_seed():
    # k-diffusion's way of seeding a Brownian tree when no seed is given.
    return torch.randint(0, 2**63 - 1, []).item()


def _sorted(a, b):
    return (a, b, 1) if a < b else (b, a, -1)


class BatchedBrownianTree:
    """k-diffusion's ``BatchedBrownianTree(x, t0, t1, seed=None, **kwargs)``: W(t1) − W(t0) of
    a Brownian motion shaped like ``x``; one tree per batch item when ``seed`` is a list.

    With torchsde installed it is k-diffusion's (one ``torchsde.BrownianTree`` per seed), so the
    same seeds give k-diffusion's numbers; without it, ksampling's own tree
    (:class:`ksampling.samplers.brownian.BatchedBrownianTree`, different numbers). ``seed=None``
    draws the seed from the global RNG, as k-diffusion does. ``cpu=True`` (ComfyUI's option)
    keeps the tree on the CPU and moves each increment to ``x``'s device; by default the tree
    lives on ``x``'s device, as in k-diffusion.
    """

    def __init__(self, x, t0, t1, seed=None, **kwargs):
        cpu = bool(kwargs.pop("cpu", False))
        if seed is None:
            seed = _global_seed()
        try:  # k-diffusion's test: a seed with a length is one seed per batch item
            len(seed)
            self.batched = True
        except TypeError:
            self.batched = False
        if self.batched and len(seed) != x.shape[0]:
            raise ValueError(f"seed: a list of seeds needs one per batch item ({x.shape[0]}), got {len(seed)}")
        self.device, self.dtype, self.cpu = x.device, x.dtype, cpu
        if _torchsde is None:
            self._fallback = _brownian.BatchedBrownianTree(x, t0, t1, seed=seed)
            return
        self._fallback = None
        t0, t1, self.sign = _sorted(torch.as_tensor(t0), torch.as_tensor(t1))
        w0 = kwargs.pop("w0", None)
        w0 = torch.zeros_like(x) if w0 is None else w0
        if self.batched:
            w0 = w0[0]
        seeds = list(seed) if self.batched else [seed]
        if cpu:
            t0, w0, t1 = t0.detach().cpu(), w0.detach().cpu(), t1.detach().cpu()
        self.trees = [_torchsde.BrownianTree(t0, w0, t1, entropy=s, **kwargs) for s in seeds]

    def __call__(self, t0, t1):
        if self._fallback is not None:
            return self._fallback(t0, t1)
        t0, t1, sign = _sorted(torch.as_tensor(t0), torch.as_tensor(t1))
        if self.cpu:
            t0, t1 = t0.detach().cpu().float(), t1.detach().cpu().float()
        w = torch.stack([tree(t0, t1) for tree in self.trees]) * (self.sign * sign)
        if self.cpu:
            w = w.to(device=self.device, dtype=self.dtype)
        return w if self.batched else w[0]


class BrownianTreeNoiseSampler:
    """``BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed=None, transform=lambda x: x,
    cpu=False)`` (k-diffusion's, with ComfyUI's ``cpu``): N(0, I) noise for the step
    σ → σ_next from Brownian increments, ``(W(t1) − W(t0)) / √|t1 − t0|`` with
    ``t = transform(σ)``, consistent across step counts. ``seed`` is an int or one int per
    batch item (A1111's per-image seeds); ``None`` draws it from the global RNG.

    Sigmas given as Python floats are read in the dtype of ``sigma_min`` (k-diffusion queries
    its tree with the grid's own tensors), so a float64 grid queries the same times as
    k-diffusion. ksampling's :func:`ksampling.sample` keeps its own tree by default
    (:class:`ksampling.samplers.brownian.BrownianTreeNoiseSampler`).
    """

    def __init__(self, x, sigma_min, sigma_max, seed=None, transform=lambda x: x, cpu=False):
        self.transform = transform
        sigma_min, sigma_max = torch.as_tensor(sigma_min), torch.as_tensor(sigma_max)
        self._time_dtype = sigma_min.dtype if sigma_min.is_floating_point() else torch.get_default_dtype()
        t0, t1 = self.transform(sigma_min), self.transform(sigma_max)
        self.tree = BatchedBrownianTree(x, t0, t1, seed, cpu=cpu)

    def _time(self, sigma):
        if not isinstance(sigma, torch.Tensor):
            sigma = torch.as_tensor(sigma, dtype=self._time_dtype)
        return self.transform(sigma)

    def __call__(self, sigma, sigma_next):
        t0, t1 = self._time(sigma), self._time(sigma_next)
        return self.tree(t0, t1) / (t1 - t0).abs().sqrt()


# -- schedules: thin over ksampling.schedules ---------------------------------------------------
def _in_default_dtype(sigmas):
    # k-diffusion returns tensors of torch's default dtype (float32); ksampling computes in
    # float64 and rounds once, so the values are the float64 ones rounded, not float32's.
    return sigmas.to(torch.get_default_dtype())


def get_sigmas_karras(n, sigma_min, sigma_max, rho=7.0, device="cpu"):
    """Karras et al. (2022) schedule: ``n`` sigmas from ``sigma_max`` to ``sigma_min`` evenly
    spaced in σ^(1/ρ), then 0 (see :func:`ksampling.schedules.karras`)."""
    return _in_default_dtype(_schedules.karras(n, sigma_min, sigma_max, rho=rho, device=device))


def get_sigmas_exponential(n, sigma_min, sigma_max, device="cpu"):
    """``n`` sigmas evenly spaced in log σ, then 0 (see :func:`ksampling.schedules.exponential`)."""
    return _in_default_dtype(_schedules.exponential(n, sigma_min, sigma_max, device=device))


def get_sigmas_polyexponential(n, sigma_min, sigma_max, rho=1.0, device="cpu"):
    """Polynomial in log σ, then 0 (see :func:`ksampling.schedules.polyexponential`)."""
    return _in_default_dtype(_schedules.polyexponential(n, sigma_min, sigma_max, rho=rho, device=device))


def get_sigmas_vp(n, beta_d=19.9, beta_min=0.1, eps_s=1e-3, device="cpu"):
    """The continuous VP schedule of Song et al. (2021), then 0 (see :func:`ksampling.schedules.vp`)."""
    return _in_default_dtype(_schedules.vp(n, beta_d=beta_d, beta_min=beta_min, eps_s=eps_s, device=device))


def get_sigmas_laplace(n, sigma_min, sigma_max, mu=0.0, beta=0.5, device="cpu"):
    """ComfyUI's Laplace schedule (Hang et al. 2024): ``n`` sigmas, **no** final 0, as ComfyUI's
    (see :func:`ksampling.schedules.laplace`, which appends the 0)."""
    return _in_default_dtype(_schedules.laplace(n, sigma_min, sigma_max, mu=mu, beta=beta, device=device)[:-1])


# -- the samplers: each one is a call of ksampling.sample -----------------------------------------
def _progress(disable):
    # tqdm's disable=None means "only on a terminal"; ksampling's progress is a plain bool.
    if disable is None:
        return bool(getattr(sys.stderr, "isatty", lambda: False)())
    return not disable


def _run(solver, model, x, sigmas, extra_args, callback, disable, noise_sampler=None, final_step="solver", **options):
    return _sample(
        model,
        x,
        sigmas,
        solver,
        extra_args=extra_args,
        callback=callback,
        progress=_progress(disable),
        noise_sampler=noise_sampler,
        final_step=final_step,
        **options,
    )


def _seed(extra_args):
    """ComfyUI passes the sampler's seed in ``extra_args['seed']`` (and the model ignores it)."""
    return extra_args.get("seed") if isinstance(extra_args, Mapping) else None


def _brownian_default(x, sigmas, seed, cpu):
    # k-diffusion/ComfyUI: BrownianTreeNoiseSampler(x, min non-zero sigma, max sigma) with the
    # grid's dtype. One host transfer of the grid, before the loop.
    values = _validate_sigmas(sigmas, x)
    positive = [s for s in values if s > 0]
    if min(positive) == max(values):
        # the grid is [σ, 0]: a single denoising step, which draws no noise (k-diffusion
        # would build a tree on an empty interval here, and crash later).
        return default_noise_sampler(x, seed)
    dtype = sigmas.dtype if isinstance(sigmas, torch.Tensor) else torch.float64
    return BrownianTreeNoiseSampler(
        x, torch.tensor(min(positive), dtype=dtype), torch.tensor(max(values), dtype=dtype), seed=seed, cpu=cpu
    )


class _UncondCapture:
    """A model for the CFG++ solvers, which need the unconditional denoised output too.

    ksampling's solvers call ``model.denoise_with_uncond(x, sigma, **extra_args)``. A model that
    has that method (ksampling's guidance wrapper) is used as it is; any other model is called
    the way ComfyUI's CFG++ samplers call theirs: a post-CFG function is appended to
    ``extra_args['model_options']['sampler_post_cfg_function']`` (and
    ``disable_cfg1_optimization`` set), and the model's guidance code hands it
    ``{'denoised', 'uncond_denoised', ...}``. A model that never calls the hook cannot give
    the unconditional output: a ``TypeError`` says so.
    """

    def __init__(self, model):
        self.model = model

    def __call__(self, x, sigma, **extra_args):
        return self.model(x, sigma, **extra_args)

    def denoise_with_uncond(self, x, sigma, **extra_args):
        if hasattr(self.model, "denoise_with_uncond"):
            return self.model.denoise_with_uncond(x, sigma, **extra_args)
        captured = []

        def post_cfg_function(args):
            captured.append(args["uncond_denoised"])
            return args["denoised"]

        model_options = dict(extra_args.get("model_options") or {})
        model_options["sampler_post_cfg_function"] = list(model_options.get("sampler_post_cfg_function", [])) + [
            post_cfg_function
        ]
        model_options["disable_cfg1_optimization"] = True
        denoised = self.model(x, sigma, **{**extra_args, "model_options": model_options})
        if not captured:
            raise TypeError(
                "CFG++ samplers need the unconditional denoised output: pass a ksampling guidance "
                "wrapper (with denoise_with_uncond), or a model that calls the functions in "
                "extra_args['model_options']['sampler_post_cfg_function'] as ComfyUI's CFG does"
            )
        return denoised, captured[-1]


def _comfy_noise_scaler(noise_scaler):
    # ComfyUI's er_sde noise_scaler maps a tensor of λ = σ/α to a tensor; ksampling's takes floats.
    return lambda value: float(noise_scaler(torch.tensor(value, dtype=torch.float64)))


_CHURN = (("s_churn", 0.0), ("s_tmin", 0.0), ("s_tmax", float("inf")), ("s_noise", 1.0))
_ANCESTRAL = (("eta", 1.0), ("s_noise", 1.0), ("noise_sampler", None))
_SA_SOLVER = (("tau_func", None), ("s_noise", 1.0), ("noise_sampler", None), ("predictor_order", 3), ("corrector_order", 4))


@dataclass(frozen=True)
class Sampler:
    """One ``sample_<name>`` of the drop-in: which ksampling solver runs it and how.

    ``params`` are the keyword parameters after ``(model, x, sigmas, extra_args, callback,
    disable)`` with their defaults (ComfyUI's signature); ``fixed`` options this name sets
    on the solver; ``rename``/``convert`` map a parameter to the solver's option; ``switch``
    names a boolean parameter that, when true, selects another solver (ComfyUI's
    ``sa_solver(use_pece=True)`` is ``sa_solver_pece``); ``final_step`` is
    :func:`ksampling.sample`'s policy for the step to σ = 0.
    ``noise`` is the default noise when no ``noise_sampler`` is given: ``"none"``,
    ``"global"`` (``torch.randn_like`` through this module, k-diffusion's churn),
    ``"seeded"`` (:func:`default_noise_sampler` with ``extra_args['seed']``), ``"brownian"``
    (a Brownian tree seeded with ``extra_args['seed']``, on the CPU when that seed is given, as
    ComfyUI's; on ``x``'s device otherwise, as k-diffusion's) or ``"brownian_device"``
    (always on ``x``'s device: ComfyUI's ``_gpu`` samplers). ``cfg_pp`` marks the CFG++
    samplers, whose model must give the unconditional output (:class:`_UncondCapture`).
    """

    solver: str
    params: tuple = ()
    fixed: Mapping = field(default_factory=dict)
    noise: str = "none"
    rename: Mapping = field(default_factory=dict)
    convert: Mapping = field(default_factory=dict)
    switch: Mapping = field(default_factory=dict)
    final_step: str = "solver"
    cfg_pp: bool = False
    disable_default: object = None
    source: str = "ComfyUI"


#: Every sampler of ComfyUI's ``KSAMPLER_NAMES`` (and k-diffusion's, and A1111's Restart), by
#: name: ``sample_<name>`` is built from its entry by :func:`_make_sampler`.
SAMPLERS: dict[str, Sampler] = {
    "euler": Sampler("euler", _CHURN, noise="global", source="k-diffusion"),
    "euler_cfg_pp": Sampler("euler_cfg_pp", cfg_pp=True),
    "euler_ancestral": Sampler("euler_ancestral", _ANCESTRAL, noise="seeded", source="k-diffusion"),
    "euler_ancestral_cfg_pp": Sampler("euler_ancestral_cfg_pp", _ANCESTRAL, noise="seeded", cfg_pp=True),
    "heun": Sampler("heun", _CHURN, noise="global", source="k-diffusion"),
    "heunpp2": Sampler("heunpp2", _CHURN, noise="global"),
    "dpm_2": Sampler("dpm_2", _CHURN, noise="global", source="k-diffusion"),
    "dpm_2_ancestral": Sampler("dpm_2_ancestral", _ANCESTRAL, noise="seeded", source="k-diffusion"),
    "lms": Sampler("lms", (("order", 4),), source="k-diffusion"),
    "dpmpp_2s_ancestral": Sampler("dpmpp_2s_ancestral", _ANCESTRAL, noise="seeded", source="k-diffusion"),
    "dpmpp_2s_ancestral_cfg_pp": Sampler("dpmpp_2s_ancestral_cfg_pp", _ANCESTRAL, noise="seeded", cfg_pp=True),
    "dpmpp_sde": Sampler("dpmpp_sde", _ANCESTRAL + (("r", 0.5),), noise="brownian", source="k-diffusion"),
    "dpmpp_sde_gpu": Sampler("dpmpp_sde", _ANCESTRAL + (("r", 0.5),), noise="brownian_device"),
    "dpmpp_2m": Sampler("dpmpp_2m", source="k-diffusion"),
    "dpmpp_2m_cfg_pp": Sampler("dpmpp_2m_cfg_pp", cfg_pp=True),
    "dpmpp_2m_sde": Sampler("dpmpp_2m_sde", _ANCESTRAL + (("solver_type", "midpoint"),), noise="brownian", source="k-diffusion"),
    "dpmpp_2m_sde_gpu": Sampler("dpmpp_2m_sde", _ANCESTRAL + (("solver_type", "midpoint"),), noise="brownian_device"),
    "dpmpp_2m_sde_heun": Sampler("dpmpp_2m_sde", _ANCESTRAL + (("solver_type", "heun"),), noise="brownian"),
    "dpmpp_2m_sde_heun_gpu": Sampler("dpmpp_2m_sde", _ANCESTRAL + (("solver_type", "heun"),), noise="brownian_device"),
    "dpmpp_3m_sde": Sampler("dpmpp_3m_sde", _ANCESTRAL, noise="brownian", source="k-diffusion"),
    "dpmpp_3m_sde_gpu": Sampler("dpmpp_3m_sde", _ANCESTRAL, noise="brownian_device"),
    # ComfyUI's DDPM step uses the posterior ("small") variance β̃.
    "ddpm": Sampler("ddpm", (("noise_sampler", None),), fixed={"variance": "small"}, noise="seeded"),
    "lcm": Sampler("lcm", (("noise_sampler", None), ("s_noise", 1.0), ("s_noise_end", None), ("noise_clip_std", 0.0)),
                   noise="seeded"),
    "ipndm": Sampler("ipndm", (("max_order", 4),)),
    "ipndm_v": Sampler("ipndm_v", (("max_order", 4),)),
    # ComfyUI's DEIS (zju-pi's diff-sampler): deis_mode="rhoab" integrates ε's Lagrange
    # polynomial in σ, ksampling's deis(variable="rho"). Its default "tab" puts the polynomial in
    # the time of a VP schedule fitted to σ ∈ [0.002, 80], which ksampling does not have: it runs
    # as "rhoab" (documented in docs/migrating.md).
    "deis": Sampler("deis", (("max_order", 3), ("deis_mode", "tab")),
                    rename={"max_order": "order", "deis_mode": "variable"},
                    convert={"deis_mode": lambda mode: {"tab": "rho", "rhoab": "rho"}.get(mode, mode)}),
    "res_multistep": Sampler("res_multistep", (("s_noise", 1.0), ("noise_sampler", None)), noise="seeded"),
    "res_multistep_cfg_pp": Sampler("res_multistep_cfg_pp", (("s_noise", 1.0), ("noise_sampler", None)), noise="seeded", cfg_pp=True),
    "res_multistep_ancestral": Sampler("res_multistep_ancestral", _ANCESTRAL, noise="seeded"),
    "res_multistep_ancestral_cfg_pp": Sampler("res_multistep_ancestral_cfg_pp", _ANCESTRAL, noise="seeded", cfg_pp=True),
    # ComfyUI's gradient estimation ends with x <- D(x; σ_min), not an extrapolated step to 0
    "gradient_estimation": Sampler("gradient_estimation", (("ge_gamma", 2.0),), final_step="denoise"),
    "gradient_estimation_cfg_pp": Sampler("gradient_estimation_cfg_pp", (("ge_gamma", 2.0),), cfg_pp=True,
                                          final_step="denoise"),
    "er_sde": Sampler("er_sde", (("s_noise", 1.0), ("noise_sampler", None), ("noise_scaler", None), ("max_stage", 3)),
                      noise="seeded", rename={"noise_scaler": "noise_scale"},
                      convert={"noise_scaler": lambda f: "default" if f is None else _comfy_noise_scaler(f)}),
    "seeds_2": Sampler("seeds_2", _ANCESTRAL + (("r", 0.5), ("solver_type", "phi_1")), noise="seeded"),
    "seeds_3": Sampler("seeds_3", _ANCESTRAL + (("r_1", 1.0 / 3), ("r_2", 2.0 / 3)), noise="seeded"),
    "sa_solver": Sampler("sa_solver", _SA_SOLVER + (("use_pece", False), ("simple_order_2", False)), noise="seeded",
                         switch={"use_pece": "sa_solver_pece"}, disable_default=False),
    "sa_solver_pece": Sampler("sa_solver_pece", _SA_SOLVER + (("simple_order_2", False),), noise="seeded", disable_default=False),
    # A1111's Restart sampler (sd_samplers_extra.restart_sampler): not a ComfyUI name.
    "restart": Sampler("restart", (("s_noise", 1.0), ("restart_list", None)), noise="global", source="A1111"),
}

#: ComfyUI's ``comfy.samplers.KSAMPLER_NAMES``, in its order.
KSAMPLER_NAMES = (
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "dpm_2",
    "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp",
    "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu",
    "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm",
    "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde", "seeds_2",
    "seeds_3", "sa_solver", "sa_solver_pece",
)


def _default_noise(entry, x, sigmas, seed):
    if entry.noise == "global":
        return default_noise_sampler(x)
    if entry.noise == "seeded":
        return default_noise_sampler(x, seed)
    if entry.noise in ("brownian", "brownian_device"):
        return _brownian_default(x, sigmas, seed, cpu=entry.noise == "brownian" and seed is not None)
    return None


def _solver_of(entry, arguments):
    for param, other in entry.switch.items():
        if arguments[param]:
            return other
    return entry.solver


def _solver_options(name, entry, solver, arguments):
    """The solver's options from the call's arguments: renamed, converted, and checked
    against what the registered solver accepts (a parameter it does not know is dropped at
    ComfyUI's default and an error otherwise)."""
    accepted = _solver_info(solver)["options"]
    options = {}
    for param, default in entry.params:
        if param == "noise_sampler" or param in entry.switch:
            continue
        value = arguments[param]
        option = entry.rename.get(param, param)
        if option not in accepted:
            if value is default or value == default:
                continue
            raise TypeError(f"sample_{name}: {param}={value!r} is not supported by ksampling's {solver!r} solver")
        options[option] = entry.convert[param](value) if param in entry.convert else value
    for option, value in entry.fixed.items():
        if option in accepted:
            options[option] = value
    return options


def _make_sampler(name, entry):
    parameters = [
        inspect.Parameter("model", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("x", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("sigmas", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("extra_args", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None),
        inspect.Parameter("callback", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None),
        inspect.Parameter("disable", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=entry.disable_default),
    ] + [inspect.Parameter(p, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=d) for p, d in entry.params]
    signature = inspect.Signature(parameters)

    def sampler(*args, **kwargs):
        arguments = signature.bind(*args, **kwargs)
        arguments.apply_defaults()
        a = arguments.arguments
        solver = _solver_of(entry, a)
        if solver not in _available_solvers():
            raise NotImplementedError(
                f"sample_{name} runs ksampling's {solver!r} solver, which this installation does not register"
            )
        extra_args = {} if a["extra_args"] is None else a["extra_args"]
        model = _UncondCapture(a["model"]) if entry.cfg_pp else a["model"]
        noise_sampler = a.get("noise_sampler")
        if noise_sampler is None:
            noise_sampler = _default_noise(entry, a["x"], a["sigmas"], _seed(extra_args))
        options = _solver_options(name, entry, solver, a)
        return _run(solver, model, a["x"], a["sigmas"], extra_args, a["callback"], a["disable"],
                    noise_sampler, entry.final_step, **options)

    fixed = ", ".join(f"{k}={v!r}" for k, v in entry.fixed.items())
    sampler.__name__ = sampler.__qualname__ = f"sample_{name}"
    sampler.__module__ = __name__
    sampler.__signature__ = signature
    sampler.__doc__ = (
        f"{entry.source}'s ``sample_{name}`` on ksampling's ``{entry.solver}`` solver"
        + (f" ({fixed})" if fixed else "")
        + f"; default noise: {entry.noise}"
        + (" (seeded from ``extra_args['seed']`` when given)" if entry.noise.startswith(("seeded", "brownian")) else "")
        + (". A CFG++ sampler: the model must give the unconditional output (see ``_UncondCapture``)." if entry.cfg_pp else ".")
        + f"\n\nSee :func:`ksampling.samplers.info` (``{entry.solver!r}``) for the method."
    )
    return sampler


for _name, _entry in SAMPLERS.items():
    globals()[f"sample_{_name}"] = _make_sampler(_name, _entry)
    __all__.append(f"sample_{_name}")
del _name, _entry


def linear_multistep_coeff(order, t, i, j):
    """Weight of the derivative at ``t[i - j]`` in the LMS step ``t[i] -> t[i + 1]``: the
    integral over the step of the Lagrange basis polynomial through ``t[i], …, t[i-order+1]``
    (:func:`ksampling.samplers.lms.lms_coefficients`, exact instead of k-diffusion's
    ``scipy.integrate.quad``)."""
    from ..samplers.lms import lms_coefficients

    if order - 1 > i:
        raise ValueError(f"Order {order} too high for step {i}")
    values = [float(v) for v in t]
    return lms_coefficients(values, i, order)[j]


def _positive_scalar(name, value):
    value = float(value)
    if not value > 0:
        raise ValueError(f"{name} must be > 0 (sigma_min and sigma_max must not be 0), got {value}")
    return value


def _with_t(callback):
    """k-diffusion's DPM-Solver callbacks also carry t = −log σ and t_up = −log σ̂."""
    if callback is None:
        return None

    def wrapped(info):
        callback({**info, "t": -info["sigma"].log(), "t_up": -torch.as_tensor(info["sigma_hat"]).log()})

    return wrapped


def sample_dpm_fast(model, x, sigma_min, sigma_max, n, extra_args=None, callback=None, disable=None, eta=0.0, s_noise=1.0, noise_sampler=None):
    """DPM-Solver-fast from ``sigma_max`` to ``sigma_min`` with exactly ``n`` model calls
    (solver ``dpm_fast``); ends at ``sigma_min``, as k-diffusion's."""
    sigma_min, sigma_max = _positive_scalar("sigma_min", sigma_min), _positive_scalar("sigma_max", sigma_max)
    noise_sampler = default_noise_sampler(x, _seed(extra_args)) if noise_sampler is None else noise_sampler
    sigmas = torch.tensor([sigma_max, sigma_min], dtype=torch.float64, device=x.device)
    return _run("dpm_fast", model, x, sigmas, extra_args, _with_t(callback), disable, noise_sampler,
                nfe=n, eta=eta, s_noise=s_noise)


def sample_dpm_adaptive(model, x, sigma_min, sigma_max, extra_args=None, callback=None, disable=None, order=3, rtol=0.05, atol=0.0078, h_init=0.05, pcoeff=0.0, icoeff=1.0, dcoeff=0.0, accept_safety=0.81, eta=0.0, s_noise=1.0, noise_sampler=None, return_info=False):
    """DPM-Solver-12/23 with adaptive steps from ``sigma_max`` to ``sigma_min`` (solver
    ``dpm_adaptive``); ``return_info=True`` also returns k-diffusion's
    ``{'steps', 'nfe', 'n_accept', 'n_reject'}``.

    The callback is called once per attempt, after it, with k-diffusion's keys ``x`` (after
    the attempt), ``i``, ``sigma``/``t`` (where the solution now is), ``sigma_hat``/``t_up``,
    ``denoised`` (at the attempt's start), the controller's ``error`` (a 0-d tensor: the
    attempt's scaled error estimate) and ``h`` (the step size it proposes next), and the
    running ``steps``, ``nfe``, ``n_accept``, ``n_reject``.
    """
    from ..samplers.dpm import DPMAdaptive

    sigma_min, sigma_max = _positive_scalar("sigma_min", sigma_min), _positive_scalar("sigma_max", sigma_max)
    noise_sampler = default_noise_sampler(x, _seed(extra_args)) if noise_sampler is None else noise_sampler
    sigmas = torch.tensor([sigma_max, sigma_min], dtype=torch.float64, device=x.device)
    nfe_per_attempt = order if order in (2, 3) else 3
    pending = []  # the attempt whose end is only known at the start of the next one
    counts = {"steps": 0, "nfe": 0, "n_accept": 0, "n_reject": 0}

    def finish(x_after, sigma_after):
        start = pending.pop()
        accepted = float(sigma_after) != float(start["sigma"])
        counts["steps"] += 1
        counts["nfe"] += nfe_per_attempt
        counts["n_accept" if accepted else "n_reject"] += 1
        t = -torch.as_tensor(sigma_after, dtype=torch.float64).log()
        callback({"x": x_after, "i": start["i"], "sigma": t.neg().exp(), "sigma_hat": t.neg().exp(),
                  "t": t, "t_up": t, "denoised": start["denoised"], "error": torch.tensor(solver.last_error),
                  "h": solver.last_h, **counts})

    def on_attempt(info):
        if pending:
            finish(info["x"], info["sigma"])
        pending.append(info)

    solver = DPMAdaptive(order=order, rtol=rtol, atol=atol, h_init=h_init, pcoeff=pcoeff, icoeff=icoeff,
                         dcoeff=dcoeff, accept_safety=accept_safety, eta=eta, s_noise=s_noise)
    x, run_info = _run(solver, model, x, sigmas, extra_args, None if callback is None else on_attempt, disable,
                       noise_sampler, return_info=True)
    if pending:
        finish(x, sigma_min)
    if return_info:
        return x, {"steps": run_info.steps, "nfe": run_info.nfe, "n_accept": run_info.accepted, "n_reject": run_info.rejected}
    return x


@torch.no_grad()
def log_likelihood(model, x, sigma_min, sigma_max, extra_args=None, atol=1e-4, rtol=1e-4):
    """log p(x) under the probability-flow ODE (Song et al. 2021, "Score-Based Generative
    Modeling through SDEs", App. D.2), as k-diffusion computes it: integrate
    ``dx/dσ = (x − D)/σ`` from ``sigma_min`` to ``sigma_max`` together with
    ``d log p/dσ = −div f``, the divergence estimated by Hutchinson's trick with one Rademacher
    vector v from the **global** RNG (k-diffusion's contract), with dopri5 at ``atol``/``rtol``;
    then add the N(0, σ_max² I) prior. Returns ``(log_likelihood [B], {'fevals': n})``.

    Needs torchdiffeq (``pip install ksampling[bench]`` or ``pip install torchdiffeq``).
    """
    try:
        from torchdiffeq import odeint
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("log_likelihood needs torchdiffeq: pip install ksampling[bench] (or pip install torchdiffeq)") from exc
    sigma_min, sigma_max = _positive_scalar("sigma_min", sigma_min), _positive_scalar("sigma_max", sigma_max)
    if not sigma_min < sigma_max:
        raise ValueError(
            f"log_likelihood: sigma_min ({sigma_min}) must be < sigma_max ({sigma_max}); the ODE is integrated "
            "from the data end (sigma_min) to the prior (sigma_max)"
        )
    extra_args = {} if extra_args is None else extra_args
    batch = x.shape[0]
    probe = torch.randint_like(x, 2) * 2 - 1
    fevals = 0

    def augmented(sigma, state):
        nonlocal fevals
        with torch.enable_grad():
            x_t = state[0].detach().requires_grad_()
            denoised = model(x_t, sigma * x_t.new_ones([batch]), **extra_args)
            drift = (x_t - denoised) / sigma
            fevals += 1
            (jvp,) = torch.autograd.grad((drift * probe).sum(), x_t)
        # E[vᵀ J v] = tr J: the divergence of the drift
        return drift.detach(), (probe * jvp).flatten(1).sum(1)

    times = x.new_tensor([float(sigma_min), float(sigma_max)])
    solution = odeint(augmented, (x, x.new_zeros([batch])), times, atol=atol, rtol=rtol, method="dopri5")
    latent, delta_ll = solution[0][-1], solution[1][-1]
    prior = torch.distributions.Normal(0, float(sigma_max)).log_prob(latent).flatten(1).sum(1)
    return prior + delta_ll, {"fevals": fevals}


class DPMSolver(nn.Module):
    """k-diffusion's ``DPMSolver(model, extra_args=None, eps_callback=None, info_callback=None)``
    (Lu et al. 2022, arXiv:2206.00927) on ksampling's DPM-Solver.

    The step methods take and return k-diffusion's ``eps_cache`` dict (stages ``'eps'``,
    ``'eps_r1'``, ``'eps_r2'``) and call :func:`ksampling.samplers.dpm.dpm_solver_1` / ``_2`` /
    ``_3``; :meth:`dpm_solver_fast` and :meth:`dpm_solver_adaptive` run the ``dpm_fast`` /
    ``dpm_adaptive`` solvers. Times are t = −log σ (0-d tensors or floats). Unlike
    k-diffusion's, the whole-run methods integrate only towards lower noise (t_end > t_start).
    """

    def __init__(self, model, extra_args=None, eps_callback=None, info_callback=None):
        super().__init__()
        self.model = model
        self.extra_args = {} if extra_args is None else extra_args
        self.eps_callback = eps_callback
        self.info_callback = info_callback

    def t(self, sigma):
        return -sigma.log()

    def sigma(self, t):
        return t.neg().exp()

    def eps(self, eps_cache, key, x, t, *args, **kwargs):
        """ε = (x − D(x; σ(t)))/σ(t), from the cache when this stage was computed already."""
        if key in eps_cache:
            return eps_cache[key], eps_cache
        sigma = math.exp(-float(t))
        denoised = self.model(x, x.new_full([x.shape[0]], sigma), *args, **self.extra_args, **kwargs)
        eps = (x - denoised) / sigma
        if self.eps_callback is not None:
            self.eps_callback()
        return eps, {key: eps, **eps_cache}

    def _stepper(self, eps_cache):
        # ksampling's DPM-Solver asks for ε stage by stage, in order; k-diffusion names them.
        cache = dict(eps_cache)
        names = iter(("eps", "eps_r1", "eps_r2"))

        def eps_at(x, lam):
            nonlocal cache
            eps, cache = self.eps(cache, next(names), x, lam)
            return eps

        return eps_at, lambda: cache

    def _run_step(self, update, x, t, t_next, eps_cache, **kwargs):
        from ..samplers import dpm

        eps_at, cache = self._stepper({} if eps_cache is None else eps_cache)
        x_next = getattr(dpm, update)(eps_at, x, float(t), float(t_next), **kwargs)
        return x_next, cache()

    def dpm_solver_1_step(self, x, t, t_next, eps_cache=None):
        """DPM-Solver-1 from t to t_next; returns ``(x_next, eps_cache)``."""
        return self._run_step("dpm_solver_1", x, t, t_next, eps_cache)

    def dpm_solver_2_step(self, x, t, t_next, r1=1 / 2, eps_cache=None):
        """DPM-Solver-2 (intermediate point t + r1·h); returns ``(x_next, eps_cache)``."""
        return self._run_step("dpm_solver_2", x, t, t_next, eps_cache, r1=r1)

    def dpm_solver_3_step(self, x, t, t_next, r1=1 / 3, r2=2 / 3, eps_cache=None):
        """DPM-Solver-3; returns ``(x_next, eps_cache)``."""
        return self._run_step("dpm_solver_3", x, t, t_next, eps_cache, r1=r1, r2=r2)

    def _counted_model(self):
        def model(x, sigma, **extra_args):
            out = self.model(x, sigma, **extra_args)
            if self.eps_callback is not None:
                self.eps_callback()
            return out

        return model

    def _info(self):
        if self.info_callback is None:
            return None

        def callback(info):
            self.info_callback({k: v for k, v in info.items() if k not in ("sigma", "sigma_hat")})

        return callback

    def _sigmas(self, t_start, t_end):
        t_start, t_end = float(t_start), float(t_end)
        if not t_end > t_start:
            raise ValueError("t_end must be > t_start (integration towards lower noise)")
        return math.exp(-t_end), math.exp(-t_start)

    def dpm_solver_fast(self, x, t_start, t_end, nfe, eta=0.0, s_noise=1.0, noise_sampler=None):
        """DPM-Solver-fast with exactly ``nfe`` model calls (solver ``dpm_fast``)."""
        sigma_min, sigma_max = self._sigmas(t_start, t_end)
        return sample_dpm_fast(self._counted_model(), x, sigma_min, sigma_max, nfe, extra_args=self.extra_args,
                               callback=self._info(), disable=True, eta=eta, s_noise=s_noise, noise_sampler=noise_sampler)

    def dpm_solver_adaptive(self, x, t_start, t_end, order=3, rtol=0.05, atol=0.0078, h_init=0.05, pcoeff=0.0, icoeff=1.0, dcoeff=0.0, accept_safety=0.81, eta=0.0, s_noise=1.0, noise_sampler=None):
        """DPM-Solver-12/23 with adaptive steps (solver ``dpm_adaptive``); returns ``(x, info)``."""
        sigma_min, sigma_max = self._sigmas(t_start, t_end)
        return sample_dpm_adaptive(
            self._counted_model(), x, sigma_min, sigma_max, extra_args=self.extra_args, callback=self._info(),
            disable=True, order=order, rtol=rtol, atol=atol, h_init=h_init, pcoeff=pcoeff, icoeff=icoeff,
            dcoeff=dcoeff, accept_safety=accept_safety, eta=eta, s_noise=s_noise, noise_sampler=noise_sampler,
            return_info=True,
        )
