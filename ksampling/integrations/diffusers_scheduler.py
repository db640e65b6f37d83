"""ksampling solvers inside diffusers pipelines: :class:`KSamplingScheduler` (the scheduler side
of :mod:`ksampling.integrations.diffusers`).

``pipe.scheduler = KSamplingScheduler.from_config(pipe.scheduler, solver="unipc")`` makes an
existing pipeline sample with a ksampling solver, on the grid the replaced scheduler would
have used.

**The grid is the replaced scheduler's.** The scheduler whose config is given (its *source*:
``DPMSolverMultistepScheduler``, ``DDIMScheduler``, ``FlowMatchEulerDiscreteScheduler``, ...)
is built from the config and asked for its timesteps and sigmas, so every option it honours
(``timestep_spacing``, ``steps_offset``, Karras / exponential / beta sigmas,
``final_sigmas_type``, zero terminal SNR, flow shift and ``mu``, ...) is honoured the same way.
The grid points' timesteps are the source's own; only the points the source never visits
(a midpoint of ``dpm_2``, a churned σ̂) are mapped from σ, the way the source maps σ to t.
The pipeline keeps the source's state: VP latents ``α x`` (DDIM, DDPM, PNDM, DPM-Solver, UniPC,
DEIS), VE latents ``x`` with ``scale_model_input`` dividing by √(σ²+1) (Euler, Heun, LMS,
KDPM2), EDM preconditioning (EDMEuler) or rectified-flow latents ``x/(1+σ)`` (FlowMatch).

**The ``sample`` given to ``step()`` is the state.** A solver step is run from the pipeline's
latents, so an edit between two steps (``callback_on_step_end``, inpainting's mask blend, an
img2img start from ``add_noise``, ``set_begin_index``) becomes the solver's state, exactly as
in diffusers' own schedulers. What an edit does to the rest of the solver state: the history of
a multistep solver (earlier denoised estimates D) is kept unchanged, as diffusers'
DPM-Solver / UniPC keep their ``model_outputs``; the new step starts from the edited x. An edit
of an intermediate point of a multi-call step (``heun``'s second call) changes where the model
is evaluated; the step's update starts from the step's own start point and uses the model's
slope (x − D)/σ found at the edited point, as diffusers' ``HeunDiscreteScheduler`` does. For a solver that adds noise before its first call
(churn), the edit is added to the step's start point.

Design: step-wise, no thread. Earlier versions ran :func:`ksampling.sample` in a worker thread
whose model call waited for the next ``step()``. That hid the solver's state from the
pipeline (edited latents never reached it), needed a finaliser to unwind abandoned runs, and
moved the solver onto another thread (thread-local autocast and CUDA streams). Now each
``step()`` drives the solver's own :meth:`~ksampling.samplers.base.Solver.step` directly: the
step runs until it asks for a model output that has not been given yet, which unwinds it
(:class:`_Pause`); the next ``step()`` replays it from its start with the outputs given so far
(and the noise drawn so far), restoring the solver's attributes first. Single-call steps (every
multistep solver) are never replayed; a step of k calls costs k-fold its arithmetic, nothing in
model calls. The solvers stay ordinary functions (no generator rewrite), and whatever the loop
does, a step does here the same way, so ``ksampling.sample`` and a pipeline agree.

The run's state is kept in float64 (float32 on MPS) whatever the latents' dtype: it makes the
infinite σ of a zero-terminal-SNR or flow schedule's first point (ᾱ = 0, flow t = 1) safe to
replace by a large finite one (:data:`SIGMA_INFINITY`), whose effect is O(1/σ) ≈ 1e-8.
"""

from __future__ import annotations

import math
import warnings
from collections import deque
from dataclasses import dataclass
from typing import Any, Mapping

import torch

try:
    import diffusers
    from diffusers.configuration_utils import ConfigMixin, register_to_config
    from diffusers.schedulers.scheduling_utils import SchedulerMixin
    from diffusers.utils import BaseOutput
except ImportError as _exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "ksampling.integrations.diffusers needs diffusers: pip install ksampling[diffusers]"
    ) from _exc

from ..denoisers.base import LearnedVariance
from ..denoisers.processes import VPDiscrete
from ..denoisers.wrappers import denoised_from_prediction
from ..samplers.base import Step, get as _get_solver, make_solver
from ..samplers.loop import Context, _make_noise, validate_sigmas
from ..samplers.noise import GaussianNoise
from .diffusers_model import PREDICTION_TYPES, _VPDiscreteLinearTime, flow_shift

__all__ = ["KSamplingScheduler", "KSamplingSchedulerOutput", "SOURCES", "SIGMA_INFINITY"]

#: stands for σ = ∞ (ᾱ = 0 of a zero-terminal-SNR schedule, t = 1 of a flow schedule)
SIGMA_INFINITY = 1e8

# How each supported source scheduler lays out its grid:
#   "sigmas"  : .sigmas (VE σ, ending in 0 or σ_min) and .timesteps, one per grid point
#   "repeated": .sigmas / .timesteps list grid points twice (Heun, KDPM2): the unique ones are the grid
#   "alphas"  : integer .timesteps only; σ from alphas_cumprod; a step goes from t to
#               t − T // n (DDIM, PNDM) or to the next timestep (DDPM)
#   "flow"    : FlowMatch: .sigmas are the flow times t ∈ [0, 1]
SOURCES = {
    "EulerDiscreteScheduler": ("sigmas", "ve", "euler"),
    "EulerAncestralDiscreteScheduler": ("sigmas", "ve", "euler_ancestral"),
    "LMSDiscreteScheduler": ("sigmas", "ve", "lms"),
    "HeunDiscreteScheduler": ("repeated", "ve", "heun"),
    "KDPM2DiscreteScheduler": ("repeated", "ve", "dpm_2"),
    "KDPM2AncestralDiscreteScheduler": ("repeated", "ve", "dpm_2_ancestral"),
    "EDMEulerScheduler": ("sigmas", "edm", "euler"),
    "DPMSolverMultistepScheduler": ("sigmas", "vp", "dpmpp_2m"),
    "DPMSolverSinglestepScheduler": ("sigmas", "vp", None),
    "UniPCMultistepScheduler": ("sigmas", "vp", "unipc"),
    "DEISMultistepScheduler": ("sigmas", "vp", "deis"),
    "DDIMScheduler": ("alphas", "vp", "ddim"),
    "DDPMScheduler": ("alphas", "vp", "ddpm"),
    "PNDMScheduler": ("alphas", "vp", None),
    "FlowMatchEulerDiscreteScheduler": ("flow", "flow", "euler"),
}
STATES = ("vp", "ve", "flow", "edm")
_K_STYLE = {"LMSDiscreteScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler"}

# the schedule arguments of KSamplingScheduler itself (used when no source config is given:
# the grid is then EulerDiscreteScheduler's with these values)
_SCHEDULE_KEYS = (
    "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "prediction_type",
    "interpolation_type", "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "sigma_min",
    "sigma_max", "timestep_spacing", "steps_offset", "rescale_betas_zero_snr", "final_sigmas_type",
)


@dataclass
class KSamplingSchedulerOutput(BaseOutput):
    """What :meth:`KSamplingScheduler.step` returns: the sample for the next model call (or the
    final sample) and the denoised estimate D of this call."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


# -- the step-wise driver ---------------------------------------------------------------------
class _Pause(BaseException):
    """Unwinds a solver step at a model call whose output has not been given yet (a
    BaseException, so that no solver's ``except Exception`` swallows it)."""


def _copy_containers(state: dict) -> dict:
    return {k: (v.copy() if isinstance(v, (list, dict, deque, set)) else v) for k, v in state.items()}


class _ReplayContext(Context):
    """The loop's Context whose model calls return the outputs given so far in this step and
    pause at the first one not given yet; noise drawn in an earlier replay is drawn again."""

    def __init__(self, x, noise):
        super().__init__(None, x, torch.zeros(1, dtype=torch.float64), {}, None, noise, False, False)
        self.outputs: list[tuple[torch.Tensor, Any]] = []
        self.draws: list[torch.Tensor] = []
        self.calls = 0
        self.draw_index = 0
        self.request: tuple[torch.Tensor, float] | None = None

    def rewind(self):
        self.calls = 0
        self.draw_index = 0

    def denoise(self, x, sigma):
        return self._replay(x, sigma)[0]

    def denoise_with_variance(self, x, sigma):
        return self._replay(x, sigma)

    def _replay(self, x, sigma):
        if self.calls < len(self.outputs):
            self.calls += 1
            return self.outputs[self.calls - 1]
        self.request = (x, float(sigma))
        raise _Pause()

    def denoise_with_uncond(self, x, sigma):
        raise TypeError(
            "CFG++ solvers need the unconditional denoised estimate, which a diffusers pipeline does not hand to "
            "step(); use them through ksampling.sample with a guidance-wrapped model"
        )

    def noise(self, sigma, sigma_next):
        if self.draw_index == len(self.draws):
            self.draws.append(super().noise(sigma, sigma_next))
        self.draw_index += 1
        return self.draws[self.draw_index - 1]


def _identity_step(ctx, x, step):
    """A step σ → σ that still costs a model call (DDIM's last step with "leading" spacing and
    ``set_alpha_to_one=False``)."""
    ctx.denoise(x, step.sigma)
    return x


def _first_order_step(ctx, x, step):
    """Euler's step (DDIM, DPM-Solver++ 1), x_next = D + (σ_next/σ)(x − D). Taken from σ = ∞
    (:data:`SIGMA_INFINITY`), where it is the exact limit of every first-order method and a
    multi-call step (Heun's trapezoid, a midpoint rule) would weigh its slopes over an infinite
    interval; and as DPMSolverMultistep's lower-order final step to σ_min > 0."""
    denoised = ctx.denoise(x, step.sigma)
    return torch.lerp(denoised, x, step.sigma_next / step.sigma)


def _denoise_step(ctx, x, step):
    """``final_step="denoise"``: x ← D(x; σ_min)."""
    return ctx.denoise(x, step.sigma)


class _Run:
    """One sampling run, driven one model output at a time.

    ``steps`` is a list of ``(step_function, Step)``; ``reinterpret(x, sigma_from, sigma_to)``
    carries a step's end point to the next step's start σ when the two differ (DDIM's
    ``t − T // n`` convention, where the pipeline's latents are read at the next timestep).
    """

    def __init__(self, solver, steps, x, noise, reinterpret):
        self.solver = solver
        self.steps = steps
        self.index = 0
        self.x = x
        self.ctx = _ReplayContext(x, noise)
        self.reinterpret = reinterpret
        self.snapshot = _copy_containers(vars(solver))
        self.done = False

    def request(self):
        """Run the pending step to its next model call: ``(x, sigma)`` of that call, or None
        when the run has ended (its result is ``self.x``)."""
        ctx = self.ctx
        while True:
            function, step = self.steps[self.index]
            vars(self.solver).clear()
            vars(self.solver).update(_copy_containers(self.snapshot))
            ctx.rewind()
            ctx.begin_step(step)
            try:
                x_next = function(ctx, self.x, step)
            except _Pause:
                return ctx.request
            self.index += 1
            ctx.outputs, ctx.draws = [], []
            self.snapshot = _copy_containers(vars(self.solver))
            if self.index == len(self.steps):
                self.x, self.done = x_next, True
                return None
            following = self.steps[self.index][1].sigma
            self.x = x_next if following == step.sigma_next else self.reinterpret(x_next, step.sigma_next, following)

    def feed(self, denoised, variance, x_at_call):
        """Give the output of the pending model call, evaluated at ``x_at_call``. At a step's
        first call that point is the step's start (the pipeline's latents are the state). At a
        later call of the step, the solver gets the model's slope (x − D)/σ at ``x_at_call``
        from its own point: D moves with the edit, as HeunDiscrete / KDPM2 use it."""
        ctx = self.ctx
        asked = ctx.request[0]
        if not ctx.outputs:
            self.x = x_at_call if asked is self.x else self.x + (x_at_call - asked)
        else:
            denoised = denoised + (asked - x_at_call)
        ctx.outputs.append((denoised, variance))
        return self.request()


def _unit_noise(sigma, sigma_next):
    return torch.ones(1, dtype=torch.float64)


# -- the scheduler ----------------------------------------------------------------------------
def _source_class_name(config: Mapping, solver: str) -> str:
    """The diffusers scheduler that wrote ``config``: its ``_class_name``, else the supported
    scheduler whose constructor takes exactly the config's keys."""
    name = config.get("_class_name")
    if isinstance(name, str) and name in SOURCES:
        return name
    keys = {k for k in config if not k.startswith("_")}
    matches = [n for n in SOURCES if keys == set(getattr(diffusers, n)._get_init_keys(getattr(diffusers, n))) - {"self", "kwargs"}]
    if len(matches) > 1 and set(matches) <= _K_STYLE:
        # LMS, KDPM2 and KDPM2Ancestral share their config keys and their grid; the solver says which
        return {"dpm_2": "KDPM2DiscreteScheduler", "dpm_2_ancestral": "KDPM2AncestralDiscreteScheduler"}.get(
            solver, "LMSDiscreteScheduler"
        )
    if len(matches) == 1:
        return matches[0]
    raise ValueError(
        "cannot tell which diffusers scheduler this config comes from"
        + (f" ({name!r} is not supported)" if name else "")
        + "; pass the scheduler object itself (from_config(pipe.scheduler, ...)) or source='DDIMScheduler' etc. "
        f"Supported: {', '.join(SOURCES)}"
    )


class KSamplingScheduler(SchedulerMixin, ConfigMixin):
    """A diffusers scheduler backed by any fixed-grid ksampling solver.

    ``pipe.scheduler = KSamplingScheduler.from_config(pipe.scheduler, solver="unipc")`` (or
    ``pipe.scheduler.config``) keeps the replaced scheduler's grid, timesteps and latent
    convention and samples with ksampling's ``unipc`` (or ``dpmpp_3m_sde``, ``heun``,
    ``dpm_2``, ...). With the replaced scheduler's own method (``dpmpp_2m`` for
    ``DPMSolverMultistepScheduler``, ``ddim`` for ``DDIMScheduler``, ``euler`` for
    ``FlowMatchEulerDiscreteScheduler``, ...) the pipeline gives the same image.

    Solvers with several model calls per step (``heun``, ``dpm_2``, ``dpmpp_sde``, ...) get one
    timestep per call, repeated the way ``HeunDiscreteScheduler`` repeats them, and ``order`` is
    the solver's ``nfe_per_step``. A solver that adds noise before its very first model call
    (EDM churn at σ_max) gets one extra leading timestep, whose model output only serves as a
    denoised estimate.

    Args:
        solver: a fixed-grid solver name (``ksampling.available()``).
        solver_options: the solver's options (``{"eta": 0.5}``, ``{"order": 3}``, ...).
        source_config: the replaced scheduler's config; :meth:`from_config` fills it in. Without
            it the grid is ``EulerDiscreteScheduler``'s with the schedule arguments below.
        source: the class name of the scheduler whose grid to use (default: the one that wrote
            ``source_config``, found from its ``_class_name`` or its keys).
        state: the pipeline's latents: ``"vp"`` (``α x``), ``"ve"`` (``x``), ``"flow"``
            (``x/(1+σ)``) or ``"edm"`` (VE with EDM preconditioning); default: the source's.
        final_step: :func:`ksampling.sample`'s final-step policy.
        round_timesteps: feed the model integer timesteps (the training step nearest in log σ)
            while the state stays at the exact σ.
        noise: how an SDE solver's noise is drawn from the pipeline's generator: ``"gaussian"``
            (i.i.d. per step, as diffusers' schedulers draw it) or ``"solver"`` (the solver's
            default: a Brownian tree for k-diffusion's SDE solvers). Default: ``"gaussian"``
            where the solver is the source's own SDE method (``dpmpp_2m_sde`` for
            ``DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++")``), else ``"solver"``.

    The remaining arguments are ``EulerDiscreteScheduler``'s, used only without a source config.
    ``step(..., generator=)`` seeds the solver's noise (the first call's generator serves the
    whole run); without one the noise comes from a fresh generator, never from the global RNG.
    """

    _compatibles = [
        "DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
        "HeunDiscreteScheduler", "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler",
        "DPMSolverSinglestepScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
        "DEISMultistepScheduler", "UniPCMultistepScheduler", "EDMEulerScheduler", "FlowMatchEulerDiscreteScheduler",
    ]
    order = 1

    @register_to_config
    def __init__(
        self,
        solver: str = "dpmpp_2m",
        solver_options: dict | None = None,
        source_config: dict | None = None,
        source: str | None = None,
        state: str | None = None,
        final_step: str = "solver",
        round_timesteps: bool = False,
        noise: str | None = None,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas=None,
        prediction_type: str = "epsilon",
        interpolation_type: str = "linear",
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        final_sigmas_type: str = "zero",
    ):
        self._solver_class = _get_solver(solver)
        if not self._solver_class.fixed_grid:
            raise ValueError(
                f"solver {solver!r} chooses its own steps; a diffusers scheduler needs a fixed-grid solver "
                "(one with fixed_grid=True in ksampling.samplers.info)"
            )
        if self._solver_class.needs_uncond:
            raise ValueError(
                f"solver {solver!r} needs the unconditional model output besides the guided one; a diffusers pipeline "
                "hands step() only the guided one. Use it through ksampling.sample with a guidance-wrapped model"
            )
        if final_step not in ("solver", "denoise", "stop"):
            raise ValueError(f"final_step must be 'solver', 'denoise' or 'stop', got {final_step!r}")
        if noise not in (None, "gaussian", "solver"):
            raise ValueError(f"noise must be 'gaussian', 'solver' or None, got {noise!r}")
        self.order = self._solver_class.nfe_per_step
        self._source = self._build_source(source_config, source, solver)
        name = type(self._source).__name__
        self._layout, natural_state, self.native_solver = SOURCES[name]
        #: the solver options in use: the source's own settings of its method (when ``solver`` is
        #: that method, e.g. DEIS's ``solver_order``), overridden by ``solver_options``
        self.solver_options = {**self._native_options(solver), **dict(solver_options or {})}
        probe = self._make_solver()  # validates the options now, with the solver's own messages
        if any(not getattr(step, "on_grid", True) for step in probe.plan([10.0, 1.0, 0.0])):
            raise ValueError(
                f"solver {solver!r} plans steps of its own off the grid (restart's cycles back up in noise); a "
                "diffusers pipeline calls the model only at its own timesteps. Use it through ksampling.sample"
            )
        if noise is None:
            sde_source = name == "DPMSolverMultistepScheduler" and self._source.config.algorithm_type == "sde-dpmsolver++"
            noise = "gaussian" if sde_source and solver == "dpmpp_2m_sde" else "solver"
        self._noise = noise
        if state is None:
            state = natural_state
        if state not in STATES:
            raise ValueError(f"state must be one of {', '.join(map(repr, STATES))} or None, got {state!r}")
        is_flow = self._layout == "flow"
        if is_flow != (state == "flow") or (state == "edm") != (name == "EDMEulerScheduler"):
            raise ValueError(f"state={state!r} does not fit {name}'s latents (its own state is {natural_state!r})")
        self._state = state
        self._kind = self._prediction_kind()
        source_cfg = self._source.config
        if source_cfg.get("use_flow_sigmas"):
            raise ValueError(
                f"{name}(use_flow_sigmas=True) lists flow times as its sigmas; build the scheduler from the model's "
                "FlowMatchEulerDiscreteScheduler config instead"
            )
        if source_cfg.get("clip_sample") or source_cfg.get("thresholding"):
            warnings.warn(
                f"{name}'s clip_sample / thresholding (clipping the x0 estimate) is not applied by KSamplingScheduler; "
                "set clip_sample=False, thresholding=False in the config to silence this",
                stacklevel=2,
            )
        if is_flow or state == "edm":
            self._process = None
        if is_flow:
            flow_shift(source_cfg)  # a shift of 0 is an error, not a silent 1.0
            if source_cfg.get("stochastic_sampling"):
                raise ValueError(
                    "FlowMatchEulerDiscreteScheduler(stochastic_sampling=True) re-noises x0 at every step, which no "
                    "ksampling solver does on this grid; use a config with stochastic_sampling=False (and an SDE solver "
                    "such as euler_ancestral for stochastic sampling)"
                )
        elif state != "edm":
            table = self._source.alphas_cumprod.double().clone()
            # ᾱ = 0 (zero terminal SNR) is σ = ∞: a finite stand-in for mapping σ to t only
            table[-1] = max(float(table[-1]), VPDiscrete.ZERO_SNR_ALPHA_CUMPROD)
            # σ → t off the grid, as the source maps it: integers (DDIM, DDPM, PNDM, DPM-Solver,
            # UniPC, DEIS), linear in σ (EulerDiscrete's default interpolation), else log σ
            integer_timesteps = round_timesteps or self._layout == "alphas" or name in (
                "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "UniPCMultistepScheduler", "DEISMultistepScheduler"
            )
            other_sigmas = any(source_cfg.get(k) for k in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"))
            linear = (
                not integer_timesteps and not name.startswith("KDPM2") and not other_sigmas
                and source_cfg.get("interpolation_type", "linear") == "linear"
            )
            process = _VPDiscreteLinearTime if linear else VPDiscrete
            self._process = process(alphas_cumprod=table, time="round" if integer_timesteps else "interpolate")
            self.betas = self._source.betas
            self.alphas = getattr(self._source, "alphas", None)
            self.alphas_cumprod = self._source.alphas_cumprod
        #: the ``timestep`` option of :func:`from_diffusers` that feeds the model the same timesteps
        self.timestep_mode = "round" if (self._process is not None and self._process.time == "round") else (
            "linear" if isinstance(self._process, _VPDiscreteLinearTime) else "interpolate"
        )
        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        self.timesteps = None
        self.sigmas = None
        self._calls: list[tuple[float, int]] = []  # (σ, step) of every model call
        self._first_call_of_step: list[int] = []
        self._grid: list[tuple[float, float]] = []  # (σ_i, σ of the step's end) per step
        self._contiguous = True
        self._first_order_last = False
        self._call_index = None
        self._begin_index = None
        self._run: _Run | None = None
        self._checksums: list[torch.Tensor] = []

    # -- construction helpers --------------------------------------------------------------------
    def _build_source(self, source_config, source, solver):
        if source_config is None:
            config = {key: self.config[key] for key in _SCHEDULE_KEYS if key in self.config}
            name = source or "EulerDiscreteScheduler"
        else:
            if not isinstance(source_config, Mapping):
                raise TypeError(f"source_config must be a scheduler config (a dict), got {type(source_config).__name__}")
            config = dict(source_config)
            name = source or _source_class_name(config, solver)
        if name not in SOURCES:
            raise ValueError(f"source {name!r} is not supported; supported: {', '.join(SOURCES)}")
        config = {k: v for k, v in config.items() if not k.startswith("_")}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return getattr(diffusers, name).from_config(config)

    def _native_options(self, solver: str) -> dict:
        """Options that make the source's own method behave as the source does."""
        cfg = self._source.config
        name = type(self._source).__name__
        if name == "DEISMultistepScheduler" and solver == "deis":
            return dict(order=int(cfg.solver_order), lower_order_final=bool(cfg.lower_order_final), lower_order_final_below=15)
        if name == "DPMSolverMultistepScheduler" and solver == "dpmpp_3m":
            # diffusers' third-order update is the reference code's (its d2 weight: see dpmpp_3m)
            return dict(lower_order_final=bool(cfg.lower_order_final), lower_order_final_below=15,
                        official_coefficients=True, solver_type=cfg.solver_type)
        if name == "UniPCMultistepScheduler" and solver == "unipc":
            return dict(order=int(cfg.solver_order), variant=cfg.solver_type, lower_order_final=bool(cfg.lower_order_final))
        if name == "DDPMScheduler" and solver == "ddpm":
            variance = {"fixed_small": "small", "fixed_large": "large", "learned": "learned", "learned_range": "learned"}
            if cfg.variance_type in variance:
                return dict(variance=variance[cfg.variance_type])
        return {}

    def _prediction_kind(self) -> str:
        prediction = self._source.config.get("prediction_type", "epsilon")
        if self._layout == "flow":
            return "flow"
        if prediction not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"prediction_type must be 'epsilon', 'v_prediction' or 'sample', got {prediction!r}")
        return PREDICTION_TYPES[prediction]

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """diffusers' ``from_config``. Given another scheduler (or its config), that scheduler
        becomes the source of the grid: ``from_config(pipe.scheduler, solver="unipc")``."""
        source_name = None
        if isinstance(config, SchedulerMixin) and not isinstance(config, KSamplingScheduler):
            source_name = type(config).__name__
            config = config.config
        source = dict(config) if isinstance(config, Mapping) else None
        if source is not None and source.get("_class_name") != cls.__name__ and "solver" not in source:
            own = {k: v for k, v in kwargs.items()}
            if source_name is not None and "source" not in own:
                own["source"] = source_name
            own.setdefault("source_config", {k: v for k, v in source.items() if k != "_use_default_values"})
            scheduler = cls(**own)
            return (scheduler, {}) if return_unused_kwargs else scheduler
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    def _make_solver(self):
        return make_solver(self._solver_class, self.solver_options)

    def __getstate__(self):
        state = dict(self.__dict__)
        state.update(_run=None, _call_index=None, _checksums=[])
        return state

    @property
    def solver(self) -> str:
        return self._solver_class.name

    @property
    def source(self) -> str:
        """The class name of the scheduler whose grid and conventions this one follows."""
        return type(self._source).__name__

    def __len__(self):
        return self._source.config.num_train_timesteps

    # -- the grid --------------------------------------------------------------------------------
    def _sigma_of_alpha_cumprod(self, value: float) -> float:
        if value <= 0.0:
            return SIGMA_INFINITY
        return min(math.sqrt((1.0 - value) / value), SIGMA_INFINITY)

    def _flow_to_ve(self, t: float) -> float:
        t = 1.0 - t if self._source.config.get("invert_sigmas") else t
        return SIGMA_INFINITY if t >= 1.0 else min(t / (1.0 - t), SIGMA_INFINITY)

    def _source_grid(self, num_inference_steps, sigmas, timesteps, mu):
        """[(σ, timestep, σ of the step's end)] per step from the source scheduler, and the
        source's init_noise_sigma."""
        src = self._source
        kwargs = {}
        if mu is not None:
            kwargs["mu"] = mu
        if sigmas is not None:
            kwargs["sigmas"] = sigmas
        if timesteps is not None:
            kwargs["timesteps"] = list(timesteps)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if num_inference_steps is None:
                src.set_timesteps(device="cpu", **kwargs)
            else:
                src.set_timesteps(num_inference_steps, device="cpu", **kwargs)
        ts = src.timesteps.double().tolist()
        if self._layout == "alphas":
            table = src.alphas_cumprod.double().tolist()
            final = float(getattr(src, "final_alpha_cumprod", torch.tensor(1.0)))
            if self._layout == "alphas" and type(src).__name__ == "PNDMScheduler":
                ts = list(dict.fromkeys(ts))  # PLMS's warm-up repeats a timestep
            n = src.num_inference_steps
            points = []
            for i, t in enumerate(ts):
                if type(src).__name__ == "DDPMScheduler":
                    prev = ts[i + 1] if i + 1 < len(ts) else -1
                else:
                    prev = t - src.config.num_train_timesteps // n
                end = self._sigma_of_alpha_cumprod(table[int(prev)] if prev >= 0 else final)
                points.append((self._sigma_of_alpha_cumprod(table[int(t)]), t, end))
            return points
        values = src.sigmas.double().tolist()
        if self._layout == "repeated":
            values = list(dict.fromkeys(values))
            if type(src).__name__.startswith("KDPM2"):
                ts = ts[0::2]  # KDPM2 interleaves its midpoints' timesteps
            else:
                seen = {}
                for s, t in zip(src.sigmas.double().tolist(), ts):
                    seen.setdefault(s, t)
                ts = [seen[s] for s in values[:-1]]
        if self._layout == "flow":
            values = [self._flow_to_ve(s) for s in values]
        return [(values[i], ts[i], values[i + 1]) for i in range(len(ts))]

    def _timestep_of(self, sigma: float) -> float:
        """The model's timestep at a σ the source never visits (a midpoint, a churned σ̂)."""
        if self._source.config.get("timestep_type") == "continuous":
            return 0.25 * math.log(sigma)  # EulerDiscrete's continuous timesteps (c_noise)
        if self._layout == "flow":
            t = sigma / (1.0 + sigma)
            if self._source.config.get("invert_sigmas"):
                t = 1.0 - t
            return t * self._source.config.num_train_timesteps
        if self._state == "edm":
            return float(self._source.precondition_noise(torch.tensor(sigma, dtype=torch.float64)))
        return float(self._process.sigma_to_t(torch.tensor([sigma], dtype=torch.float64))[0])

    def _plan(self, start_step: int, solver):
        """The run's (step function, Step) list from step ``start_step`` on."""
        steps = self._plan_steps(start_step, solver)
        if steps and steps[0][1].sigma >= SIGMA_INFINITY and solver.nfe_per_step > 1:
            steps[0] = (_first_order_step, steps[0][1])
        if steps and self._first_order_last and steps[-1][0] == solver.step:
            steps[-1] = (_first_order_step, steps[-1][1])
        return steps

    def _plan_steps(self, start_step: int, solver):
        grid = self._grid[start_step:]
        steps = []
        final_policy = self.config.final_step
        if self._contiguous:
            sigmas = [s for s, _ in grid] + [grid[-1][1]]
            identity_last = sigmas[-1] == sigmas[-2]
            if identity_last:
                sigmas = sigmas[:-1]
            denoise_last = False
            if final_policy != "solver" and sigmas[-1] == 0.0:
                sigmas = sigmas[:-1]
                denoise_last = final_policy == "denoise"
            if identity_last and sigmas[-1] > 0:
                # planned as if the run went on to 0, so that the steps before the σ → σ one are
                # what they are in the source (DEIS's lower-order final steps count it)
                steps = [(solver.step, st) for st in solver.plan(sigmas + [0.0])[:-1]]
            elif len(sigmas) >= 2:
                steps = [(solver.step, st) for st in solver.plan(sigmas)]
            if identity_last:
                steps.append((_identity_step, Step(index=len(steps), sigma=sigmas[-1], sigma_next=sigmas[-1])))
            if denoise_last:
                steps.append((_denoise_step, Step(index=len(steps), sigma=sigmas[-1], sigma_next=0.0)))
            return steps
        # a single-step solver on a grid whose steps end off the next step's start (DDIM's t − T // n)
        for i, (sigma, end) in enumerate(grid):
            if end == sigma:
                steps.append((_identity_step, Step(index=i, sigma=sigma, sigma_next=sigma)))
                continue
            if end == 0.0 and i == len(grid) - 1 and final_policy != "solver":
                if final_policy == "denoise":
                    steps.append((_denoise_step, Step(index=i, sigma=sigma, sigma_next=0.0)))
                continue
            step = solver.plan([sigma, end])[0]
            step.index, step.first, step.last, step.n_steps = i, i == 0, i == len(grid) - 1, len(grid)
            step.sigma_prev = grid[i - 1][0] if i > 0 else None
            steps.append((solver.step, step))
        return steps

    # -- diffusers' scheduler API ---------------------------------------------------------------
    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device=None,
        sigmas=None,
        timesteps=None,
        mu: float | None = None,
        **kwargs,
    ):
        """The source scheduler's grid for ``num_inference_steps`` steps (or its ``sigmas`` /
        ``timesteps`` / ``mu``), and one timestep per model call of the solver.

        ``sigmas`` are in the source's units: VE σ for DDPM-family configs (the grid, a 0 is
        appended with ``final_sigmas_type="zero"``), flow times t for FlowMatch configs.
        ``mu`` is FlowMatch's dynamic shift; any other config refuses it."""
        if kwargs:
            raise TypeError(f"set_timesteps got unexpected argument(s): {', '.join(kwargs)}")
        is_flow = self._layout == "flow"
        if mu is not None and not is_flow:
            raise ValueError(
                f"mu (a flow-matching dynamic shift) was given, but this scheduler's grid is {self.source}'s, not a "
                "FlowMatch schedule; build the scheduler from a FlowMatchEulerDiscreteScheduler config"
            )
        if num_inference_steps is not None and (
            isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1
        ):
            raise ValueError(f"num_inference_steps must be an int >= 1, got {num_inference_steps!r}")
        if num_inference_steps is None and sigmas is None and timesteps is None:
            raise ValueError("set_timesteps needs num_inference_steps, sigmas or timesteps")
        train = self._source.config.num_train_timesteps
        if timesteps is not None:
            values = torch.as_tensor(timesteps, dtype=torch.float64).reshape(-1).tolist()
            bad = [t for t in values if not (0 <= t <= (train if is_flow else train - 1))]
            if bad:
                raise ValueError(
                    f"timesteps {bad[:3]} are beyond the training range [0, {train if is_flow else train - 1}] "
                    f"of this {train}-step schedule"
                )
        self._run = None
        if sigmas is not None and not is_flow:
            given = validate_sigmas(
                sigmas if isinstance(sigmas, (torch.Tensor, list, tuple)) else list(sigmas), name="sigmas"
            )
            top = float(self._process.sigmas[-1])
            if given[0] > top * (1 + 1e-6):
                raise ValueError(
                    f"sigmas[0] = {given[0]:g} is beyond the training range (the largest training sigma is {top:g}); "
                    "the model has no timestep for it"
                )
            if given[-1] != 0.0 and self._source.config.get("final_sigmas_type", "zero") == "zero":
                given = given + [0.0]
            points = [(s, self._timestep_of(s), given[i + 1]) for i, s in enumerate(given[:-1])]
            init_sigma = given[0]
        else:
            points = self._source_grid(num_inference_steps, sigmas, timesteps, mu)
            init_sigma = float(self._source.init_noise_sigma) if self._state in ("ve", "edm") else points[0][0]
        starts = [p[0] for p in points]
        for j in range(len(starts) - 1):
            if not starts[j] > starts[j + 1]:
                raise ValueError(
                    f"the {self.source} grid is not strictly descending at step {j} (sigma {starts[j]:g} then "
                    f"{starts[j + 1]:g}); use fewer steps"
                )
        timestep_of_point = {s: t for s, t, _ in points}
        self._grid = [(s, end) for s, _, end in points]
        solver = self._make_solver()
        cfg = self._source.config
        # DPMSolverMultistep's last step to σ_min > 0 is first order below 15 steps (or always
        # with euler_at_final); dpmpp_2m's step to a σ > 0 would be second order
        self._first_order_last = (
            self.source == "DPMSolverMultistepScheduler" and self.solver == "dpmpp_2m" and points[-1][2] > 0
            and (cfg.euler_at_final or (cfg.lower_order_final and len(points) < 15))
        )
        jumps = any(points[i][2] != points[i + 1][0] for i in range(len(points) - 1))
        self._contiguous = not jumps or solver.multistep
        if jumps and solver.multistep:
            # a multistep solver steps to the next call's σ (its history needs one chain of steps)
            self._grid = [(s, points[i + 1][0] if i + 1 < len(points) else end) for i, (s, _, end) in enumerate(points)]
        calls, first_of_step, moves_first = self._dry_run(solver)
        if moves_first:
            # One extra call at σ_0: its output only serves as D; step() returns the solver's
            # first point (x after churn) for the pipeline to evaluate.
            calls = [(starts[0], -1)] + calls
            first_of_step = [0] + [k + 1 for k in first_of_step[1:]]
        self._calls = calls
        self._first_call_of_step = first_of_step
        # A call at a grid point gets the source's timestep for it, except KDPM2's midpoints,
        # which KDPM2 maps from σ even where one coincides with a grid point
        first_calls = set(first_of_step)
        midpoints_mapped = self.source.startswith("KDPM2")
        ts = []
        for k, (sigma, _) in enumerate(calls):
            t = timestep_of_point.get(sigma) if (k in first_calls or not midpoints_mapped) else None
            ts.append(self._timestep_of(sigma) if t is None else t)
        if self.config.round_timesteps:
            ts = [float(round(t)) for t in ts]
        integral = self.timestep_mode == "round" and all(float(t).is_integer() for t in ts)
        self.timesteps = torch.tensor(ts, dtype=torch.int64 if integral else torch.float32, device=device)
        end = self._grid[-1][1]
        call_sigmas = [s for s, _ in calls]
        if is_flow:
            to_source = lambda s: self._ve_to_flow(s)  # noqa: E731
            self.sigmas = torch.tensor([to_source(s) for s in call_sigmas + [end]], dtype=torch.float32, device=device)
        else:
            self.sigmas = torch.tensor(call_sigmas + [end], dtype=torch.float32, device=device)
        self.num_inference_steps = len(self._grid)
        self.init_noise_sigma = init_sigma if self._state in ("ve", "edm") else 1.0
        self._call_index = None
        self._begin_index = None

    def _ve_to_flow(self, sigma: float) -> float:
        t = 1.0 if sigma >= SIGMA_INFINITY else sigma / (1.0 + sigma)
        return 1.0 - t if self._source.config.get("invert_sigmas") else t

    def _dry_run(self, solver):
        """The σ of every model call on this grid and the index of each step's first call: one
        run on a one-element state with D = 0 (the loop decides every branch on the host from
        the grid, so the calls depend on neither x nor the noise). Linear in the steps."""
        solver.reset()
        x = torch.zeros(1, dtype=torch.float64)
        run = _Run(solver, self._plan(0, solver), x, _unit_noise, lambda x, a, b: x)
        calls, first_of_step = [], []
        request = run.request()
        moves_first = request is not None and request[0] is not run.x
        while request is not None:
            if not run.ctx.outputs:
                first_of_step.append(len(calls))
            calls.append((request[1], run.index))
            request = run.feed(torch.zeros_like(x), None, request[0])
        return calls, first_of_step, moves_first

    def set_begin_index(self, begin_index: int = 0):
        """Start at model call ``begin_index`` (image-to-image pipelines); it must be the first
        call of a step."""
        if begin_index not in self._first_call_of_step:
            raise ValueError(
                f"begin_index {begin_index} is not the first model call of a step; the steps start at "
                f"{self._first_call_of_step[:20]}"
            )
        self._run = None
        self._begin_index = begin_index
        self._call_index = None

    @property
    def run_sigmas(self) -> list[float]:
        """The solver's σ grid (VE, descending) when the grid is one chain of steps:
        ``ksampling.sample(denoiser, x, scheduler.run_sigmas, scheduler.solver)`` is then what
        the pipeline computes."""
        return [s for s, _ in self._grid] + [self._grid[-1][1]]

    @property
    def first_call_of_step(self) -> list[int]:
        """Index into ``timesteps`` of the first model call of each solver step (the valid
        ``set_begin_index`` values)."""
        return list(self._first_call_of_step)

    @property
    def step_index(self):
        return self._call_index

    @property
    def begin_index(self):
        return self._begin_index

    # -- state conversions -------------------------------------------------------------------
    def _scale(self, sigma: float) -> float:
        """The pipeline's latents per unit of the VE state x at σ."""
        if self._state == "vp":
            return 1.0 / math.sqrt(1.0 + sigma * sigma)
        if self._state == "flow":
            return 1.0 / (1.0 + sigma)
        return 1.0

    def _reinterpret(self, x, sigma_from, sigma_to):
        return x * (self._scale(sigma_from) / self._scale(sigma_to))

    def _current_call(self) -> int:
        if self._call_index is not None:
            return self._call_index
        return self._begin_index or 0

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """The model's input: ``sample`` itself for VP and flow latents; ``sample/√(σ²+1)``
        for VE latents; EDM's ``c_in · sample``."""
        if self._state in ("vp", "flow"):
            return sample
        self._check_ready()
        sigma = self._calls[min(self._current_call(), len(self._calls) - 1)][0]
        if self._state == "edm":
            return self._source.precondition_inputs(sample, sigma)
        return sample / math.sqrt(sigma * sigma + 1.0)

    def _check_ready(self):
        if self.timesteps is None:
            raise RuntimeError("call set_timesteps(num_inference_steps) before sampling")

    def _work_dtype(self, device) -> torch.dtype:
        return torch.float32 if torch.device(device).type == "mps" else torch.float64

    def _denoised(self, model_output, x, sigma: float):
        if self._state == "edm":
            return self._source.precondition_outputs(x, model_output, sigma)
        kind = self._kind
        if kind == "flow" and self._source.config.get("invert_sigmas"):
            model_output = -model_output  # Mochi's inverted time runs the velocity backwards
        sigma_batch = torch.full((x.shape[0],), sigma, dtype=x.dtype, device=x.device)
        return denoised_from_prediction(kind, model_output, x, sigma_batch, self._process)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator=None, return_dict: bool = True, **kwargs):
        """Give the solver this model output (evaluated at ``sample``, which is the state) and
        return the next point to evaluate the model at (``prev_sample``; the final sample after
        the last call) and the denoised estimate (``pred_original_sample``).

        Calls follow ``timesteps`` in order, as every pipeline loop does. A learned-variance
        output (twice the channels of ``sample``) is split: the prediction half becomes D, the
        variance half goes to the ``ddpm`` solver. With ``return_dict=False`` returns
        ``(prev_sample, pred_original_sample)``."""
        if kwargs:
            raise TypeError(
                f"step() got unexpected argument(s) {', '.join(kwargs)}; a ksampling solver's options (eta, s_churn, ...) "
                "go in KSamplingScheduler(solver_options=...)"
            )
        self._check_ready()
        if not isinstance(model_output, torch.Tensor):
            raise TypeError(f"model_output must be a tensor, got {type(model_output).__name__}")
        if not isinstance(sample, torch.Tensor) or not sample.is_floating_point():
            raise TypeError("sample must be a floating-point tensor")
        k = self._current_call()
        if k >= len(self._calls):
            raise RuntimeError(
                f"step() called {k + 1} times but this run has {len(self._calls)} model calls; call set_timesteps again"
            )
        variance = None
        if model_output.shape != sample.shape:
            doubled = model_output.ndim == sample.ndim and model_output.shape[1] == 2 * sample.shape[1] and (
                model_output.shape[2:] == sample.shape[2:] and model_output.shape[0] == sample.shape[0]
            )
            if not doubled:
                raise ValueError(
                    f"model_output has shape {tuple(model_output.shape)} but sample has {tuple(sample.shape)}; "
                    "they must match (or the output carry twice the channels: a learned variance)"
                )
            model_output, value = model_output.chunk(2, dim=1)
            kind = self._source.config.get("variance_type")
            if kind in ("learned", "learned_range"):
                variance = LearnedVariance(kind, value.to(self._work_dtype(sample.device)))
        sigma, step_index = self._calls[k]
        work = self._work_dtype(sample.device)
        x = sample.to(work) / self._scale(sigma)
        denoised = self._denoised(model_output.to(work), x, sigma)
        self._checksums.append(denoised.sum())
        if self._run is None:
            start_step = max(step_index, 0)
            solver = self._make_solver()
            solver.reset()
            sigmas = [s for s, _ in self._grid[start_step:]] + [self._grid[-1][1]]
            # drawn in the latents' dtype, as diffusers' schedulers draw it (then cast to the work dtype)
            if self._noise == "gaussian" and solver.draws_noise:
                noise = GaussianNoise(sample, generator)
            else:
                noise = _make_noise(solver, sample, sigmas, generator, None)
            self._run = _Run(solver, self._plan(start_step, solver), x, noise, self._reinterpret)
            request = self._run.request()
            if step_index != -1:  # the primed call's output (before a churned first step) is spent
                request = self._run.feed(denoised, variance, x)
        else:
            request = self._run.feed(denoised, variance, x)
        self._call_index = k + 1
        if request is None:
            out, out_sigma = self._run.x, self._grid[-1][1]
            if self.config.final_step == "stop" and out_sigma == 0.0:
                out_sigma = self._grid[-1][0]
            self._run = None
            self._raise_if_not_finite()
        else:
            out, out_sigma = request
        prev_sample = (out * self._scale(out_sigma)).to(sample.dtype)
        pred = denoised.to(sample.dtype)
        if not return_dict:
            return prev_sample, pred
        return KSamplingSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred)

    def _raise_if_not_finite(self):
        sums, self._checksums = self._checksums, []
        if not sums:
            return
        ok = torch.isfinite(torch.stack(sums)).tolist()
        if not all(ok):
            first = ok.index(False)
            raise ValueError(f"the model returned non-finite values (NaN or inf) at model call {first}")

    # -- noising ---------------------------------------------------------------------------------
    def _call_sigmas_for(self, timesteps, like: torch.Tensor) -> torch.Tensor:
        """σ of the given timesteps, as diffusers' schedulers pick them: the begin index (or the
        current call, after the first step) when set_begin_index was used, else the call with
        that timestep."""
        self._check_ready()
        values = torch.as_tensor(timesteps).reshape(-1).to(torch.float64).cpu().tolist()
        if self._begin_index is not None:
            sigma = self._calls[min(self._current_call(), len(self._calls) - 1)][0]
            sigmas = [sigma] * len(values)
        else:
            own = self.timesteps.to(torch.float64).cpu().tolist()
            where = {}
            for index, t in enumerate(own):
                where.setdefault(t, index)
            sigmas = []
            for t in values:
                if t in where:
                    sigmas.append(self._calls[where[t]][0])
                elif self._process is not None and float(t).is_integer() and 0 <= t < len(self._process.sigmas):
                    sigmas.append(float(self._process.sigmas[int(t)]))  # a training timestep
                else:
                    raise ValueError(f"timestep {t} is not one of this scheduler's timesteps")
        sigma = torch.tensor(sigmas, dtype=torch.float64).to(like.device, like.dtype)
        return sigma.reshape(-1, *([1] * (like.ndim - 1)))

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Noise clean samples to the level of ``timesteps`` in the pipeline's state:
        ``α (x0 + σ n)`` (VP), ``x0 + σ n`` (VE), ``(x0 + σ n)/(1 + σ)`` (flow)."""
        sigma = self._call_sigmas_for(timesteps, original_samples)
        x = original_samples + noise * sigma
        if self._state == "vp":
            x = x / torch.sqrt(1 + sigma**2)
        elif self._state == "flow":
            x = x / (1 + sigma)
        return x

    def scale_noise(self, sample: torch.Tensor, timestep, noise: torch.Tensor | None = None) -> torch.Tensor:
        """FlowMatch's forward process for image-to-image: ``t · noise + (1 − t) · sample`` at
        the flow time t of ``timestep`` (the begin index's once set)."""
        if self._layout != "flow":
            raise ValueError(f"scale_noise is the flow-matching forward process; this scheduler follows {self.source}: use add_noise")
        sigma = self._call_sigmas_for(timestep, sample).to(torch.float64)
        t = torch.where(sigma >= SIGMA_INFINITY, torch.ones_like(sigma), sigma / (1 + sigma))
        if self._source.config.get("invert_sigmas"):
            t = 1 - t
        t = t.to(sample.dtype)
        return t * noise + (1.0 - t) * sample
