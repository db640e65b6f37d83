"""diffusers models as ksampling denoisers: :func:`from_diffusers` (the model side of
:mod:`ksampling.integrations.diffusers`).

:func:`from_diffusers` turns a diffusers model (``UNet2DModel``, ``UNet2DConditionModel``, a
transformer) and its scheduler (or scheduler config) into the denoiser D(x; σ) that
:func:`ksampling.sample` runs on. :func:`process_from_config` gives the ksampling noise process
of a scheduler config.

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
from typing import Any, Mapping

import torch

try:
    import diffusers  # noqa: F401
except ImportError as _exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "ksampling.integrations.diffusers needs diffusers: pip install ksampling[diffusers]"
    ) from _exc

from ..denoisers.processes import RectifiedFlow, VPDiscrete
from ..denoisers.wrappers import NetworkDenoiser

__all__ = ["from_diffusers", "DiffusersNetwork", "process_from_config", "PREDICTION_TYPES", "TIMESTEP_MODES"]

#: diffusers' prediction_type -> ksampling's prediction
PREDICTION_TYPES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v", "flow": "flow"}
TIMESTEP_MODES = ("interpolate", "round", "linear")


def _config_of(scheduler_or_config) -> dict:
    config = scheduler_or_config if isinstance(scheduler_or_config, Mapping) else getattr(scheduler_or_config, "config", None)
    if isinstance(config, Mapping):
        source = config.get("source_config")
        # a KSamplingScheduler's config: the schedule is its source scheduler's
        return dict(source) if isinstance(source, Mapping) else dict(config)
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


def flow_shift(config: Mapping) -> float:
    """A FlowMatch config's ``shift`` (1.0 when absent or ``None``), checked: a shift of 0 or
    below, or a non-number, is an error rather than a silent 1.0."""
    shift = config.get("shift", 1.0)
    if shift is None:
        return 1.0
    if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not math.isfinite(shift) or shift <= 0:
        raise ValueError(f"the scheduler config's shift must be a finite number > 0, got {shift!r}")
    return float(shift)


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
        return RectifiedFlow(shift=flow_shift(config), t_scale=float(num_train_timesteps))
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


def model_output_tensor(out) -> torch.Tensor:
    """The tensor of a diffusers model's output: ``.sample`` of an output object, the first
    element of a tuple (``return_dict=False``), or the tensor itself; anything else (``None``,
    a dict without ``sample``) is a ``TypeError`` naming what the model returned."""
    if hasattr(out, "sample"):
        out = out.sample
    elif isinstance(out, (tuple, list)) and out:
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise TypeError(
            "the diffusers model must return a tensor, an output object with .sample or a tuple whose first "
            f"element is a tensor; got {type(out).__name__}"
        )
    return out


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
        return model_output_tensor(out).to(x_net.dtype)


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


