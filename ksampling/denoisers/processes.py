"""Noise processes: how a network's own noise level and input relate to the Karras σ.

Every sampler works in the variance-exploding state space ``x = x0 + σ n``. A network
trained on another process sees its own input and its own time:

* its input is ``x_net = x · input_scale(σ)`` (VP: ``x_vp = α x0 + s n`` with
  ``α = 1/√(1+σ²)``, ``s = σ α``; rectified flow: ``x_t = x/(1+σ)``; VE: ``x`` itself);
* its time is ``sigma_to_t(σ)`` (a discrete training index, a continuous t, or σ itself),
  and ``t_to_sigma`` is the inverse.

``alpha(σ)`` is the signal coefficient of the network's space (``x_net = α x0 + σ α n``);
the v-prediction uses it. All maps are plain differentiable torch code with no host syncs.

The tables of a discrete process are kept in float64 on the CPU and copied once per device
(not registered as buffers, so ``module.half()`` never degrades them); arithmetic runs in
float64 (float32 on devices without it) and the result has the input's dtype, except that
network times from float16/bfloat16 sigmas are float32 (an index near 1000 has a resolution
of 0.5 in float16).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

__all__ = ["NoiseProcess", "VE", "VPDiscrete", "VPContinuous", "RectifiedFlow", "vp_alpha"]


def _work_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def _as_work(value: torch.Tensor) -> torch.Tensor:
    """``value`` as a floating tensor in the working precision of its device."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"expected a tensor, got {type(value).__name__}")
    return value.to(_work_dtype(value.device))


def _out_dtype(value: torch.Tensor) -> torch.dtype:
    return value.dtype if value.is_floating_point() else torch.float64


def _time_dtype(sigma: torch.Tensor) -> torch.dtype:
    """The dtype of a network time computed from ``sigma``: at least float32, because a
    training index near 1000 has a resolution of 0.5 in float16."""
    if sigma.dtype in (torch.float16, torch.bfloat16) or not sigma.is_floating_point():
        return torch.float32 if sigma.is_floating_point() else torch.float64
    return sigma.dtype


def vp_alpha(sigma: torch.Tensor) -> torch.Tensor:
    """α = 1/√(1+σ²): the signal coefficient of the VP process with VE noise level σ."""
    return torch.rsqrt(1 + sigma**2)


class NoiseProcess:
    """Base class: σ ↔ the network's time, and the network's input scaling.

    Subclasses implement :meth:`sigma_to_t`, :meth:`t_to_sigma`, :meth:`alpha` and set
    ``sigma_min`` / ``sigma_max`` (floats: the noise range the network was trained on).
    :meth:`input_scale` defaults to :meth:`alpha` (the network sees ``α x = α x0 + σ α n``).
    """

    sigma_min: float
    sigma_max: float
    #: whether the network's time is a discrete training index (needed by the μ-prediction)
    discrete: bool = False

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def alpha(self, sigma: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def input_scale(self, sigma: torch.Tensor) -> torch.Tensor:
        """The factor the network's input carries: ``x_net = x · input_scale(σ)``."""
        return self.alpha(sigma)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sigma_min={self.sigma_min:.6g}, sigma_max={self.sigma_max:.6g})"


def _check_range(sigma_min, sigma_max):
    for name, value in (("sigma_min", sigma_min), ("sigma_max", sigma_max)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a number, got {type(value).__name__}")
        if not value >= 0 or math.isnan(value):
            raise ValueError(f"{name} must be >= 0, got {value}")
    if not sigma_min < sigma_max:
        raise ValueError(f"sigma_min must be < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    return float(sigma_min), float(sigma_max)


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def _check_positive_finite(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return float(value)


class VE(NoiseProcess):
    """Variance exploding (Song et al. 2021, score SDE; Karras et al. 2022): ``x = x0 + σ n``.

    The network sees ``x`` unscaled (α = 1) and, as its time,

    * ``time="sigma"`` (default): σ itself (score-SDE NCSN++ networks);
    * ``time="log_sigma"``: ln σ;
    * ``time="quarter_log_sigma"``: ¼ ln σ (EDM's c_noise).
    """

    _TIMES = ("sigma", "log_sigma", "quarter_log_sigma")

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, time: str = "sigma"):
        self.sigma_min, self.sigma_max = _check_range(sigma_min, sigma_max)
        self.time = _check_choice("time", time, self._TIMES)

    def sigma_to_t(self, sigma):
        if self.time == "sigma":
            return sigma
        log_sigma = torch.log(sigma)
        return log_sigma if self.time == "log_sigma" else 0.25 * log_sigma

    def t_to_sigma(self, t):
        if self.time == "sigma":
            return t
        return torch.exp(t if self.time == "log_sigma" else 4.0 * t)

    def alpha(self, sigma):
        return torch.ones_like(sigma)

    def __repr__(self) -> str:
        return f"VE(sigma_min={self.sigma_min:g}, sigma_max={self.sigma_max:g}, time={self.time!r})"


def _as_float64_vector(name: str, values) -> torch.Tensor:
    try:
        tensor = torch.as_tensor(values, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"{name} must be a 1-D sequence of numbers: {exc}") from None
    if tensor.ndim != 1 or tensor.numel() < 2:
        raise ValueError(f"{name} must be 1-D with at least 2 entries, got shape {tuple(tensor.shape)}")
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name} must be finite")
    return tensor.clone()


def _cosine_alphas_cumprod_betas(num_train_timesteps: int, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal (2021) eq. 17: ᾱ(t) = cos²((t/T + s)/(1 + s) · π/2), s = 0.008, and
    β_i = min(1 − ᾱ((i+1)/T)/ᾱ(i/T), 0.999) (the cap avoids the singularity at t = T)."""
    steps = torch.arange(num_train_timesteps + 1, dtype=torch.float64) / num_train_timesteps
    alpha_bar = torch.cos((steps + 0.008) / 1.008 * math.pi / 2) ** 2
    return torch.clamp(1 - alpha_bar[1:] / alpha_bar[:-1], max=max_beta)


def _rescale_zero_terminal_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2024 ("Common Diffusion Noise Schedules and Sample Steps Are Flawed"),
    Algorithm 1: shift √ᾱ so that its last value is 0 and scale it so that the first is kept."""
    root = alphas_cumprod.sqrt()
    first, last = root[0].item(), root[-1].item()
    root = (root - last) * (first / (first - last))
    return root**2


class VPDiscrete(NoiseProcess):
    """Discrete-time variance preserving process (DDPM, Ho et al. 2020; Stable Diffusion).

    The training schedule gives ᾱ_k (``alphas_cumprod``), k = 0 … T−1, and so the training
    noise levels ``σ_k = √((1 − ᾱ_k)/ᾱ_k)`` (``.sigmas``, ascending, float64). The network
    sees ``x_vp = α x`` with ``α = 1/√(1+σ²)`` and its time is a training index:

    * ``time="interpolate"``: the fractional index, interpolated linearly in log σ between the
      neighbouring training sigmas and clamped to [0, T−1] (k-diffusion's
      ``DiscreteSchedule.sigma_to_t(quantize=False)``);
    * ``time="round"``: the index whose log σ_k is nearest (``quantize=True``; ties go to the
      lower index), returned as an int64 tensor as k-diffusion does (embedding tables need it).

    ``t_to_sigma`` interpolates log σ linearly over the (fractional) index.

    Exactly one source of the schedule: ``betas``, ``alphas_cumprod`` or ``beta_schedule``:

    * ``"linear"``: β linear from ``beta_start`` to ``beta_end`` (DDPM: 1e-4 … 0.02);
    * ``"scaled_linear"``: √β linear (Stable Diffusion: 0.00085 … 0.012);
    * ``"squaredcos_cap_v2"``: Nichol & Dhariwal's cosine schedule, β capped at 0.999.

    These are the numbers of diffusers' ``DDPMScheduler``, computed here in float64 (diffusers
    uses float32). ``rescale_zero_terminal_snr=True`` applies Lin et al. (2024), Algorithm 1:
    ᾱ_{T−1} becomes 0, i.e. σ_max = ∞, which no sampler can start from; as diffusers'
    ``EulerDiscreteScheduler`` does, the last ᾱ is then clamped to 2⁻²⁴ (σ_max ≈ 4096).
    ``.betas`` keeps the unclamped rescaled schedule (last β = 1); ``.alphas_cumprod`` and
    ``.sigmas`` the clamped one.
    """

    discrete = True
    _SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
    _DEFAULT_RANGE = {"linear": (1e-4, 0.02), "scaled_linear": (0.00085, 0.012)}
    #: the terminal ᾱ used after zero-terminal-SNR rescaling (diffusers' EulerDiscreteScheduler)
    ZERO_SNR_ALPHA_CUMPROD = 2.0**-24

    def __init__(
        self,
        betas: Sequence[float] | torch.Tensor | None = None,
        alphas_cumprod: Sequence[float] | torch.Tensor | None = None,
        beta_schedule: str = "linear",
        num_train_timesteps: int = 1000,
        beta_start: float | None = None,
        beta_end: float | None = None,
        rescale_zero_terminal_snr: bool = False,
        time: str = "interpolate",
    ):
        self.time = _check_choice("time", time, ("interpolate", "round"))
        if betas is not None and alphas_cumprod is not None:
            raise ValueError("give either betas or alphas_cumprod, not both")
        if betas is not None:
            betas = _as_float64_vector("betas", betas)
            if not ((betas > 0).all() and (betas <= 1).all()):
                raise ValueError("betas must lie in (0, 1]")
            alphas_cumprod = torch.cumprod(1 - betas, 0)
            self.beta_schedule = None
        elif alphas_cumprod is not None:
            alphas_cumprod = _as_float64_vector("alphas_cumprod", alphas_cumprod)
            if not ((alphas_cumprod[:-1] > 0).all() and (alphas_cumprod >= 0).all() and (alphas_cumprod <= 1).all()):
                raise ValueError("alphas_cumprod must lie in (0, 1] (only the last may be 0)")
            if not (alphas_cumprod[1:] < alphas_cumprod[:-1]).all():
                raise ValueError("alphas_cumprod must be strictly decreasing")
            self.beta_schedule = None
        else:
            self.beta_schedule = _check_choice("beta_schedule", beta_schedule, self._SCHEDULES)
            if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, int):
                raise TypeError(f"num_train_timesteps must be an int, got {type(num_train_timesteps).__name__}")
            if num_train_timesteps < 2:
                raise ValueError(f"num_train_timesteps must be >= 2, got {num_train_timesteps}")
            alphas_cumprod = torch.cumprod(1 - self._schedule_betas(num_train_timesteps, beta_start, beta_end), 0)
        if alphas_cumprod[-1].item() == 0 and not rescale_zero_terminal_snr:
            raise ValueError(
                "the schedule ends at alphas_cumprod = 0 (zero terminal SNR, sigma_max = inf): "
                "pass rescale_zero_terminal_snr=True, which clamps the last value to 2**-24"
            )
        if rescale_zero_terminal_snr:
            alphas_cumprod = _rescale_zero_terminal_snr(alphas_cumprod)
        self.rescale_zero_terminal_snr = bool(rescale_zero_terminal_snr)
        self.betas = torch.cat([1 - alphas_cumprod[:1], 1 - alphas_cumprod[1:] / alphas_cumprod[:-1]])
        if rescale_zero_terminal_snr:
            alphas_cumprod = alphas_cumprod.clone()
            alphas_cumprod[-1] = self.ZERO_SNR_ALPHA_CUMPROD
        self.alphas_cumprod = alphas_cumprod
        self.sigmas = ((1 - alphas_cumprod) / alphas_cumprod).sqrt()
        self.log_sigmas = self.sigmas.log()
        if not (self.log_sigmas[1:] > self.log_sigmas[:-1]).all():
            raise ValueError("the training sigmas must be strictly increasing (check the schedule)")
        self.num_train_timesteps = len(self.sigmas)
        self.sigma_min = float(self.sigmas[0])
        self.sigma_max = float(self.sigmas[-1])
        self._tables: dict = {}
        self._interpolation_tables: dict = {}

    def _schedule_betas(self, n, beta_start, beta_end):
        if self.beta_schedule == "squaredcos_cap_v2":
            if beta_start is not None or beta_end is not None:
                raise ValueError("beta_start/beta_end do not apply to beta_schedule='squaredcos_cap_v2'")
            return _cosine_alphas_cumprod_betas(n)
        default_start, default_end = self._DEFAULT_RANGE[self.beta_schedule]
        start = default_start if beta_start is None else beta_start
        end = default_end if beta_end is None else beta_end
        for name, value in (("beta_start", start), ("beta_end", end)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
                raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")
        if self.beta_schedule == "linear":
            return torch.linspace(start, end, n, dtype=torch.float64)
        return torch.linspace(start**0.5, end**0.5, n, dtype=torch.float64) ** 2

    def _log_sigmas_on(self, device: torch.device) -> torch.Tensor:
        key = (device.type, device.index)
        table = self._tables.get(key)
        if table is None:
            table = self._tables[key] = self.log_sigmas.to(device=device, dtype=_work_dtype(device))
        return table

    def _interpolation_tables_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log σ_1 … log σ_{T−2}, log σ_k, 1/(log σ_{k+1} − log σ_k)) on ``device``, made once:
        the per-call work of :meth:`sigma_to_t` is then a search, two gathers and three ops."""
        key = (device.type, device.index)
        tables = self._interpolation_tables.get(key)
        if tables is None:
            log_sigmas = self._log_sigmas_on(device)
            tables = (log_sigmas[1:-1].contiguous(), log_sigmas, 1 / (log_sigmas[1:] - log_sigmas[:-1]))
            self._interpolation_tables[key] = tables
        return tables

    def sigma_to_t(self, sigma):
        log_sigma = _as_work(sigma).log()
        if self.time == "round":
            log_sigmas = self._log_sigmas_on(sigma.device)
            nearest = (log_sigma.reshape(-1, 1) - log_sigmas).abs().argmin(dim=1)
            return nearest.reshape(sigma.shape)
        inner, log_sigmas, inv_gaps = self._interpolation_tables_on(sigma.device)
        # low: the last training index k with log σ_k <= log σ, kept inside [0, T−2] so that
        # both neighbours exist (searching the inner entries does both at once);
        # t = k + w, w = (log σ − log σ_k)/(log σ_{k+1} − log σ_k), clamped to [0, 1] beyond the table.
        low = torch.searchsorted(inner, log_sigma.contiguous(), right=True)
        w = ((log_sigma - log_sigmas[low]) * inv_gaps[low]).clamp(0, 1)
        return (low + w).to(_time_dtype(sigma))

    def t_to_sigma(self, t):
        log_sigmas = self._log_sigmas_on(t.device)
        t = _as_work(t).clamp(0, len(log_sigmas) - 1)
        low = t.floor().long()
        high = t.ceil().long()
        w = t - low
        return torch.exp((1 - w) * log_sigmas[low] + w * log_sigmas[high]).to(_out_dtype(t))

    def alpha(self, sigma):
        return vp_alpha(sigma)

    def _sigma_prev(self, t: torch.Tensor) -> torch.Tensor:
        """σ of the training step before (fractional) index t. Index −1 is the data (σ = 0);
        between −1 and 0 σ is interpolated linearly, so that the map is continuous."""
        before = t - 1
        inside = self.t_to_sigma(before.clamp(min=0))
        return torch.where(before >= 0, inside, (1 + before) * self.sigma_min)

    def posterior(self, t: torch.Tensor):
        """DDPM's posterior q(x_{t−1} | x_t, x0) of the step from index t to t − 1, in the
        network's (VP) space (Ho et al. 2020, eqs. 6–7):

        ``μ = c0 · x0 + c1 · x_t`` with ``c0 = √ᾱ_{t−1} β_t/(1 − ᾱ_t)``,
        ``c1 = √(1 − β_t) (1 − ᾱ_{t−1})/(1 − ᾱ_t)``, and ``β̃_t = β_t (1 − ᾱ_{t−1})/(1 − ᾱ_t)``.

        Written with σ = σ(t) and σ_p = σ(t − 1) (α = 1/√(1+σ²)), these are
        ``c0 = α_p (1 − σ_p²/σ²)``, ``c1 = α_p σ_p²/(α σ²)`` and
        ``β̃ = σ_p² (σ² − σ_p²)/(σ² (1 + σ_p²))``. Returns ``(c0, c1, log β̃)`` with log β̃
        clipped at index < 1 to its value at index 1 (β̃_0 = 0), as improved DDPM does.
        """
        t = _as_work(t)
        sigma, sigma_prev = self.t_to_sigma(t), self._sigma_prev(t)
        ratio = (sigma_prev / sigma) ** 2
        alpha, alpha_prev = vp_alpha(sigma), vp_alpha(sigma_prev)
        c0 = alpha_prev * (1 - ratio)
        c1 = alpha_prev * ratio / alpha
        t_clipped = t.clamp(min=1)
        sigma_c, sigma_prev_c = self.t_to_sigma(t_clipped), self._sigma_prev(t_clipped)
        log_beta_tilde = torch.log(sigma_prev_c**2 * (sigma_c**2 - sigma_prev_c**2) / (sigma_c**2 * (1 + sigma_prev_c**2)))
        return c0, c1, log_beta_tilde

    def __repr__(self) -> str:
        source = self.beta_schedule or "custom"
        return (
            f"VPDiscrete({source}, T={self.num_train_timesteps}, time={self.time!r}, "
            f"zero_snr={self.rescale_zero_terminal_snr}, sigma_min={self.sigma_min:.6g}, sigma_max={self.sigma_max:.6g})"
        )


class VPContinuous(NoiseProcess):
    """Continuous-time variance preserving process (score SDE, Song et al. 2021), t ∈ [t_min, t_max].

    ``x_vp(t) = α_t x0 + s_t n`` with ``s_t = √(1 − α_t²)``, so ``σ = s_t/α_t`` and
    ``σ² = exp(−2 log α_t) − 1``:

    * ``schedule="linear"`` (VP SDE, β(t) = β_min + t(β_max − β_min)):
      ``log α_t = −¼ t² (β_max − β_min) − ½ t β_min``; inverted in closed form,
      ``t = 2L / (β_min + √(β_min² + 2 (β_max − β_min) L))`` with ``L = ln(1+σ²)``
      (the numerically stable root, as DPM-Solver's ``NoiseScheduleVP``);
    * ``schedule="cosine"`` (Nichol & Dhariwal 2021 in continuous time, as DPM-Solver):
      ``log α_t = ln cos((t+s)/(1+s) · π/2) − ln cos(s/(1+s) · π/2)``, s = 0.008,
      with t_max = 0.9946 by default (beyond it α_t collapses).

    The network gets ``t · t_scale`` (999 or 1000 for networks trained on discrete-looking
    times); ``sigma_to_t`` returns that network time. ``t_min`` defaults to 1e-3 (score SDE's
    sampling ε).
    """

    _COSINE_S = 0.008

    def __init__(
        self,
        schedule: str = "linear",
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        t_scale: float = 1.0,
        t_min: float = 1e-3,
        t_max: float | None = None,
    ):
        self.schedule = _check_choice("schedule", schedule, ("linear", "cosine"))
        self.beta_min = _check_positive_finite("beta_min", beta_min)
        self.beta_max = _check_positive_finite("beta_max", beta_max)
        if not self.beta_max > self.beta_min:
            raise ValueError(f"beta_max must be > beta_min, got beta_min={beta_min}, beta_max={beta_max}")
        self.t_scale = _check_positive_finite("t_scale", t_scale)
        if t_max is None:
            t_max = 0.9946 if schedule == "cosine" else 1.0
        self.t_min = _check_positive_finite("t_min", t_min)
        self.t_max = _check_positive_finite("t_max", t_max)
        if not self.t_min < self.t_max <= 1.0:
            raise ValueError(f"need 0 < t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
        self._log_cos_0 = math.log(math.cos(self._COSINE_S / (1 + self._COSINE_S) * math.pi / 2))
        self.sigma_min = self._sigma_of_unit_time(self.t_min)
        self.sigma_max = self._sigma_of_unit_time(self.t_max)

    def _sigma_of_unit_time(self, t: float) -> float:
        return float(self._t_to_sigma_unit(torch.tensor(t, dtype=torch.float64)))

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        """log α_t at unit time t ∈ [0, 1] (DPM-Solver's ``marginal_log_mean_coeff``)."""
        if self.schedule == "linear":
            return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min
        s = self._COSINE_S
        return torch.log(torch.cos((t + s) / (1 + s) * math.pi / 2)) - self._log_cos_0

    def _t_to_sigma_unit(self, t):
        return torch.sqrt(torch.expm1(-2 * self.log_alpha(t)))

    def t_to_sigma(self, t):
        out = _out_dtype(t)
        return self._t_to_sigma_unit(_as_work(t) / self.t_scale).to(out)

    def sigma_to_t(self, sigma):
        sigma_w = _as_work(sigma)
        log1p_sigma2 = torch.log1p(sigma_w**2)  # = −2 log α
        if self.schedule == "linear":
            spread = self.beta_max - self.beta_min
            t = 2 * log1p_sigma2 / (self.beta_min + torch.sqrt(self.beta_min**2 + 2 * spread * log1p_sigma2))
        else:
            s = self._COSINE_S
            cos_theta = torch.exp(-0.5 * log1p_sigma2 + self._log_cos_0)
            t = torch.arccos(cos_theta) * (2 * (1 + s) / math.pi) - s
        return (t * self.t_scale).to(_time_dtype(sigma))

    def alpha(self, sigma):
        return vp_alpha(sigma)

    def __repr__(self) -> str:
        betas = f", beta_min={self.beta_min:g}, beta_max={self.beta_max:g}" if self.schedule == "linear" else ""
        return f"VPContinuous({self.schedule!r}{betas}, t_scale={self.t_scale:g}, t_min={self.t_min:g}, t_max={self.t_max:g})"


class RectifiedFlow(NoiseProcess):
    """Rectified flow / flow matching (Liu et al. 2023; Lipman et al. 2023; SD3, Esser et al. 2024).

    ``x_t = (1 − t) x0 + t n``, t ∈ [0, 1]. Dividing by 1 − t gives the VE form with
    ``σ = t/(1 − t)`` (t = σ/(1+σ)); the network sees ``x_t = x/(1+σ)`` (α = 1/(1+σ)) and the
    time ``t · t_scale`` (SD3 and Flux: 1000).

    ``shift`` is metadata only: SD3's time shift ``t' = shift·t/(1 + (shift−1) t)`` is
    ``σ' = shift·σ``, a matter of the sampling grid (:func:`ksampling.schedules.flow_shift`),
    not of the network. Here it only sets the default range: ``sigma_min = shift·σ(t_min)``,
    ``sigma_max = shift·σ(t_max)`` with t_min = 1e-3 and t_max = 1 − 1e-3 (t = 1 is σ = ∞).
    """

    def __init__(self, shift: float = 1.0, t_scale: float = 1.0, t_min: float = 1e-3, t_max: float = 1 - 1e-3):
        self.shift = _check_positive_finite("shift", shift)
        self.t_scale = _check_positive_finite("t_scale", t_scale)
        self.t_min = _check_positive_finite("t_min", t_min)
        self.t_max = _check_positive_finite("t_max", t_max)
        if not self.t_min < self.t_max < 1:
            raise ValueError(f"need 0 < t_min < t_max < 1, got t_min={t_min}, t_max={t_max}")
        self.sigma_min = self.shift * self.t_min / (1 - self.t_min)
        self.sigma_max = self.shift * self.t_max / (1 - self.t_max)

    def sigma_to_t(self, sigma):
        sigma = sigma.to(_time_dtype(sigma))
        return sigma / (1 + sigma) * self.t_scale

    def t_to_sigma(self, t):
        t = t / self.t_scale
        return t / (1 - t)

    def alpha(self, sigma):
        return 1 / (1 + sigma)

    def __repr__(self) -> str:
        return f"RectifiedFlow(shift={self.shift:g}, t_scale={self.t_scale:g})"
