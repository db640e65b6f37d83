"""diffusers in both directions: diffusers models on ksampling solvers, and ksampling solvers
in diffusers pipelines.

* :func:`from_diffusers` turns a diffusers model (``UNet2DModel``, ``UNet2DConditionModel``, a
  transformer) and its scheduler (or scheduler config) into the denoiser D(x; σ) that
  :func:`ksampling.sample` runs on.
* :class:`KSamplingScheduler` is a diffusers scheduler (``set_timesteps``, ``timesteps``,
  ``scale_model_input``, ``step``, ``add_noise``, ``from_config``) backed by any fixed-grid
  ksampling solver: assign it to ``pipe.scheduler`` and an existing pipeline samples with
  ``unipc``, ``dpmpp_3m_sde``, ``heun``, ...

Needs the ``diffusers`` extra (``pip install ksampling[diffusers]``); ``import ksampling``
never imports diffusers.

Which timesteps the diffusers schedulers feed the network (the ``timestep`` option of
:func:`from_diffusers`), for their default ``timestep_spacing``:

| scheduler | timesteps fed to the model | ``timestep=`` |
|---|---|---|
| EulerDiscrete, EulerAncestral, Heun, LMSDiscrete | fractional ("linspace" spacing), σ interpolated *linearly in σ* between the training sigmas | ``"linear"`` |
| the same with ``use_karras_sigmas`` etc.; KDPM2Discrete's midpoints | fractional, interpolated in log σ | ``"interpolate"`` |
| DPMSolverMultistep, UniPCMultistep, DDIM, DDPM, PNDM, DEIS | integers (with Karras sigmas: the nearest training step, the state staying at the exact σ) | ``"round"`` |

On the grid of training timesteps all three give the same network input; they differ only
between them.
"""

from __future__ import annotations

import math
import queue
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Mapping

import torch

try:
    import diffusers  # noqa: F401
    from diffusers.configuration_utils import ConfigMixin, register_to_config
    from diffusers.schedulers.scheduling_utils import SchedulerMixin
    from diffusers.utils import BaseOutput
except ImportError as _exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "ksampling.integrations.diffusers needs diffusers: pip install ksampling[diffusers]"
    ) from _exc

from ..denoisers.processes import RectifiedFlow, VPDiscrete
from ..denoisers.wrappers import NetworkDenoiser
from ..samplers.base import Solver, get as _get_solver, make_solver
from ..samplers.loop import sample as _sample
from ..samplers.loop import validate_sigmas as _validate_sigmas

__all__ = ["from_diffusers", "DiffusersNetwork", "process_from_config", "KSamplingScheduler", "KSamplingSchedulerOutput"]

#: diffusers' prediction_type -> ksampling's prediction
PREDICTION_TYPES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v", "flow": "flow"}
TIMESTEP_MODES = ("interpolate", "round", "linear")


def _config_of(scheduler_or_config) -> dict:
    if isinstance(scheduler_or_config, Mapping):
        return dict(scheduler_or_config)
    config = getattr(scheduler_or_config, "config", None)
    if isinstance(config, Mapping):
        return dict(config)
    raise TypeError(
        "scheduler_or_config must be a diffusers scheduler or its config (a dict), "
        f"got {type(scheduler_or_config).__name__}"
    )


def _is_flow_config(config: dict, class_name: str | None) -> bool:
    name = class_name or config.get("_class_name") or ""
    if "FlowMatch" in name or config.get("prediction_type") == "flow":
        return True
    # a bare FlowMatch config: a time shift and no betas
    return "shift" in config and not any(key in config for key in ("beta_schedule", "beta_start", "trained_betas"))


class _VPDiscreteLinearTime(VPDiscrete):
    """VPDiscrete whose σ → t map inverts diffusers' ``np.interp(t, arange(T), sigmas)``:
    linear in σ, not in log σ. EulerDiscrete, Heun and LMS with the default
    ``interpolation_type="linear"`` place fractional timesteps on this map."""

    def sigma_to_t(self, sigma):
        table = self.sigmas.to(device=sigma.device, dtype=torch.float32 if sigma.device.type == "mps" else torch.float64)
        s = sigma.to(table.dtype)
        low = (torch.searchsorted(table, s.contiguous(), right=True) - 1).clamp(0, len(table) - 2)
        w = ((s - table[low]) / (table[low + 1] - table[low])).clamp(0, 1)
        return (low + w).to(sigma.dtype if sigma.is_floating_point() else torch.float64)


def process_from_config(scheduler_or_config, *, timestep: str = "interpolate"):
    """The ksampling noise process of a diffusers scheduler (config).

    DDPM-family configs (``num_train_timesteps``, ``beta_start``, ``beta_end``,
    ``beta_schedule`` or ``trained_betas``, ``rescale_betas_zero_snr``) give a
    :class:`~ksampling.denoisers.VPDiscrete`; FlowMatch configs a
    :class:`~ksampling.denoisers.RectifiedFlow` with ``t_scale = num_train_timesteps``.
    ``timestep`` is ``"interpolate"`` (log σ), ``"round"`` (nearest training index) or
    ``"linear"`` (linear in σ, EulerDiscrete's ``interpolation_type="linear"``).
    """
    class_name = None if isinstance(scheduler_or_config, Mapping) else type(scheduler_or_config).__name__
    config = _config_of(scheduler_or_config)
    if timestep not in TIMESTEP_MODES:
        raise ValueError(f"timestep must be one of {', '.join(map(repr, TIMESTEP_MODES))}; got {timestep!r}")
    num_train_timesteps = int(config.get("num_train_timesteps", 1000))
    if _is_flow_config(config, class_name):
        return RectifiedFlow(shift=float(config.get("shift", 1.0) or 1.0), t_scale=float(num_train_timesteps))
    trained = config.get("trained_betas")
    kwargs: dict[str, Any] = dict(rescale_zero_terminal_snr=bool(config.get("rescale_betas_zero_snr", False)))
    if trained is not None:
        kwargs["betas"] = torch.as_tensor(trained, dtype=torch.float64)
    else:
        schedule = config.get("beta_schedule", "linear")
        kwargs.update(beta_schedule=schedule, num_train_timesteps=num_train_timesteps)
        if schedule != "squaredcos_cap_v2":
            kwargs.update(beta_start=float(config.get("beta_start", 1e-4)), beta_end=float(config.get("beta_end", 0.02)))
    if timestep == "linear":
        return _VPDiscreteLinearTime(time="interpolate", **kwargs)
    return VPDiscrete(time=timestep, **kwargs)


class DiffusersNetwork(torch.nn.Module):
    """A diffusers model as a ksampling network ``network(x_net, t, **extra_args)``.

    Calls ``model(x_net, timestep=t, **extra_args)`` (UNets take the sample first, transformers
    ``hidden_states``), takes ``.sample`` of the output (or its first element), runs the model
    in its own dtype and returns the output in ``x_net``'s dtype. ``timestep_scale``
    multiplies the timestep (Flux-style transformers want t in [0, 1]: 1/1000).
    """

    def __init__(self, model, timestep_scale: float = 1.0):
        super().__init__()
        if not callable(model):
            raise TypeError(f"model must be a callable diffusers model, got {type(model).__name__}")
        self.model = model
        self.timestep_scale = float(timestep_scale)

    def forward(self, x_net, t, **extra_args):
        dtype = getattr(self.model, "dtype", x_net.dtype)
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            dtype = x_net.dtype
        timestep = t * self.timestep_scale if self.timestep_scale != 1.0 else t
        out = self.model(x_net.to(dtype), timestep=timestep, **extra_args)
        if hasattr(out, "sample"):
            out = out.sample
        elif isinstance(out, (tuple, list)):
            out = out[0]
        return out.to(x_net.dtype)


def from_diffusers(
    model,
    scheduler_or_config,
    *,
    prediction_type: str | None = None,
    timestep: str = "interpolate",
    timestep_scale: float = 1.0,
    learned_variance: str | None = None,
    guidance_scale: float | None = None,
    guidance_interval=None,
    cond_key: str = "encoder_hidden_states",
    uncond_key: str = "negative_encoder_hidden_states",
):
    """D(x; σ) from a diffusers model and its scheduler (or scheduler config).

    Args:
        model: ``UNet2DModel``, ``UNet2DConditionModel``, a diffusers transformer or any
            callable ``model(sample, timestep=t, **kw)`` returning a tensor or an object with
            ``.sample``.
        scheduler_or_config: the model's scheduler or its ``config`` (dict). Its
            ``num_train_timesteps``, betas (``beta_schedule``, ``beta_start``, ``beta_end``,
            ``trained_betas``, ``rescale_betas_zero_snr``) and ``prediction_type`` are used;
            FlowMatch schedulers give a rectified-flow process.
        prediction_type: overrides the config's: ``"epsilon"``, ``"sample"``,
            ``"v_prediction"`` or ``"flow"`` (ksampling's names ``"eps"``, ``"x0"``, ``"v"``
            are accepted too).
        timestep: how σ becomes the model's timestep: ``"interpolate"`` (fractional,
            linear in log σ: k-diffusion, diffusers' Karras-sigma options and KDPM2),
            ``"round"`` (the nearest integer: DDIM, DDPM, DPMSolverMultistep, UniPC) or
            ``"linear"`` (fractional, linear in σ: EulerDiscrete / Heun / LMS with the default
            ``interpolation_type="linear"``). Identical on the training grid.
        timestep_scale: multiplies the timestep (1/1000 for Flux-style transformers).
        learned_variance: ``"learned"`` / ``"learned_range"`` for improved-DDPM models whose
            output carries a variance; ``None`` reads the config's ``variance_type``.
        guidance_scale: wrap in classifier-free guidance
            (:class:`ksampling.denoisers.ClassifierFreeGuidance`) with this scale: the model is
            called once on the doubled batch with ``cond_key`` (default
            ``encoder_hidden_states``) = cat(``extra_args[cond_key]``,
            ``extra_args[uncond_key]``); ``uncond_key`` defaults to
            ``negative_encoder_hidden_states`` (the empty-prompt embedding).
        guidance_interval: ``(lo, hi)``: guide only for σ in this interval (Kynkäänniemi et
            al. 2024).

    Conditioning (``encoder_hidden_states``, ``class_labels``, ``added_cond_kwargs``, ...)
    goes through ``sample(..., extra_args=...)`` to every model call.
    """
    class_name = None if isinstance(scheduler_or_config, Mapping) else type(scheduler_or_config).__name__
    config = _config_of(scheduler_or_config)
    is_flow = _is_flow_config(config, class_name)
    kind = prediction_type if prediction_type is not None else ("flow" if is_flow else config.get("prediction_type", "epsilon"))
    kind = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}.get(kind, kind)
    if kind not in PREDICTION_TYPES:
        raise ValueError(
            f"prediction_type must be one of {', '.join(map(repr, PREDICTION_TYPES))}; got {kind!r}"
        )
    if kind == "flow" and not is_flow:
        raise ValueError("prediction_type='flow' needs a FlowMatch scheduler config (rectified-flow process)")
    if is_flow and kind != "flow":
        raise ValueError(f"a FlowMatch scheduler's model predicts 'flow', got prediction_type={kind!r}")
    if learned_variance is None:
        variance_type = config.get("variance_type")
        learned_variance = variance_type if variance_type in ("learned", "learned_range") else None
    process = process_from_config(config if class_name is None else scheduler_or_config, timestep=timestep)
    if not isinstance(timestep_scale, (int, float)) or isinstance(timestep_scale, bool) or not timestep_scale > 0:
        raise ValueError(f"timestep_scale must be a number > 0, got {timestep_scale!r}")
    denoiser = NetworkDenoiser(
        DiffusersNetwork(model, timestep_scale), process, prediction=PREDICTION_TYPES[kind], learned_variance=learned_variance
    )
    if guidance_scale is None:
        return denoiser
    from ..denoisers.guidance import ClassifierFreeGuidance

    return ClassifierFreeGuidance(
        denoiser, guidance_scale, sigma_interval=guidance_interval, cond_key=cond_key, uncond_key=uncond_key
    )


# -- the other direction: a diffusers scheduler backed by a ksampling solver ----------------------
@dataclass
class KSamplingSchedulerOutput(BaseOutput):
    """What :meth:`KSamplingScheduler.step` returns: the sample for the next model call (or the
    final sample) and the denoised estimate D of this call."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


class _Aborted(BaseException):
    """Raised inside the worker's model call to unwind an abandoned run."""


_ABORT = object()


class _SolverThread:
    """Runs :func:`ksampling.sample` in a worker thread whose model is fed by the caller.

    The worker's model call posts ``("call", x)`` and blocks until :meth:`feed` gives it D;
    the run ends with ``("done", x)`` or ``("error", exception)``. The two threads strictly
    alternate (one is always blocked on a queue), so the solver's tensors are never touched
    concurrently and no lock is needed. A run that is abandoned (a new ``set_timesteps``, the
    scheduler garbage-collected) is unwound by :meth:`close`, which makes the pending model
    call raise.
    """

    def __init__(self, run):
        self._requests: queue.Queue = queue.Queue()
        self._replies: queue.Queue = queue.Queue()
        self.finished = False
        self._thread = threading.Thread(target=self._work, args=(run,), name="ksampling-scheduler", daemon=True)
        self._thread.start()

    def _model(self, x, sigma, **extra_args):
        self._requests.put(("call", x))
        reply = self._replies.get()
        if reply is _ABORT:
            raise _Aborted()
        return reply

    def _work(self, run):
        try:
            result = run(self._model)
        except _Aborted:
            return
        except BaseException as exc:  # handed to the caller's thread and raised there
            self._requests.put(("error", exc))
            return
        self._requests.put(("done", result))

    def next(self):
        kind, value = self._requests.get()
        if kind == "error":
            self.finished = True
            raise value
        if kind == "done":
            self.finished = True
        return kind, value

    def feed(self, denoised):
        self._replies.put(denoised)

    def close(self):
        if self._thread.is_alive():
            self._replies.put(_ABORT)
            self._thread.join(timeout=10)
        self.finished = True


def _unit_noise(sigma, sigma_next):
    return torch.ones(1, dtype=torch.float64)


def _model_calls(solver: Solver, sigmas: list[float], final_step: str) -> tuple[list[float], list[int], bool]:
    """The σ of every model call a fixed-grid solver makes on ``sigmas``, the index of the
    first call of each step, and whether the solver moves x before its first call (churn).

    Found by one run on a one-element state with a model that returns 0: the loop decides
    every branch on the host from the grid, so the calls do not depend on x or the noise."""
    calls: list[float] = []
    first_of_step: list[int] = []
    moved = []

    def model(x, sigma, **extra_args):
        if not calls:
            moved.append(bool(x.abs().sum() != 0))
        calls.append(float(sigma[0]))
        return torch.zeros_like(x)

    def callback(info):
        first_of_step.append(len(calls) - 1)

    _sample(model, torch.zeros(1, dtype=torch.float64), sigmas, solver, noise_sampler=_unit_noise,
            callback=callback, final_step=final_step, check_finite=False)
    return calls, first_of_step, bool(moved and moved[0])


_GRID_KEYS = (
    "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "timestep_spacing",
    "steps_offset", "rescale_betas_zero_snr", "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas",
    "sigma_min", "sigma_max", "interpolation_type", "final_sigmas_type",
)


class KSamplingScheduler(SchedulerMixin, ConfigMixin):
    """A diffusers scheduler backed by any fixed-grid ksampling solver.

    ``pipe.scheduler = KSamplingScheduler.from_config(pipe.scheduler.config, solver="unipc")``
    makes an existing pipeline sample with ksampling's ``unipc`` (or ``dpmpp_3m_sde``,
    ``heun``, ``dpm_2``, ...). The noise schedule (betas, ``timestep_spacing``,
    ``use_karras_sigmas``, ...) is read from the config exactly as diffusers'
    ``EulerDiscreteScheduler`` reads it; the sampling is :func:`ksampling.sample` with that
    grid, so the pipeline gives the same sample as ``ksampling.sample(from_diffusers(unet,
    config), x, sigmas, solver)``.

    How it works: diffusers' ``step()`` hands over one model output at a time, but a solver
    is a function that calls the model. The solver therefore runs in a worker thread whose
    model call waits for the next ``step()`` (:class:`_SolverThread`): each ``step()`` turns
    the model output into D(x; σ), gives it to the solver, and returns the point where the
    solver wants the model next. The two threads strictly alternate, so nothing runs
    concurrently. Solvers with several model calls per step (``heun``, ``dpm_2``,
    ``dpmpp_sde``, ...) get one timestep per call: ``timesteps`` repeats them the way
    diffusers' ``HeunDiscreteScheduler`` does, and ``order`` is the solver's
    ``nfe_per_step``. A solver that adds noise before its very first model call (EDM churn
    at σ_max) gets one extra leading timestep whose model output is only used as a
    denoised estimate.

    Args:
        solver: a fixed-grid solver name (``ksampling.available()``).
        solver_options: the solver's options (``{"eta": 0.5}``, ``{"order": 3}``, ...).
        state: ``"vp"`` (default): the pipeline's latents are VP, ``x_vp = α x``,
            ``init_noise_sigma = 1`` and ``scale_model_input`` is the identity, as for DDPM /
            DDIM / DPMSolverMultistep; works with every pipeline, including ``DDPMPipeline``
            which never calls ``scale_model_input``. ``"ve"``: the latents are the VE state
            ``x = x0 + σ n`` with ``init_noise_sigma = σ_max`` and ``scale_model_input``
            dividing by √(σ² + 1), as for ``EulerDiscreteScheduler``.
        final_step: :func:`ksampling.sample`'s final-step policy.
        round_timesteps: feed the model integer timesteps (the training step nearest in log σ)
            while the state stays at the exact σ, as ``DPMSolverMultistepScheduler`` and
            ``UniPCMultistepScheduler`` do with Karras sigmas; default: fractional timesteps,
            as ``EulerDiscreteScheduler``. ``timestep_mode`` names the matching
            ``from_diffusers(timestep=...)``.
        prediction_type: ``"epsilon"``, ``"v_prediction"`` or ``"sample"``.

    The remaining arguments are the schedule's, with ``EulerDiscreteScheduler``'s meaning and
    defaults. ``step(..., generator=)`` seeds the solver's noise (the first call's
    generator is used for the whole run); without one the noise comes from a fresh
    generator, never from the global RNG.

    Limitation: the solver's state lives in the worker, so latents that a pipeline changes
    between steps (inpainting's blending of the known region) are used for the model call
    but not carried into the solver's next step.
    """

    _compatibles = [
        "DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
        "HeunDiscreteScheduler", "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler",
        "DPMSolverSinglestepScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
        "DEISMultistepScheduler", "UniPCMultistepScheduler", "DPMSolverSDEScheduler",
    ]
    order = 1

    @register_to_config
    def __init__(
        self,
        solver: str = "dpmpp_2m",
        solver_options: dict | None = None,
        state: str = "vp",
        final_step: str = "solver",
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
        round_timesteps: bool = False,
    ):
        options = dict(solver_options or {})
        self._solver_class = _get_solver(solver)
        if not self._solver_class.fixed_grid:
            raise ValueError(
                f"solver {solver!r} chooses its own steps; a diffusers scheduler needs a fixed-grid solver "
                "(one with fixed_grid=True in ksampling.samplers.info)"
            )
        self._solver_options = options
        self._make_solver()  # validates the options now, with the solver's own messages
        if state not in ("vp", "ve"):
            raise ValueError(f"state must be 'vp' or 've', got {state!r}")
        if prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"prediction_type must be 'epsilon', 'v_prediction' or 'sample', got {prediction_type!r}")
        self.order = self._solver_class.nfe_per_step
        self._grid_scheduler = self._build_grid_scheduler()
        # Timesteps between the grid's points (dpm_2's midpoints, churned sigmas) are placed the
        # way the grid itself is: linear in σ for EulerDiscrete's default, else in log σ.
        linear = interpolation_type == "linear" and not (use_karras_sigmas or use_exponential_sigmas or use_beta_sigmas)
        table = self._grid_scheduler.alphas_cumprod.double()
        self._process = (_VPDiscreteLinearTime if linear else VPDiscrete)(alphas_cumprod=table, time="interpolate")
        self._round_process = VPDiscrete(alphas_cumprod=table, time="round")
        #: the ``timestep`` option of :func:`from_diffusers` that feeds the model the same timesteps
        self.timestep_mode = "round" if round_timesteps else ("linear" if linear else "interpolate")
        self.alphas_cumprod = self._grid_scheduler.alphas_cumprod
        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        self.timesteps = None
        self.sigmas = None
        self._calls: list[tuple[float, int | None]] = []
        self._call_index = 0
        self._begin_index = None
        self._run_sigmas: list[float] = []
        self._first_call_of_step: list[int] = []
        self._moves_first = False
        self._worker: _SolverThread | None = None
        self._finalizer = None

    # -- construction helpers --------------------------------------------------------------------
    def _build_grid_scheduler(self):
        from diffusers import EulerDiscreteScheduler

        cfg = {key: self.config[key] for key in _GRID_KEYS if key in self.config}
        return EulerDiscreteScheduler(**cfg)

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """diffusers' ``from_config``, refusing flow-matching configs (their pipelines keep
        rectified-flow latents, which this scheduler does not model)."""
        source = config if isinstance(config, Mapping) else getattr(config, "config", None)
        if isinstance(source, Mapping) and _is_flow_config(dict(source), None):
            raise NotImplementedError(
                "KSamplingScheduler supports DDPM-family (beta schedule) configs; for a flow-matching model "
                "use from_diffusers(model, scheduler) with ksampling.sample"
            )
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    def _make_solver(self) -> Solver:
        return make_solver(self._solver_class, self._solver_options)

    def __getstate__(self):
        # A run in progress belongs to this process's threads; copies and pickles start idle.
        state = dict(self.__dict__)
        state.update(_worker=None, _finalizer=None, _call_index=0)
        return state

    @property
    def solver(self) -> str:
        return self._solver_class.name

    def __len__(self):
        return self.config.num_train_timesteps

    # -- diffusers' scheduler API ---------------------------------------------------------------
    def set_timesteps(self, num_inference_steps: int | None = None, device=None, sigmas=None, timesteps=None, **kwargs):
        """Make the grid of ``num_inference_steps`` steps (or the given ``sigmas``, descending,
        VE; or the given training ``timesteps``) and the list of model-call timesteps."""
        self._close()
        grid = self._grid_scheduler
        if sigmas is not None:
            values = _validate_sigmas(torch.as_tensor(sigmas, dtype=torch.float64) if not isinstance(sigmas, torch.Tensor) else sigmas, name="sigmas")
            if values[-1] != 0.0 and self.config.final_sigmas_type == "zero":
                values = values + [0.0]
        else:
            if timesteps is not None:
                grid.set_timesteps(timesteps=list(timesteps), device="cpu")
            else:
                if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
                    raise ValueError(f"num_inference_steps must be an int >= 1, got {num_inference_steps!r}")
                grid.set_timesteps(num_inference_steps, device="cpu")
            values = _validate_sigmas(grid.sigmas.double(), name="sigmas")
        self.num_inference_steps = len(values) - 1
        solver = self._make_solver()
        call_sigmas, first_of_step, moves_first = _model_calls(solver, values, self.config.final_step)
        self._run_sigmas = values
        grid_t = {}
        if sigmas is None:
            for s, t in zip(grid.sigmas.double().tolist(), grid.timesteps.double().tolist()):
                grid_t.setdefault(s, t)
        ts = [self._timestep_of(s, grid_t) for s in call_sigmas]
        if self.config.round_timesteps:
            # DPMSolverMultistep / UniPC's convention: the state stays at the exact σ, the
            # model gets the nearest training step (nearest in log σ, as from_diffusers' "round")
            ts = [float(self._round_process.sigma_to_t(torch.tensor([s], dtype=torch.float64))[0]) for s in call_sigmas]
        step_of_call = []
        for k in range(len(call_sigmas)):
            step_of_call.append(sum(1 for f in first_of_step if f <= k) - 1)
        if moves_first:
            # One extra call at σ_0: its model output is spent; step() returns the solver's
            # first point (x after churn) for the pipeline to evaluate.
            call_sigmas = [values[0]] + call_sigmas
            ts = [self._timestep_of(values[0], grid_t)] + ts
            step_of_call = [-1] + step_of_call
            first_of_step = [0] + [f + 1 for f in first_of_step[1:]] if first_of_step else [0]
        self._calls = list(zip(call_sigmas, step_of_call))
        self._first_call_of_step = first_of_step
        self._moves_first = moves_first
        integral = all(float(t).is_integer() for t in ts)
        self.timesteps = torch.tensor(ts, dtype=torch.int64 if integral else torch.float32, device=device)
        self.sigmas = torch.tensor(call_sigmas + [values[-1]], dtype=torch.float32, device=device)
        self.init_noise_sigma = 1.0 if self.config.state == "vp" else float(values[0])
        self._call_index = 0
        self._begin_index = None

    def _timestep_of(self, sigma: float, grid_t: dict) -> float:
        if sigma in grid_t:
            return grid_t[sigma]
        return float(self._process.sigma_to_t(torch.tensor([sigma], dtype=torch.float64))[0])

    def set_begin_index(self, begin_index: int = 0):
        """Start at model call ``begin_index`` (image-to-image pipelines); it must be the first
        call of a step."""
        if begin_index not in self._first_call_of_step:
            raise ValueError(
                f"begin_index {begin_index} is not the first model call of a step; the steps start at "
                f"{self._first_call_of_step}"
            )
        self._close()
        self._begin_index = begin_index
        self._call_index = begin_index

    @property
    def run_sigmas(self) -> list[float]:
        """The solver's σ grid of this run (VE, descending): ``ksampling.sample(denoiser, x,
        scheduler.run_sigmas, scheduler.solver)`` is what the pipeline computes."""
        return list(self._run_sigmas)

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

    def _alpha(self, sigma: float) -> float:
        return 1.0 / math.sqrt(1.0 + sigma * sigma)

    def _to_ve(self, sample, sigma):
        return sample / self._alpha(sigma) if self.config.state == "vp" else sample

    def _from_ve(self, x, sigma):
        return x * self._alpha(sigma) if self.config.state == "vp" else x

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """The model's input: ``sample`` itself for ``state="vp"``; ``sample/√(σ²+1)`` for ``"ve"``."""
        if self.config.state == "vp":
            return sample
        self._check_ready()
        sigma = self._calls[min(self._call_index, len(self._calls) - 1)][0]
        return sample / math.sqrt(sigma * sigma + 1.0)

    def _check_ready(self):
        if self.timesteps is None:
            raise RuntimeError("call set_timesteps(num_inference_steps) before sampling")

    def _denoised(self, model_output, x_ve, sigma):
        kind = self.config.prediction_type
        if kind == "epsilon":
            return x_ve - sigma * model_output
        if kind == "v_prediction":
            alpha = self._alpha(sigma)
            return x_ve * (alpha * alpha) - model_output * (sigma * alpha)
        return model_output

    def _start(self, x_ve, generator):
        start_step = 0 if self._begin_index is None else max(self._calls[self._begin_index][1], 0)
        sigmas = self._run_sigmas[start_step:]
        solver = self._make_solver()
        final_step = self.config.final_step

        def run(model):
            return _sample(model, x_ve, sigmas, solver, generator=generator, final_step=final_step)

        self._worker = _SolverThread(run)
        self._finalizer = weakref.finalize(self, self._worker.close)

    def _close(self):
        if self._worker is not None:
            self._worker.close()
            if self._finalizer is not None:
                self._finalizer.detach()
        self._worker = None
        self._finalizer = None

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator=None, return_dict: bool = True, **kwargs):
        """Give the solver this model output and return the next point to evaluate the model
        at (``prev_sample``; the final sample after the last call) and the denoised estimate
        (``pred_original_sample``).

        Calls must follow ``timesteps`` in order (as every pipeline loop does); ``timestep``
        itself is not needed. A learned-variance output (twice the channels of ``sample``)
        is cut to its prediction half. With ``return_dict=False`` returns
        ``(prev_sample, pred_original_sample)``."""
        self._check_ready()
        k = self._call_index
        if k >= len(self._calls):
            raise RuntimeError(
                f"step() called {k + 1} times but this run has {len(self._calls)} model calls; call set_timesteps again"
            )
        sigma, step_index = self._calls[k]
        if model_output.ndim == sample.ndim and model_output.shape[1] == 2 * sample.shape[1]:
            # a learned-variance network (improved DDPM): the prediction is the first half
            model_output = model_output[:, : sample.shape[1]]
        work_dtype = torch.promote_types(sample.dtype, torch.float32)
        x_ve = self._to_ve(sample.to(work_dtype), sigma)
        denoised = self._denoised(model_output.to(work_dtype), x_ve, sigma)
        primed = step_index == -1
        if self._worker is None:
            self._start(x_ve, generator)
            kind, value = self._worker.next()  # the solver's first call
            if not primed:
                self._worker.feed(denoised)
                kind, value = self._worker.next()
        else:
            self._worker.feed(denoised)
            kind, value = self._worker.next()
        self._call_index = k + 1
        if kind == "done":
            # the run ends at the grid's last sigma, or at the last non-zero one with "stop"
            ends = self._run_sigmas
            next_sigma = ends[-2] if self.config.final_step == "stop" and ends[-1] == 0.0 else ends[-1]
            self._close()
        else:
            next_sigma = self._calls[k + 1][0]
        prev_sample = self._from_ve(value, next_sigma).to(sample.dtype)
        pred = denoised.to(sample.dtype)
        if not return_dict:
            return prev_sample, pred
        return KSamplingSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Noise clean samples to the level of ``timesteps`` in the pipeline's state
        (``α (x0 + σ n)`` for ``"vp"``, ``x0 + σ n`` for ``"ve"``)."""
        self._check_ready()
        sched_t = self.timesteps.to(torch.float64).cpu()
        sigmas = []
        for t in torch.as_tensor(timesteps).reshape(-1).to(torch.float64).cpu().tolist():
            matches = (sched_t - t).abs() < 1e-6
            if self._begin_index is not None:
                index = self._begin_index
            elif bool(matches.any()):
                index = int(matches.nonzero()[0, 0])
            else:
                raise ValueError(f"timestep {t} is not one of this scheduler's timesteps")
            sigmas.append(self._calls[index][0])
        sigma = torch.tensor(sigmas, dtype=original_samples.dtype, device=original_samples.device)
        sigma = sigma.reshape(-1, *([1] * (original_samples.ndim - 1)))
        x = original_samples + noise * sigma
        if self.config.state == "vp":
            x = x / torch.sqrt(1 + sigma**2)
        return x
