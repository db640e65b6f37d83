"""Sigma schedules: the grids ``σ_0 > σ_1 > … > σ_{n-1} > 0`` a sampler steps along.

Every function returns ``n`` sigmas plus a trailing 0 (``n`` steps, the last one to σ = 0)
as a float64 1-D tensor, descending, on ``device``. All values are computed on the host in
float64; nothing here depends on torch's default dtype.

| function | spacing | source |
|---|---|---|
| `karras` | uniform in σ^(1/ρ) | EDM, Karras et al. 2022, eq. 5 |
| `exponential` | uniform in log σ | DPM-Solver's uniform logSNR grid (Lu et al. 2022) |
| `polyexponential` | log σ uniform in a power ρ of the ramp | k-diffusion |
| `vp` | the continuous VP-SDE's σ(t), t uniform | Song et al. 2021 |
| `discrete` | uniform in a discrete model's own time | DDPM / diffusers spacings (Lin et al. 2024) |
| `kl_optimal` | uniform in arctan σ | Align Your Steps' closed form (Sabour et al. 2024) |
| `ays` | NVIDIA's published 10-step tables | Align Your Steps (Sabour et al. 2024) |
| `beta` | σ at the quantiles of a Beta(α, β) | Lee et al. 2024 |
| `flow` | uniform rectified-flow time, time-shifted | SD3, Esser et al. 2024 |
| `flow_shift` | the SD3 time shift applied to any grid | SD3, Esser et al. 2024 |
| `simple`, `ddim_uniform`, `normal`, `sgm_uniform`, `beta_discrete` | on a model's training sigmas | ComfyUI's schedulers |
| `linear_quadratic` | linear, then quadratic in σ/σ_max | Genmo's Mochi (ComfyUI) |
| `laplace` | log σ at Laplace quantiles | Hang et al. 2024 (ComfyUI) |
| `gits` | GITS' published presets for SD 1.x | Chen et al. 2024, arXiv:2405.11326 |

:func:`comfyui` gives ComfyUI's grid for each of its scheduler names (:data:`COMFYUI_SCHEDULERS`).

:data:`SCHEDULES`, :func:`available` and :func:`get` give the schedules that are defined by
``(n, sigma_min, sigma_max)`` by name, so that benchmarks can loop over them.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Callable

import torch

__all__ = [
    "karras",
    "exponential",
    "polyexponential",
    "vp",
    "discrete",
    "kl_optimal",
    "ays",
    "AYS_TABLES",
    "beta",
    "beta_ppf",
    "flow",
    "flow_shift",
    "simple",
    "sgm_uniform",
    "ddim_uniform",
    "normal",
    "beta_discrete",
    "linear_quadratic",
    "laplace",
    "gits",
    "comfyui",
    "COMFYUI_SCHEDULERS",
    "SCHEDULES",
    "available",
    "get",
]


# ----------------------------------------------------------------------------------------
# validation


def _check_n(n, name: str = "n") -> int:
    if isinstance(n, bool) or not isinstance(n, Integral):
        raise TypeError(f"{name} must be an int (the number of steps), got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"{name} must be >= 1 (the number of steps), got {n}")
    return int(n)


def _check_real(value, name: str) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _check_positive(value, name: str) -> float:
    value = _check_real(value, name)
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def _check_range(sigma_min, sigma_max) -> tuple[float, float]:
    sigma_min = _check_positive(sigma_min, "sigma_min")
    sigma_max = _check_positive(sigma_max, "sigma_max")
    if not sigma_min < sigma_max:
        raise ValueError(f"sigma_min must be < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    return sigma_min, sigma_max


def _ramp(n: int) -> list[float]:
    """``n`` points uniform on [0, 1] (just [0] for n = 1), as torch.linspace computes them."""
    return torch.linspace(0.0, 1.0, n, dtype=torch.float64).tolist()


def _finish(values, device) -> torch.Tensor:
    """Append the final 0 and put the grid on ``device`` as float64."""
    sigmas = torch.as_tensor(values, dtype=torch.float64)
    return torch.cat([sigmas, sigmas.new_zeros(1)]).to(device)


# ----------------------------------------------------------------------------------------
# closed-form schedules on [sigma_min, sigma_max]


def karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0, device="cpu") -> torch.Tensor:
    """EDM's schedule (Karras et al. 2022, "Elucidating the Design Space", eq. 5):

    ``σ_i = (σ_max^(1/ρ) + i/(n−1) · (σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ``, i = 0 … n−1,

    uniform in σ^(1/ρ); ρ = 7 concentrates steps at low noise. Same values as k-diffusion's
    ``get_sigmas_karras``.
    """
    n = _check_n(n)
    sigma_min, sigma_max = _check_range(sigma_min, sigma_max)
    rho = _check_positive(rho, "rho")
    ramp = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
    min_inv_rho = sigma_min ** (1.0 / rho)
    max_inv_rho = sigma_max ** (1.0 / rho)
    return _finish((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho, device)


def exponential(n: int, sigma_min: float, sigma_max: float, device="cpu") -> torch.Tensor:
    """Uniform in log σ: ``log σ_i = log σ_max + i/(n−1) · (log σ_min − log σ_max)``.

    In the VE state space λ = −log σ is the half-log-SNR time of the exponential integrators,
    so this is DPM-Solver's uniform logSNR grid (Lu et al. 2022, "time_uniform" = "logSNR").
    Same values as k-diffusion's ``get_sigmas_exponential``.
    """
    n = _check_n(n)
    sigma_min, sigma_max = _check_range(sigma_min, sigma_max)
    log_sigmas = torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64)
    return _finish(log_sigmas.exp(), device)


def polyexponential(
    n: int, sigma_min: float, sigma_max: float, rho: float = 1.0, device="cpu"
) -> torch.Tensor:
    """Polynomial in log σ (k-diffusion's ``get_sigmas_polyexponential``):

    ``log σ_i = log σ_min + (1 − i/(n−1))^ρ · (log σ_max − log σ_min)``;

    ρ = 1 is :func:`exponential`, ρ > 1 puts more steps at low noise.
    """
    n = _check_n(n)
    sigma_min, sigma_max = _check_range(sigma_min, sigma_max)
    rho = _check_positive(rho, "rho")
    ramp = torch.linspace(1.0, 0.0, n, dtype=torch.float64) ** rho
    log_min, log_max = math.log(sigma_min), math.log(sigma_max)
    return _finish(torch.exp(ramp * (log_max - log_min) + log_min), device)


def vp(n: int, beta_d: float = 19.9, beta_min: float = 0.1, eps_s: float = 1e-3, device="cpu") -> torch.Tensor:
    """The continuous VP-SDE (Song et al. 2021, "Score-Based Generative Modeling through
    SDEs") at times uniform in t from 1 to ``eps_s``, in the VE state space:

    ``σ(t) = sqrt(exp(β_d t²/2 + β_min t) − 1)``,  β(t) = β_min + β_d t

    (EDM Table 1, "VP"; k-diffusion's ``get_sigmas_vp``). Defaults: β_max = β_min + β_d = 20.
    """
    n = _check_n(n)
    beta_d = _check_real(beta_d, "beta_d")
    beta_min = _check_real(beta_min, "beta_min")
    eps_s = _check_real(eps_s, "eps_s")
    if beta_d < 0:
        raise ValueError(f"beta_d must be >= 0, got {beta_d}")
    if beta_min < 0:
        raise ValueError(f"beta_min must be >= 0, got {beta_min}")
    if beta_d + beta_min <= 0:
        raise ValueError("beta_d + beta_min must be > 0 (otherwise σ(t) = 0 for every t)")
    if not 0 < eps_s < 1:
        raise ValueError(f"eps_s must be in (0, 1) (the last time of the grid), got {eps_s}")
    t = torch.linspace(1.0, eps_s, n, dtype=torch.float64)
    # expm1 keeps σ(t) accurate at small t, where exp(.) − 1 would cancel
    return _finish(torch.sqrt(torch.expm1(beta_d * t**2 / 2 + beta_min * t)), device)


def kl_optimal(n: int, sigma_min: float, sigma_max: float, device="cpu") -> torch.Tensor:
    """Align Your Steps' closed-form schedule (Sabour, Fidler & Kreis 2024, "Align Your
    Steps", eq. 10): uniform in arctan σ,

    ``σ_i = tan((1 − t_i) · atan σ_max + t_i · atan σ_min)``,  t_i = i/(n−1),

    which minimises the KL-divergence upper bound for Euler on Gaussian (isotropic) data.

    Computed without cancellation for any σ_max: tan θ near θ = π/2 loses the digits that
    atan σ_max rounds away (σ_max = 1e17 came out as 1.6e16), so where σ_i ≥ 1 the same
    angle is written as its complement, ``σ_i = 1/tan((1 − t_i) · atan(1/σ_max) + t_i · atan(1/σ_min))``
    (π/2 − atan σ = atan(1/σ)).
    """
    n = _check_n(n)
    sigma_min, sigma_max = _check_range(sigma_min, sigma_max)
    t = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
    angle = (1 - t) * math.atan(sigma_max) + t * math.atan(sigma_min)
    complement = (1 - t) * math.atan(1 / sigma_max) + t * math.atan(1 / sigma_min)
    return _finish(torch.where(angle < math.pi / 4, torch.tan(angle), 1 / torch.tan(complement)), device)


# ----------------------------------------------------------------------------------------
# Beta-quantile spacing


def _log_beta_function(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def _incomplete_beta_fraction(x: float, a: float, b: float) -> float:
    """The continued fraction of I_x(a, b) (DLMF 8.17.22), evaluated by the modified
    Lentz method; converges fast for x < (a + 1)/(a + b + 2)."""
    tiny = 1e-300
    c = 1.0
    d = 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 1000):
        # even term d_{2m}, then odd term d_{2m+1}
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            delta = c * d
            result *= delta
        if abs(delta - 1.0) < 1e-16:
            return result
    raise RuntimeError(f"incomplete beta continued fraction did not converge (x={x}, a={a}, b={b})")


def _beta_tails(x: float, a: float, b: float) -> tuple[float, float]:
    """``(I_x(a, b), 1 − I_x(a, b))``, the regularised incomplete beta function and its
    complement, in float64; the smaller tail is computed directly (not as 1 − the other)."""
    if x <= 0.0:
        return 0.0, 1.0
    if x >= 1.0:
        return 1.0, 0.0
    log_front = a * math.log(x) + b * math.log1p(-x) - _log_beta_function(a, b)
    if x < (a + 1.0) / (a + b + 2.0):
        lower = math.exp(log_front) * _incomplete_beta_fraction(x, a, b) / a
        return lower, 1.0 - lower
    # symmetry 1 − I_x(a, b) = I_{1−x}(b, a) keeps the fraction in its fast region
    upper = math.exp(log_front) * _incomplete_beta_fraction(1.0 - x, b, a) / b
    return 1.0 - upper, upper


def beta_ppf(q: float, a: float, b: float) -> float:
    """Quantile function of the Beta(a, b) distribution: the x with I_x(a, b) = q.

    Newton's method on the regularised incomplete beta function (continued fraction),
    safeguarded by bisection, in float64; the same values as ``scipy.stats.beta.ppf``
    without needing scipy.
    """
    q = _check_real(q, "q")
    a = _check_positive(a, "a")
    b = _check_positive(b, "b")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1], got {q}")
    if q == 0.0:
        return 0.0
    if q == 1.0:
        return 1.0
    log_norm = _log_beta_function(a, b)
    lo, hi = 0.0, 1.0
    # start from the leading term of the tail the quantile lies in, I_x ≈ x^a / (a B(a, b))
    # near 0 (and its mirror near 1): Newton then converges even when x is tiny
    if q <= 0.5:
        x = math.exp((math.log(q * a) + log_norm) / a)
    else:
        x = -math.expm1((math.log((1.0 - q) * b) + log_norm) / b)
    x = min(max(x, 1e-300), 1.0 - 1e-16) if math.isfinite(x) else 0.5
    for _ in range(500):
        lower, upper = _beta_tails(x, a, b)
        # compare with the tail that q can represent accurately (1 − q is exact for q >= 1/2)
        f = lower - q if q <= 0.5 else (1.0 - q) - upper
        if f == 0.0:
            return x
        if f > 0:
            hi = x
        else:
            lo = x
        log_pdf = (a - 1.0) * math.log(x) + (b - 1.0) * math.log1p(-x) - log_norm
        newton = x - f * math.exp(-log_pdf) if log_pdf > -700 else math.nan
        if lo < newton < hi:
            if abs(newton - x) <= 2e-16 * x:
                return newton
            x = newton
        else:
            # Newton would leave the bracket: bisect; adjacent floats mean we are done
            middle = 0.5 * (lo + hi) if lo == 0.0 or hi <= 2.0 * lo else math.sqrt(lo * hi)
            if middle in (lo, hi):
                return x
            x = middle
    return x


def beta(
    n: int, sigma_min: float, sigma_max: float, alpha: float = 0.6, beta: float = 0.6, device="cpu"
) -> torch.Tensor:
    """Beta-quantile spacing (Lee et al. 2024, "Beta Sampling is All You Need"):

    ``σ_i = σ_min + F⁻¹(1 − i/(n−1)) · (σ_max − σ_min)``,  F = CDF of Beta(α, β),

    i.e. the time grid is the quantiles of Beta(α, β), which for α = β = 0.6 puts steps
    densely at both ends of the trajectory; mapped linearly onto [σ_min, σ_max] as diffusers'
    ``use_beta_sigmas`` does (the quantile is computed here, without scipy).

    The upper half is measured down from σ_max with the mirrored quantile
    ``1 − F⁻¹_{α,β}(1 − t) = F⁻¹_{β,α}(t)``, so that no digits are lost to ``1 − tiny``.
    Small α and β crowd the steps at both ends closer than float64 resolves (α = β = 0.01
    puts 1 − 10⁻²⁰ among the quantiles); such a grid is not strictly descending and is
    refused with a ``ValueError`` rather than returned with repeated sigmas.
    """
    n = _check_n(n)
    sigma_min, sigma_max = _check_range(sigma_min, sigma_max)
    alpha = _check_positive(alpha, "alpha")
    beta_ = _check_positive(beta, "beta")
    width = sigma_max - sigma_min
    values = []
    for t in _ramp(n):
        from_max = beta_ppf(t, beta_, alpha)  # = 1 − F⁻¹_{α,β}(1 − t), accurate when small
        values.append(sigma_max - from_max * width if from_max < 0.5 else sigma_min + beta_ppf(1.0 - t, alpha, beta_) * width)
    for i in range(n - 1):
        if not values[i] > values[i + 1]:
            raise ValueError(
                f"beta(alpha={alpha:g}, beta={beta_:g}) with n={n} puts steps {i} and {i + 1} closer together than "
                f"float64 resolves (both sigma = {values[i]!r}); use larger alpha and beta or fewer steps"
            )
    return _finish(values, device)


# ----------------------------------------------------------------------------------------
# discrete-time models


def _train_sigmas(train_sigmas, alphas_cumprod) -> torch.Tensor:
    if (train_sigmas is None) == (alphas_cumprod is None):
        raise ValueError("pass exactly one of train_sigmas or alphas_cumprod")
    if alphas_cumprod is not None:
        alphas_cumprod = torch.as_tensor(alphas_cumprod, dtype=torch.float64).cpu()
        if alphas_cumprod.ndim != 1 or alphas_cumprod.numel() < 2:
            raise ValueError("alphas_cumprod must be a 1-D sequence of at least 2 values")
        if not bool(((alphas_cumprod > 0) & (alphas_cumprod < 1)).all()):
            raise ValueError(
                "alphas_cumprod must lie in (0, 1); for a zero-terminal-SNR schedule clamp the last "
                "value (diffusers uses 2**-24)"
            )
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod).sqrt()
        name = "alphas_cumprod"
    else:
        sigmas = torch.as_tensor(train_sigmas, dtype=torch.float64).cpu()
        name = "train_sigmas"
        if sigmas.ndim != 1 or sigmas.numel() < 2:
            raise ValueError("train_sigmas must be a 1-D sequence of at least 2 values")
    if not bool(torch.isfinite(sigmas).all()) or not bool((sigmas > 0).all()):
        raise ValueError(f"{name} must give finite, positive sigmas")
    if not bool((sigmas[1:] > sigmas[:-1]).all()):
        raise ValueError(f"{name} must give strictly increasing sigmas (t = 0 … T−1, σ_t ascending)")
    return sigmas


def discrete(
    n: int,
    train_sigmas=None,
    spacing: str = "linspace",
    steps_offset: int = 0,
    interpolate: bool | str = True,
    *,
    alphas_cumprod=None,
    device="cpu",
) -> torch.Tensor:
    """Uniform steps in a discrete model's own time t ∈ {0, …, T−1}.

    ``train_sigmas`` are the model's ascending training sigmas ``σ_t = sqrt((1 − ᾱ_t)/ᾱ_t)``
    (or pass ``alphas_cumprod=ᾱ``). The time grid is one of the spacings of Lin et al. 2024
    ("Common Diffusion Noise Schedules and Sample Steps are Flawed", Table 2), as diffusers'
    ``timestep_spacing``:

    * ``"linspace"``: ``t_i = (T − 1)(1 − i/(n−1))``, fractional (from T−1 down to 0);
    * ``"leading"``:  ``t_i = (n − 1 − i)·⌊T/n⌋ + steps_offset`` (never reaches T−1);
    * ``"trailing"``: ``t_i = round(T − i·T/n) − 1`` (from T−1, never reaches 0).

    ``steps_offset`` applies to ``"leading"`` only, as in diffusers (SD 1.x configs set it to 1).
    A fractional time is mapped to σ by ``interpolate``: ``True``/``"linear"`` interpolates σ
    linearly between neighbouring indices (diffusers' ``EulerDiscreteScheduler``, whose sigmas
    this reproduces); ``"log"`` interpolates log σ (k-diffusion's ``DiscreteSchedule``);
    ``False``/``"nearest"`` rounds t to the nearest index (only training sigmas are used).

    Two deliberate differences from diffusers: with n = 1, ``"linspace"`` gives σ_{T−1} (diffusers'
    ``np.linspace(0, T−1, 1)`` gives σ_0), and a ``steps_offset`` that would push ``"leading"``
    past t = T−1 is an error here (diffusers silently clamps it to σ_{T−1}).
    """
    n = _check_n(n)
    sigmas_t = _train_sigmas(train_sigmas, alphas_cumprod)
    n_train = sigmas_t.numel()
    if spacing not in ("linspace", "leading", "trailing"):
        raise ValueError(f"spacing must be one of 'linspace', 'leading', 'trailing', got {spacing!r}")
    if isinstance(steps_offset, bool) or not isinstance(steps_offset, Integral) or steps_offset < 0:
        raise ValueError(f"steps_offset must be an int >= 0, got {steps_offset!r}")
    modes = {True: "linear", "linear": "linear", "log": "log", False: "nearest", "nearest": "nearest"}
    if not isinstance(interpolate, (bool, str)) or interpolate not in modes:
        raise ValueError(f"interpolate must be True/'linear', 'log' or False/'nearest', got {interpolate!r}")
    mode = modes[interpolate]

    if spacing == "linspace":
        t = torch.linspace(n_train - 1, 0, n, dtype=torch.float64)
    elif spacing == "leading":
        if n > n_train:
            raise ValueError(f"n must be <= the number of training steps ({n_train}) for 'leading' spacing, got {n}")
        step_ratio = n_train // n
        if (n - 1) * step_ratio + steps_offset > n_train - 1:
            raise ValueError(f"steps_offset={steps_offset} puts the first time step past t = {n_train - 1}")
        t = torch.arange(n - 1, -1, -1, dtype=torch.float64) * step_ratio + steps_offset
    else:
        if n > n_train:
            raise ValueError(f"n must be <= the number of training steps ({n_train}) for 'trailing' spacing, got {n}")
        # torch.round rounds halves to even, as numpy does in diffusers
        t = torch.round(n_train - torch.arange(n, dtype=torch.float64) * (n_train / n)) - 1

    if mode == "nearest":
        values = sigmas_t[torch.round(t).long()]
    else:
        low = t.floor().long().clamp(0, n_train - 1)
        high = (low + 1).clamp(max=n_train - 1)
        weight = t - low
        if mode == "linear":
            values = (1 - weight) * sigmas_t[low] + weight * sigmas_t[high]
        else:
            values = ((1 - weight) * sigmas_t[low].log() + weight * sigmas_t[high].log()).exp()
    return _finish(values, device)


# ----------------------------------------------------------------------------------------
# Align Your Steps tables

#: NVIDIA's optimised 10-step schedules (Sabour et al. 2024, "Align Your Steps"; NVIDIA's AYS
#: how-to page): 11 noise levels, σ_max … σ_min. For the discrete SD 1.5 and SDXL models the
#: page publishes time steps ([999, 850, 736, 645, 545, 455, 343, 233, 124, 24, 0] and
#: [999, 845, 730, 587, 443, 310, 193, 116, 53, 13, 0]); the levels here are the models'
#: training sigmas at those steps (as in NVIDIA's notes and ComfyUI). Stable Video Diffusion
#: (continuous EDM σ) is published as sigmas.
AYS_TABLES: dict[str, tuple[float, ...]] = {
    "sd15": (14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177, 1.3943805092,
             0.9642583904, 0.6523686016, 0.3977456272, 0.1515232662, 0.0291671582),
    "sdxl": (14.6146412293, 6.3184485287, 3.7681790315, 2.1811480769, 1.3405244945, 0.8620721141,
             0.5550693289, 0.3798540708, 0.2332364134, 0.1114188177, 0.0291671582),
    "svd": (700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002),
}


def ays(n: int, model: str = "sd15", device="cpu") -> torch.Tensor:
    """Align Your Steps (Sabour, Fidler & Kreis 2024): NVIDIA's published 10-step schedule of
    ``model`` (``"sd15"``, ``"sdxl"`` or ``"svd"``; see :data:`AYS_TABLES`).

    The 11-level table is log-linearly interpolated to ``n + 1`` levels (NVIDIA's
    ``loglinear_interp``: log σ interpolated linearly over the normalised position
    ``k/(len − 1)``), and the last level (the model's σ_min, where a discrete model's t = 0
    is reached) becomes the final step to σ = 0, as in NVIDIA's notes and ComfyUI. So
    ``ays(10)`` is the table itself with its last entry replaced by 0.
    """
    n = _check_n(n)
    if model not in AYS_TABLES:
        raise ValueError(f"model must be one of {sorted(AYS_TABLES)}, got {model!r}")
    levels = _loglinear_interp(AYS_TABLES[model], n + 1)
    return _finish(levels[:-1], device)


def _loglinear_interp(levels, count: int) -> torch.Tensor:
    """``count`` levels log-linearly interpolated from the descending ``levels`` (NVIDIA's and
    GITS' ``loglinear_interp``: log σ linear in the normalised position ``k/(len − 1)``)."""
    table = torch.tensor(levels, dtype=torch.float64)
    if count == table.numel():
        return table
    positions = torch.linspace(0.0, 1.0, count, dtype=torch.float64) * (table.numel() - 1)
    low = positions.floor().long().clamp(max=table.numel() - 2)
    weight = positions - low
    log_table = table.log()
    return ((1 - weight) * log_table[low] + weight * log_table[low + 1]).exp()


# ----------------------------------------------------------------------------------------
# rectified flow


def flow_shift(sigmas, shift: float) -> torch.Tensor:
    """The rectified-flow time shift (SD3, Esser et al. 2024, "Scaling Rectified Flow
    Transformers", eq. 23) applied to a VE grid.

    With flow time ``t = σ/(1 + σ)`` (x_t = (1 − t) x0 + t n), the shift is
    ``t' = shift·t / (1 + (shift − 1)·t)`` and ``σ' = t'/(1 − t')``. Substituting gives
    exactly ``σ' = shift · σ``: in the VE state space the shift is a rescaling of σ, which is
    how it is computed here (no cancellation in ``1 − t'`` near t = 1). The trailing 0 stays 0.
    Returns float64 on the device of ``sigmas``.
    """
    shift = _check_positive(shift, "shift")
    device = sigmas.device if isinstance(sigmas, torch.Tensor) else "cpu"
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64, device=device)
    if sigmas.ndim != 1:
        raise ValueError(f"sigmas must be 1-D, got shape {tuple(sigmas.shape)}")
    if not bool(torch.isfinite(sigmas).all()) or not bool((sigmas >= 0).all()):
        raise ValueError("sigmas must be finite and >= 0")
    return sigmas * shift


def flow(
    n: int, shift: float = 1.0, t_max: float = 0.999, t_min: float = 0.001, device="cpu"
) -> torch.Tensor:
    """Uniform rectified-flow time, shifted (SD3 / Flux style), as VE sigmas.

    ``t_i = t_max + i/(n−1)·(t_min − t_max)``, shifted by :func:`flow_shift`
    (``t' = shift·t/(1 + (shift − 1)t)``) and mapped to ``σ = t'/(1 − t')``.

    diffusers' ``FlowMatchEulerDiscreteScheduler`` starts at t = 1, which is σ = ∞ in the VE
    state space where our samplers run; so the grid starts at ``t_max < 1`` instead. The
    defaults ``t_max = 1 − 1/T``, ``t_min = 1/T`` for T = 1000 are the second and the last of
    its training times (σ_max = 999·shift, σ_min ≈ 0.001·shift). With the same end points the
    values equal diffusers' ``set_timesteps(sigmas=linspace(t_max, t_min, n))``.
    """
    n = _check_n(n)
    shift = _check_positive(shift, "shift")
    t_max = _check_real(t_max, "t_max")
    t_min = _check_real(t_min, "t_min")
    if not 0.0 < t_min < t_max < 1.0:
        raise ValueError(f"need 0 < t_min < t_max < 1 (t = 1 is σ = ∞), got t_min={t_min}, t_max={t_max}")
    t = torch.linspace(t_max, t_min, n, dtype=torch.float64)
    return _finish(shift * t / (1 - t), device)


# ----------------------------------------------------------------------------------------
# ComfyUI's schedulers (comfy.samplers.SCHEDULER_HANDLERS, the Laplace and GITS nodes)


def _model_table(model_sigmas) -> torch.Tensor:
    """A model's ascending training sigmas (ComfyUI's ``model_sampling.sigmas``), float64 on
    the CPU, from a 1-D table or a :class:`ksampling.denoisers.VPDiscrete` process."""
    table = getattr(model_sigmas, "sigmas", model_sigmas)
    if table is None or isinstance(table, (str, bytes)):
        raise TypeError("model_sigmas must be a 1-D table of training sigmas or a VPDiscrete process")
    return _train_sigmas(table, None)


def _table_sigma(table: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """σ at fractional training time t: log σ interpolated between neighbouring indices
    (ComfyUI's ``ModelSamplingDiscrete.sigma``)."""
    t = t.clamp(0, table.numel() - 1)
    low, high = t.floor().long(), t.ceil().long()
    weight = t - t.floor()
    log_table = table.log()
    return ((1 - weight) * log_table[low] + weight * log_table[high]).exp()


def simple(n: int, model_sigmas, device="cpu") -> torch.Tensor:
    """ComfyUI's ``simple``: every (T/n)-th training sigma from the top,
    ``σ_i = table[T − 1 − ⌊i·T/n⌋]``, then 0."""
    n = _check_n(n)
    table = _model_table(model_sigmas)
    stride = table.numel() / n
    return _finish([float(table[-(1 + int(i * stride))]) for i in range(n)], device)


def ddim_uniform(n: int, model_sigmas, device="cpu") -> torch.Tensor:
    """ComfyUI's ``ddim_uniform``: training sigmas at t = 1, 1 + s, 1 + 2s, … (s = ⌊T/n⌋),
    descending, then 0 (DDIM's uniform spacing; may give a step more or fewer than ``n``)."""
    n = _check_n(n)
    table = _model_table(model_sigmas)
    if _vanishes(table[1]):
        # ComfyUI: a table that reaches σ ≈ 0 ends there instead of at an appended 0
        stride = max(table.numel() // (n + 1), 1)
        picked = [float(table[t]) for t in range(1, table.numel(), stride)]
        return torch.tensor(picked[::-1], dtype=torch.float64, device=device)
    stride = max(table.numel() // n, 1)
    picked = [float(table[t]) for t in range(1, table.numel(), stride)]
    return _finish(picked[::-1], device)


def _vanishes(sigma) -> bool:
    # ComfyUI's test for a model whose smallest training sigma is 0 in all but name
    return math.isclose(float(sigma), 0.0, abs_tol=1e-5)


def normal(n: int, model_sigmas, device="cpu", *, sgm: bool = False) -> torch.Tensor:
    """ComfyUI's ``normal``: uniform in the model's training time from T − 1 to 0
    (``t_i = (T−1)(1 − i/(n−1))``, σ log-interpolated between indices), then 0.
    ``sgm=True`` is ComfyUI's ``sgm_uniform``: n + 1 uniform times, the last (t = 0) dropped."""
    n = _check_n(n)
    table = _model_table(model_sigmas)
    last = table.numel() - 1
    if sgm:
        t = torch.linspace(last, 0, n + 1, dtype=torch.float64)[:-1]
    elif _vanishes(table[0]):
        # ComfyUI: the grid ends at the table's own σ ≈ 0 (n + 1 times) instead of an appended 0
        return _table_sigma(table, torch.linspace(last, 0, n + 1, dtype=torch.float64)).to(device)
    else:
        t = torch.linspace(last, 0, n, dtype=torch.float64)
    return _finish(_table_sigma(table, t), device)


def sgm_uniform(n: int, model_sigmas, device="cpu") -> torch.Tensor:
    """ComfyUI's ``sgm_uniform`` (:func:`normal` with ``sgm=True``; SGM's discretisation)."""
    return normal(n, model_sigmas, device, sgm=True)


def beta_discrete(n: int, model_sigmas, alpha: float = 0.6, beta: float = 0.6, device="cpu") -> torch.Tensor:
    """ComfyUI's ``beta`` (Lee et al. 2024, arXiv:2407.12173) on a model's training sigmas:
    ``table[round(F⁻¹(1 − i/n)·(T − 1))]`` for i = 0 … n−1, F = CDF of Beta(α, β),
    repeated indices dropped, then 0. (:func:`beta` maps the quantiles onto [σ_min, σ_max]
    instead, as diffusers does.)"""
    n = _check_n(n)
    table = _model_table(model_sigmas)
    alpha = _check_positive(alpha, "alpha")
    beta_ = _check_positive(beta, "beta")
    last = table.numel() - 1
    indices = []
    for i in range(n):
        index = round(beta_ppf(1.0 - i / n, alpha, beta_) * last)
        if not indices or index != indices[-1]:
            indices.append(index)
    return _finish([float(table[t]) for t in indices], device)


def linear_quadratic(
    n: int, sigma_max: float = 1.0, threshold_noise: float = 0.025, linear_steps=None, device="cpu"
) -> torch.Tensor:
    """ComfyUI's ``linear_quadratic`` (Genmo's Mochi schedule): with s = 1 − σ/σ_max, the first
    ``linear_steps`` (default n // 2) values of s rise linearly to ``threshold_noise``, the rest
    follow the quadratic through (linear_steps, threshold_noise) that reaches 1 at step n; the
    grid is ``σ_max (1 − s_i)``, ending in 0. For a rectified-flow model (ComfyUI's default
    σ_max = 1) the values are flow times t, not VE sigmas."""
    n = _check_n(n)
    sigma_max = _check_positive(sigma_max, "sigma_max")
    threshold_noise = _check_real(threshold_noise, "threshold_noise")
    if not 0 < threshold_noise < 1:
        raise ValueError(f"threshold_noise must lie in (0, 1), got {threshold_noise}")
    if n == 1:
        return torch.tensor([sigma_max, 0.0], dtype=torch.float64, device=device)
    linear_steps = n // 2 if linear_steps is None else _check_n(linear_steps, "linear_steps")
    if linear_steps >= n:
        raise ValueError(f"linear_steps must be < n ({n}), got {linear_steps}")
    quadratic_steps = n - linear_steps
    step_diff = linear_steps - threshold_noise * n
    quadratic_coef = step_diff / (linear_steps * quadratic_steps**2)
    linear_coef = threshold_noise / linear_steps - 2 * step_diff / quadratic_steps**2
    const = quadratic_coef * linear_steps**2
    rising = [i * threshold_noise / linear_steps for i in range(linear_steps)]
    rising += [quadratic_coef * i**2 + linear_coef * i + const for i in range(linear_steps, n)]
    return torch.tensor([sigma_max * (1.0 - s) for s in rising] + [0.0], dtype=torch.float64, device=device)


def laplace(
    n: int, sigma_min: float, sigma_max: float, mu: float = 0.0, beta: float = 0.5, device="cpu"
) -> torch.Tensor:
    """ComfyUI's Laplace schedule (Hang et al. 2024, "Improved Noise Schedule for Diffusion
    Training"): log σ at the quantiles of a Laplace(μ, β) distribution,
    ``log σ_i = μ − β·sgn(½ − u_i)·log(1 − 2|½ − u_i| + 10⁻⁵)``, u_i = i/(n−1), clamped to
    [σ_min, σ_max], then 0. The clamp can repeat σ_min (or σ_max) at the ends, as in ComfyUI;
    :func:`ksampling.sample` rejects such a grid, so pick σ_min/σ_max inside the Laplace range."""
    n = _check_n(n)
    sigma_min, sigma_max = _check_range(sigma_min, sigma_max)
    mu = _check_real(mu, "mu")
    beta = _check_positive(beta, "beta")
    values = []
    for u in _ramp(n):
        centred = 0.5 - u
        sign = (centred > 0) - (centred < 0)
        log_sigma = mu - beta * sign * math.log(1 - 2 * abs(centred) + 1e-5)
        values.append(min(max(math.exp(log_sigma), sigma_min), sigma_max))
    return _finish(values, device)


def gits(n: int, coeff: float = 1.20, device="cpu") -> torch.Tensor:
    """GITS presets (Chen et al. 2024, "On the Trajectory Regularity of ODE-based Diffusion
    Sampling", arXiv:2405.11326): the grids its dynamic programming found for Stable Diffusion
    1.x at trajectory coefficient ``coeff`` (0.80 … 1.50 in steps of 0.05), as ComfyUI's
    GITSScheduler node gives them: the table for ``n`` ≤ 20 steps; above, the 20-step table
    log-linearly interpolated to n + 1 levels; the last level becomes 0."""
    from .gits_tables import LEVELS, PRESETS

    n = _check_n(n)
    if n < 2:
        raise ValueError(f"n must be >= 2 for the GITS presets, got {n}")
    key = round(_check_real(coeff, "coeff"), 2)
    if key not in PRESETS:
        raise ValueError(f"coeff must be one of {', '.join(f'{c:.2f}' for c in PRESETS)}, got {coeff}")
    rows = PRESETS[key]
    if n <= len(rows) + 1:
        levels = torch.tensor([LEVELS[i] for i in rows[n - 2]], dtype=torch.float64)
    else:
        levels = _loglinear_interp([LEVELS[i] for i in rows[-1]], n + 1)
    return _finish(levels[:-1], device)


#: ComfyUI's scheduler names (``comfy.samplers.SCHEDULER_NAMES``), in its order.
COMFYUI_SCHEDULERS = (
    "simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal", "linear_quadratic", "kl_optimal",
)


def comfyui(name: str, n: int, model_sigmas, device="cpu") -> torch.Tensor:
    """The grid ComfyUI's ``calculate_sigmas(model_sampling, name, n)`` gives, for a model whose
    training sigmas are ``model_sigmas`` (a 1-D ascending table or a
    :class:`~ksampling.denoisers.VPDiscrete`). ``name`` is one of :data:`COMFYUI_SCHEDULERS`;
    ``karras``/``exponential``/``kl_optimal`` run on [table[0], table[−1]],
    ``linear_quadratic`` with σ_max = table[−1]."""
    if name not in COMFYUI_SCHEDULERS:
        raise ValueError(f"unknown ComfyUI scheduler {name!r}; known: {', '.join(COMFYUI_SCHEDULERS)}")
    table = _model_table(model_sigmas)
    sigma_min, sigma_max = float(table[0]), float(table[-1])
    by_table = {"simple": simple, "sgm_uniform": sgm_uniform, "ddim_uniform": ddim_uniform, "normal": normal,
                "beta": beta_discrete}
    if name in by_table:
        return by_table[name](n, table, device=device)
    if name == "linear_quadratic":
        return linear_quadratic(n, sigma_max, device=device)
    return SCHEDULES[name](n, sigma_min, sigma_max, device=device)


# ----------------------------------------------------------------------------------------
# registry

#: The schedules defined by ``(n, sigma_min, sigma_max, **options)``, by name.
SCHEDULES: dict[str, Callable[..., torch.Tensor]] = {
    "karras": karras,
    "exponential": exponential,
    "polyexponential": polyexponential,
    "kl_optimal": kl_optimal,
    "beta": beta,
    "laplace": laplace,
}


def available() -> list[str]:
    """Names accepted by :func:`get`."""
    return sorted(SCHEDULES)


def get(name: str, n: int, sigma_min: float, sigma_max: float, **kwargs) -> torch.Tensor:
    """The schedule ``name`` (see :func:`available`) with ``n`` steps on [sigma_min, sigma_max];
    ``kwargs`` go to the schedule (``rho``, ``alpha``/``beta``, ``device``)."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; known schedules: {', '.join(available())}")
    return SCHEDULES[name](n, sigma_min, sigma_max, **kwargs)
