"""Denoisers with exact answers: data whose posterior mean D(x; σ) = E[x0 | x0 + σ n = x] is
known in closed form.

* :class:`Dirac`: one point; ``D = point``.
* :class:`Gaussian`: ``N(μ, Σ)``; ``D = μ + Σ(Σ + σ²I)⁻¹(x − μ)``, and the probability-flow
  ODE has the closed-form solution :meth:`Gaussian.ode_solution`.
* :class:`GaussianMixture`: ``Σ_k w_k N(μ_k, Σ_k)``; ``D = Σ_k r_k(x) D_k(x)`` with the
  responsibilities ``r_k ∝ w_k N(x; μ_k, Σ_k + σ²I)``.
* :class:`Empirical`: the "ideal denoiser" of a finite dataset (Karras et al. 2022, eq. 57):
  ``D = Σ_i softmax_i(−‖x − y_i‖²/2σ²) y_i``.

Each is a :class:`~ksampling.denoisers.base.Denoiser` (``forward(x, sigma)``, x of shape
``[B, *event_shape]`` in the VE state space, sigma of shape ``[B]``) and also gives
``log_prob(x, sigma)`` (log density of the noised marginal ``p_σ = p_data * N(0, σ²I)``),
``score(x, sigma)`` (``∇_x log p_σ``; Tweedie: ``D = x + σ² score``), ``sample(n, generator)``
(draws from the data) and ``sigma_data`` (the RMS standard deviation of the data).
The forward passes make no host syncs and keep the dtype of ``x``; the parameters are kept in
float64 so that answers are exact to float64 rounding.

:func:`gaussian_kl`, :func:`gaussian_w2` and :func:`empirical_gaussian` give exact
distribution-level errors for samplers run on Gaussian data.
"""

from __future__ import annotations

import math
from numbers import Real
import torch

from .base import Denoiser

__all__ = [
    "AnalyticDenoiser",
    "Dirac",
    "Gaussian",
    "GaussianMixture",
    "Empirical",
    "gaussian_kl",
    "gaussian_w2",
    "empirical_gaussian",
]

_LOG_2PI = math.log(2 * math.pi)


# ----------------------------------------------------------------------------------------
# validation helpers (host side, at construction or outside the sampling loop)


def _float64(value, name: str) -> torch.Tensor:
    if isinstance(value, (bool, str, bytes)) or value is None:
        raise TypeError(f"{name} must be a tensor, an array or a number, got {type(value).__name__}")
    try:
        tensor = torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"{name} must be a tensor, an array or a number: {exc}") from None
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} must be finite")
    return tensor


def _check_eigenvalues(eigenvalues: torch.Tensor, matrix: torch.Tensor, name: str) -> torch.Tensor:
    scale = matrix.abs().amax().clamp(min=1.0)
    if bool((eigenvalues < -1e-10 * scale).any()):
        raise ValueError(f"{name} must be positive semi-definite (smallest eigenvalue {eigenvalues.min().item():.3g})")
    return eigenvalues.clamp(min=0.0)


def _eigen_cov(cov: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues ``[..., d]`` and eigenvectors ``[..., d, d]`` of symmetric PSD matrices."""
    if not torch.allclose(cov, cov.transpose(-1, -2), rtol=1e-10, atol=1e-12):
        raise ValueError(f"{name} must be symmetric")
    cov = 0.5 * (cov + cov.transpose(-1, -2))
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)
    return _check_eigenvalues(eigenvalues, cov, name), eigenvectors


def _check_x(x: torch.Tensor, event_shape: torch.Size, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {x.dtype}")
    if x.ndim != len(event_shape) + 1 or x.shape[1:] != event_shape:
        raise ValueError(
            f"{name} must have shape [B, {', '.join(map(str, event_shape))}] (batch, then the event shape "
            f"{tuple(event_shape)}), got {tuple(x.shape)}"
        )


def _sigma_column(sigma, x_flat: torch.Tensor) -> torch.Tensor:
    """σ as a ``[B, 1]`` column in the dtype and device of ``x_flat`` (``[B, d]``); no host sync."""
    if isinstance(sigma, torch.Tensor):
        if sigma.ndim > 1 or (sigma.ndim == 1 and sigma.shape[0] not in (1, x_flat.shape[0])):
            raise ValueError(f"sigma must be a scalar or have shape [B] = [{x_flat.shape[0]}], got {tuple(sigma.shape)}")
        return sigma.to(dtype=x_flat.dtype, device=x_flat.device).reshape(-1, 1)
    if isinstance(sigma, bool) or not isinstance(sigma, Real):
        raise TypeError(f"sigma must be a tensor or a number, got {type(sigma).__name__}")
    return torch.full((1, 1), float(sigma), dtype=x_flat.dtype, device=x_flat.device)


def _check_sigma_values(sigma, name: str = "sigma", allow_zero: bool = True) -> None:
    """Host-side check of σ values, for the methods outside the sampling loop."""
    values = sigma if isinstance(sigma, torch.Tensor) else torch.tensor(float(sigma))
    bad = ~torch.isfinite(values) | (values < 0) if allow_zero else ~torch.isfinite(values) | (values <= 0)
    if bool(bad.any()):
        raise ValueError(f"{name} must be finite and {'>= 0' if allow_zero else '> 0'}")


def _variance_floor(dtype: torch.dtype) -> float:
    """A positive floor for c² + σ²: keeps a zero-variance direction at σ = 0 finite (D = μ
    there; the ideal denoiser becomes the nearest neighbour) without changing any answer
    whose variance is representable."""
    return torch.finfo(dtype).tiny ** 0.5


def _check_n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an int >= 0 (the number of samples), got {n!r}")
    return n


# ----------------------------------------------------------------------------------------
# base class


class AnalyticDenoiser(Denoiser):
    """Common interface of the analytic denoisers (see the module docstring)."""

    event_shape: torch.Size

    @property
    def dim(self) -> int:
        """d = prod(event_shape), the dimension of the flattened data."""
        return math.prod(self.event_shape)

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        _check_x(x, self.event_shape)
        return x.reshape(x.shape[0], self.dim)

    def _unflat(self, y: torch.Tensor) -> torch.Tensor:
        return y.reshape(y.shape[0], *self.event_shape)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, **extra_args) -> torch.Tensor:
        """D(x; σ) = E[x0 | x]; extra arguments (conditioning) are ignored."""
        x_flat = self._flat(x)
        return self._unflat(self._denoise(x_flat, _sigma_column(sigma, x_flat)))

    def score(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """∇_x log p_σ(x) = (D(x; σ) − x)/σ² (Tweedie's formula), for σ > 0."""
        _check_sigma_values(sigma, allow_zero=False)
        x_flat = self._flat(x)
        sigma_col = _sigma_column(sigma, x_flat)
        return self._unflat((self._denoise(x_flat, sigma_col) - x_flat) / sigma_col**2)

    def log_prob(self, x: torch.Tensor, sigma=0.0) -> torch.Tensor:
        """log p_σ(x), the log density of the data convolved with N(0, σ²I); shape [B]."""
        _check_sigma_values(sigma)
        x_flat = self._flat(x)
        return self._log_prob(x_flat, _sigma_column(sigma, x_flat)).reshape(x.shape[0])

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` independent draws from the data distribution, shape ``[n, *event_shape]``,
        float64, using only ``generator`` (never the global RNG)."""
        n = _check_n(n)
        return self._unflat(self._sample(n, self._generator(generator)))

    # subclasses implement these on flattened x ([B, d]) and sigma columns ([B or 1, 1])
    def _denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _log_prob(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _sample(self, n: int, generator) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _generator(self, generator):
        if generator is None:
            # fresh entropy, without drawing from (or reseeding) the global RNG
            generator = torch.Generator(self._device())
            generator.seed()
        return generator

    def _randn(self, *shape, generator) -> torch.Tensor:
        return torch.randn(*shape, dtype=torch.float64, device=generator.device, generator=generator).to(self._device())

    def _device(self) -> torch.device:
        return next(self.buffers()).device


# ----------------------------------------------------------------------------------------
# Dirac


class Dirac(AnalyticDenoiser):
    """All data at one point: ``D(x; σ) = point`` for every x and σ.

    ``p_σ = N(point, σ²I)``, so ``log_prob`` and ``score`` need σ > 0. Any consistent solver
    that evaluates D once per step and steps with it is exact here (Euler, DDIM).
    """

    def __init__(self, point):
        super().__init__()
        point = _float64(point, "point")
        self.event_shape = point.shape
        self.register_buffer("point", point)

    @property
    def sigma_data(self) -> float:
        return 0.0

    def _denoise(self, x, sigma):
        return self.point.to(x).reshape(1, -1).expand(x.shape[0], -1).clone()

    def log_prob(self, x, sigma):
        """log N(x; point, σ²I), for σ > 0."""
        _check_sigma_values(sigma, allow_zero=False)
        return super().log_prob(x, sigma)

    def _log_prob(self, x, sigma):
        diff = x - self.point.to(x).reshape(1, -1)
        variance = sigma**2
        return (-0.5 * (diff**2).sum(1, keepdim=True) / variance - 0.5 * self.dim * (_LOG_2PI + variance.log()))[:, 0]

    def _sample(self, n, generator):
        return self.point.reshape(1, -1).expand(n, -1).clone()


# ----------------------------------------------------------------------------------------
# Gaussian


class Gaussian(AnalyticDenoiser):
    """Gaussian data ``x0 ~ N(μ, Σ)``; ``D(x; σ) = μ + Σ(Σ + σ²I)⁻¹(x − μ)``.

    ``mean`` has the event shape. Give the covariance as one of

    * ``var`` a scalar: isotropic ``Σ = var·I`` (the default, ``var = 1``);
    * ``var`` of the event shape: diagonal ``Σ = diag(var)``;
    * ``cov`` of shape ``[d, d]`` over the flattened event (d = prod(event_shape)): full ``Σ``,
      eigendecomposed once here, ``Σ = U diag(c²) Uᵀ``; then everything is computed per
      eigen-direction.

    The probability-flow ODE ``dx/dσ = (x − D)/σ`` decouples along the eigen-directions and
    has the exact solution (:meth:`ode_solution`)
    ``x(σ) = μ + U diag(sqrt((σ² + c²)/(σ_T² + c²))) Uᵀ (x_T − μ)``.
    """

    def __init__(self, mean, var=None, cov=None):
        super().__init__()
        mean = _float64(mean, "mean")
        self.event_shape = mean.shape
        d = mean.numel()
        if var is not None and cov is not None:
            raise ValueError("pass either var or cov, not both")
        basis = None
        if cov is not None:
            cov = _float64(cov, "cov").to(mean.device)
            if cov.shape != (d, d):
                raise ValueError(f"cov must have shape [d, d] = [{d}, {d}] for mean of shape {tuple(mean.shape)}, got {tuple(cov.shape)}")
            eigenvalues, basis = _eigen_cov(cov, "cov")
        else:
            var = _float64(1.0 if var is None else var, "var").to(mean.device)
            if var.ndim == 0 or var.numel() == 1 and var.ndim <= mean.ndim:
                eigenvalues = var.reshape(()).expand(d).clone()
            elif var.shape == mean.shape:
                eigenvalues = var.reshape(d).clone()
            else:
                raise ValueError(
                    f"var must be a scalar or have the event shape {tuple(mean.shape)}, got {tuple(var.shape)}"
                )
            if bool((eigenvalues < 0).any()):
                raise ValueError("var must be >= 0")
        self.register_buffer("_mean", mean.reshape(d).clone())
        self.register_buffer("_eigenvalues", eigenvalues)  # c², the variances along the basis
        self.register_buffer("_basis", basis)  # None: the standard basis

    @property
    def mean(self) -> torch.Tensor:
        """μ, of the event shape."""
        return self._mean.reshape(self.event_shape)

    @property
    def covariance(self) -> torch.Tensor:
        """Σ as a ``[d, d]`` matrix over the flattened event."""
        if self._basis is None:
            return torch.diag(self._eigenvalues)
        return (self._basis * self._eigenvalues) @ self._basis.T

    @property
    def sigma_data(self) -> float:
        return math.sqrt(self._eigenvalues.mean().item())

    # coordinates along the eigenbasis (the identity for diagonal covariances)
    def _to_basis(self, y):
        return y if self._basis is None else y @ self._basis.to(y)

    def _from_basis(self, y):
        return y if self._basis is None else y @ self._basis.to(y).T

    def _denoise(self, x, sigma):
        mean = self._mean.to(x)
        variances = self._eigenvalues.to(x)
        shrink = variances / (variances + sigma**2).clamp(min=_variance_floor(x.dtype))
        return mean + self._from_basis(shrink * self._to_basis(x - mean))

    def _log_prob(self, x, sigma):
        variances = self._eigenvalues.to(x) + sigma**2
        y = self._to_basis(x - self._mean.to(x))
        return -0.5 * ((y**2 / variances).sum(1) + (_LOG_2PI + variances.log()).sum(1))

    def log_prob(self, x, sigma=0.0):
        if bool((self._eigenvalues == 0).any()):
            _check_sigma_values(sigma, allow_zero=False)
        return super().log_prob(x, sigma)

    def _sample(self, n, generator):
        z = self._randn(n, self.dim, generator=generator)
        return self._mean + self._from_basis(z * self._eigenvalues.sqrt())

    def ode_solution(self, x_T: torch.Tensor, sigma_T, sigma) -> torch.Tensor:
        """The exact solution at ``sigma`` (may be 0) of the probability-flow ODE
        ``dx/dσ = (x − D(x; σ))/σ`` started from ``x_T`` at ``sigma_T``:
        ``μ + (x_T − μ)·sqrt((σ² + c²)/(σ_T² + c²))`` per eigen-direction (variance c²).
        ``sigma_T`` and ``sigma`` are numbers or tensors of shape [B]."""
        _check_sigma_values(sigma_T, "sigma_T", allow_zero=False)
        _check_sigma_values(sigma, "sigma")
        x_flat = self._flat(x_T)
        variances = self._eigenvalues.to(x_flat)
        ratio = ((_sigma_column(sigma, x_flat) ** 2 + variances) / (_sigma_column(sigma_T, x_flat) ** 2 + variances)).sqrt()
        mean = self._mean.to(x_flat)
        return self._unflat(mean + self._from_basis(ratio * self._to_basis(x_flat - mean)))


# ----------------------------------------------------------------------------------------
# Gaussian mixture


class GaussianMixture(AnalyticDenoiser):
    """A mixture ``Σ_k w_k N(μ_k, Σ_k)`` of K Gaussians.

    ``weights`` [K] (non-negative, summing to 1), ``means`` [K, *event_shape]; the covariances as

    * ``var`` a scalar (all components ``var·I``), of shape [K] (component k: ``var_k·I``) or
      [K, *event_shape] (diagonal per component), or
    * ``cov`` [K, d, d] (full, eigendecomposed once here).

    A variance of 0 is allowed (a component that is a point mass).
    ``D(x; σ) = Σ_k r_k(x) D_k(x)`` with ``D_k = μ_k + Σ_k(Σ_k + σ²I)⁻¹(x − μ_k)`` and
    ``r_k(x) = w_k N(x; μ_k, Σ_k + σ²I) / p_σ(x)``, from a log-sum-exp of the log densities.
    """

    def __init__(self, weights, means, var=None, cov=None):
        super().__init__()
        weights = _float64(weights, "weights")
        means = _float64(means, "means")
        if weights.ndim != 1 or weights.numel() < 1:
            raise ValueError(f"weights must have shape [K], got {tuple(weights.shape)}")
        k = weights.numel()
        if means.ndim < 1 or means.shape[0] != k:
            raise ValueError(f"means must have shape [K, *event_shape] with K = {k} (from weights), got {tuple(means.shape)}")
        if bool((weights < 0).any()):
            raise ValueError("weights must be >= 0")
        total = weights.sum().item()
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"weights must sum to 1 (they sum to {total:.6g}); divide them by their sum")
        weights = weights / total
        means = means.to(weights.device)
        self.event_shape = means.shape[1:]
        d = math.prod(self.event_shape)
        if var is not None and cov is not None:
            raise ValueError("pass either var or cov, not both")
        basis = None
        if cov is not None:
            cov = _float64(cov, "cov").to(weights.device)
            if cov.shape != (k, d, d):
                raise ValueError(f"cov must have shape [K, d, d] = [{k}, {d}, {d}], got {tuple(cov.shape)}")
            eigenvalues, basis = _eigen_cov(cov, "cov")
        else:
            var = _float64(1.0 if var is None else var, "var").to(weights.device)
            if var.ndim == 0:
                eigenvalues = var.expand(k, d).clone()
            elif var.shape == (k,):
                eigenvalues = var[:, None].expand(k, d).clone()
            elif var.shape == means.shape:
                eigenvalues = var.reshape(k, d).clone()
            else:
                raise ValueError(
                    f"var must be a scalar, of shape [K] = [{k}] or of the shape of means {tuple(means.shape)}, "
                    f"got {tuple(var.shape)}"
                )
            if bool((eigenvalues < 0).any()):
                raise ValueError("var must be >= 0")
        self.register_buffer("_weights", weights)
        self.register_buffer("_log_weights", weights.log())
        self.register_buffer("_means", means.reshape(k, d).clone())
        self.register_buffer("_eigenvalues", eigenvalues)  # [K, d]
        self.register_buffer("_basis", basis)  # [K, d, d] or None

    @property
    def n_components(self) -> int:
        return self._weights.numel()

    @property
    def weights(self) -> torch.Tensor:
        return self._weights

    @property
    def means(self) -> torch.Tensor:
        return self._means.reshape(self.n_components, *self.event_shape)

    @property
    def covariances(self) -> torch.Tensor:
        """The component covariances Σ_k, ``[K, d, d]``."""
        if self._basis is None:
            return torch.diag_embed(self._eigenvalues)
        return (self._basis * self._eigenvalues[:, None, :]) @ self._basis.transpose(1, 2)

    @property
    def mean(self) -> torch.Tensor:
        """The mixture mean Σ_k w_k μ_k, of the event shape."""
        return (self._weights @ self._means).reshape(self.event_shape)

    @property
    def covariance(self) -> torch.Tensor:
        """The mixture covariance Σ_k w_k (Σ_k + μ_k μ_kᵀ) − μ μᵀ, ``[d, d]``."""
        centred = self._means - self._weights @ self._means
        between = (centred * self._weights[:, None]).T @ centred
        return (self.covariances * self._weights[:, None, None]).sum(0) + between

    @property
    def sigma_data(self) -> float:
        return math.sqrt(torch.diagonal(self.covariance).mean().item())

    def _components(self, x, sigma):
        """Per component: the coordinates y = Uᵀ(x − μ_k) [B, K, d], the noised variances
        c² + σ² [B or 1, K, d] and log w_k + log N(x; μ_k, Σ_k + σ²I) [B, K]."""
        diff = x[:, None, :] - self._means.to(x)[None]
        y = diff if self._basis is None else torch.einsum("bkd,kde->bke", diff, self._basis.to(x))
        variances = (self._eigenvalues.to(x)[None] + (sigma**2)[:, :, None]).clamp(min=_variance_floor(x.dtype))
        log_joint = self._log_weights.to(x) - 0.5 * ((y**2 / variances).sum(2) + (_LOG_2PI + variances.log()).sum(2))
        return y, variances, log_joint

    def _denoise(self, x, sigma):
        y, variances, log_joint = self._components(x, sigma)
        responsibilities = torch.softmax(log_joint, dim=1)
        # Σ_k r_k D_k with D_k = μ_k + U_k diag(c²/(c² + σ²)) U_kᵀ (x − μ_k); written around μ_k
        # rather than as x + σ² score, so that large σ loses no precision to cancellation
        shrunk = responsibilities[:, :, None] * (self._eigenvalues.to(x)[None] / variances) * y
        if self._basis is not None:
            shrunk = torch.einsum("bke,kde->bkd", shrunk, self._basis.to(x))
        return responsibilities @ self._means.to(x) + shrunk.sum(1)

    def _log_prob(self, x, sigma):
        return torch.logsumexp(self._components(x, sigma)[2], dim=1)

    def log_prob(self, x, sigma=0.0):
        if bool((self._eigenvalues == 0).any()):
            _check_sigma_values(sigma, allow_zero=False)
        return super().log_prob(x, sigma)

    def _sample(self, n, generator):
        component = torch.multinomial(
            self._weights.to(generator.device), n, replacement=True, generator=generator
        ).to(self._device())
        z = self._randn(n, self.dim, generator=generator) * self._eigenvalues[component].sqrt()
        if self._basis is not None:
            z = torch.einsum("ne,nde->nd", z, self._basis[component])
        return self._means[component] + z


# ----------------------------------------------------------------------------------------
# the ideal denoiser of a finite dataset


class Empirical(AnalyticDenoiser):
    """The ideal denoiser of a finite dataset ``y_1 … y_N`` (data ``[N, *event_shape]``), the
    exact posterior mean when the data distribution is the empirical one (Karras et al. 2022,
    Appendix B.3, eq. 57):

    ``D(x; σ) = Σ_i softmax_i(−‖x − y_i‖² / 2σ²) y_i``.

    The softmax is a streaming log-sum-exp over chunks of ``chunk_size`` data points, so that
    memory is O(B · chunk_size) whatever N is. Distances are computed as
    ``‖x − y‖² = ‖x‖² − 2 x·y + ‖y‖²`` around the data mean (‖x‖² cancels in the softmax);
    in float64 this is exact to rounding for any practical σ. ``log_prob`` needs σ > 0.
    """

    def __init__(self, data, chunk_size: int = 4096):
        super().__init__()
        data = _float64(data, "data")
        if data.ndim < 1 or data.shape[0] < 1:
            raise ValueError(f"data must have shape [N, *event_shape] with N >= 1, got {tuple(data.shape)}")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
        self.chunk_size = chunk_size
        self.event_shape = data.shape[1:]
        flat = data.reshape(data.shape[0], -1)
        centre = flat.mean(0)
        self.register_buffer("data", data)
        self.register_buffer("_centre", centre)
        self.register_buffer("_half_sq_norms", 0.5 * ((flat - centre) ** 2).sum(1))

    @property
    def n_points(self) -> int:
        return self.data.shape[0]

    @property
    def sigma_data(self) -> float:
        return math.sqrt(((self.data.reshape(self.n_points, -1) - self._centre) ** 2).mean().item())

    def _scan(self, x, sigma):
        """Streaming softmax over the data: returns (running max m, Σ_i e^{l_i − m},
        Σ_i e^{l_i − m} y_i) with logits l_i = (x·y_i − ‖y_i‖²/2)/σ² (centred coordinates)."""
        centre = self._centre.to(x)
        x_c = x - centre
        flat_data = self.data.reshape(self.n_points, -1)
        inv_var = 1.0 / (sigma**2).clamp(min=_variance_floor(x.dtype))
        running_max = torch.full((x.shape[0], 1), -math.inf, dtype=x.dtype, device=x.device)
        total = torch.zeros_like(running_max)
        weighted = torch.zeros_like(x)
        for start in range(0, self.n_points, self.chunk_size):
            # centred on the fly (one copy of the data in memory)
            points = flat_data[start : start + self.chunk_size].to(x) - centre
            logits = (x_c @ points.T - self._half_sq_norms[start : start + self.chunk_size].to(x)) * inv_var
            new_max = torch.maximum(running_max, logits.amax(1, keepdim=True))
            rescale = torch.exp(running_max - new_max)
            weights = torch.exp(logits - new_max)
            total = total * rescale + weights.sum(1, keepdim=True)
            weighted = weighted * rescale + weights @ points
            running_max = new_max
        return x_c, running_max, total, weighted

    def _denoise(self, x, sigma):
        _, _, total, weighted = self._scan(x, sigma)
        return self._centre.to(x) + weighted / total

    def log_prob(self, x, sigma):
        """log p_σ(x) for σ > 0 (at σ = 0 the empirical distribution has no density)."""
        _check_sigma_values(sigma, allow_zero=False)
        return super().log_prob(x, sigma)

    def _log_prob(self, x, sigma):
        x_c, running_max, total, _ = self._scan(x, sigma)
        # log Σ_i exp(−‖x − y_i‖²/2σ²) = log Σ_i e^{l_i} − ‖x‖²/2σ²
        log_sum = (running_max + total.log() - 0.5 * (x_c**2).sum(1, keepdim=True) / sigma**2)[:, 0]
        variance = (sigma**2)[:, 0]
        return log_sum - math.log(self.n_points) - 0.5 * self.dim * (_LOG_2PI + variance.log())

    def _sample(self, n, generator):
        index = torch.randint(self.n_points, (n,), generator=generator, device=generator.device).to(self._device())
        return self.data.reshape(self.n_points, -1)[index]


# ----------------------------------------------------------------------------------------
# exact distances between Gaussians


def _mean_cov(mean, cov, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    mean = _float64(mean, f"mean_{name}").reshape(-1)
    cov = _float64(cov, f"cov_{name}").to(mean.device)
    d = mean.numel()
    if cov.ndim <= 1 and cov.numel() in (1, d):
        cov = torch.diag(cov.reshape(-1).expand(d))
    if cov.shape != (d, d):
        raise ValueError(f"cov_{name} must have shape [d, d] = [{d}, {d}] (or [d] for a diagonal), got {tuple(cov.shape)}")
    if not torch.allclose(cov, cov.T, rtol=1e-10, atol=1e-12):
        raise ValueError(f"cov_{name} must be symmetric")
    return mean, 0.5 * (cov + cov.T)


def gaussian_kl(mean_p, cov_p, mean_q, cov_q) -> float:
    """KL(p ‖ q) between p = N(μ_p, Σ_p) and q = N(μ_q, Σ_q), exact, in float64:

    ``½ [tr(Σ_q⁻¹ Σ_p) + (μ_q − μ_p)ᵀ Σ_q⁻¹ (μ_q − μ_p) − d + ln det Σ_q − ln det Σ_p]``.

    Covariances are ``[d, d]`` (or ``[d]`` diagonals); Σ_q must be positive definite. A
    singular (positive semi-definite) Σ_p gives ``inf``: p then lives on a subspace that q
    gives probability 0 (a sampler that collapsed a direction).
    """
    mean_p, cov_p = _mean_cov(mean_p, cov_p, "p")
    mean_q, cov_q = _mean_cov(mean_q, cov_q, "q")
    if mean_p.shape != mean_q.shape:
        raise ValueError(f"mean_p and mean_q must have the same size, got {mean_p.numel()} and {mean_q.numel()}")
    chol_p, info_p = torch.linalg.cholesky_ex(cov_p)
    chol_q, info_q = torch.linalg.cholesky_ex(cov_q)
    if info_q.item() != 0:
        raise ValueError("cov_q must be positive definite")
    if info_p.item() != 0:
        _check_eigenvalues(torch.linalg.eigvalsh(cov_p), cov_p, "cov_p")
        return math.inf
    # Σ_q⁻¹Σ_p through triangular solves: tr(Σ_q⁻¹Σ_p) = ‖L_q⁻¹ L_p‖²_F
    solved = torch.linalg.solve_triangular(chol_q, chol_p, upper=False)
    offset = torch.linalg.solve_triangular(chol_q, (mean_q - mean_p)[:, None], upper=False)
    log_det_q = 2 * torch.log(torch.diagonal(chol_q)).sum()
    log_det_p = 2 * torch.log(torch.diagonal(chol_p)).sum()
    kl = 0.5 * ((solved**2).sum() + (offset**2).sum() - mean_p.numel() + log_det_q - log_det_p)
    return kl.item()


def _sqrtm_psd(matrix: torch.Tensor) -> torch.Tensor:
    eigenvalues, eigenvectors = torch.linalg.eigh(0.5 * (matrix + matrix.T))
    return (eigenvectors * eigenvalues.clamp(min=0).sqrt()) @ eigenvectors.T


def gaussian_w2(mean_p, cov_p, mean_q, cov_q) -> float:
    """The 2-Wasserstein distance W₂ (not squared) between N(μ_p, Σ_p) and N(μ_q, Σ_q), exact
    (Dowson & Landau 1982; Givens & Shortt 1984):

    ``W₂² = ‖μ_p − μ_q‖² + tr(Σ_p + Σ_q − 2 (Σ_p^½ Σ_q Σ_p^½)^½)``.

    Covariances are ``[d, d]`` (or ``[d]`` diagonals), positive semi-definite.
    """
    mean_p, cov_p = _mean_cov(mean_p, cov_p, "p")
    mean_q, cov_q = _mean_cov(mean_q, cov_q, "q")
    if mean_p.shape != mean_q.shape:
        raise ValueError(f"mean_p and mean_q must have the same size, got {mean_p.numel()} and {mean_q.numel()}")
    for name, cov in (("cov_p", cov_p), ("cov_q", cov_q)):
        _check_eigenvalues(torch.linalg.eigvalsh(cov), cov, name)
    root_p = _sqrtm_psd(cov_p)
    cross = _sqrtm_psd(root_p @ cov_q @ root_p)
    squared = ((mean_p - mean_q) ** 2).sum() + torch.trace(cov_p + cov_q - 2 * cross)
    return math.sqrt(max(squared.item(), 0.0))


def empirical_gaussian(samples) -> tuple[torch.Tensor, torch.Tensor]:
    """The sample mean ``[d]`` and the unbiased sample covariance ``[d, d]`` (divisor N − 1) of
    ``samples`` ``[N, *event_shape]`` (flattened over the event), in float64."""
    samples = _float64(samples, "samples")
    if samples.ndim < 1 or samples.shape[0] < 2:
        raise ValueError(f"samples must have shape [N, *event_shape] with N >= 2, got {tuple(samples.shape)}")
    flat = samples.reshape(samples.shape[0], -1)
    mean = flat.mean(0)
    centred = flat - mean
    return mean, centred.T @ centred / (flat.shape[0] - 1)
