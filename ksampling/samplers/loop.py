"""The one sampling loop: validation, model calls, NFE, callbacks, progress and noise.

Every solver runs through :func:`sample`. Inside the loop no tensor is turned into a Python
value: all per-step scalars are computed before it, on the host, in float64, from
``sigmas.tolist()``; the finiteness of the model outputs is accumulated on the device and
checked once, after the last step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from tqdm.auto import tqdm

from ..denoisers.base import sigmas_checked_by_caller
from .base import Solver, Step, make_solver
from .noise import GaussianNoise

__all__ = ["sample", "SamplingInfo", "Context", "validate_sigmas", "FINAL_STEP_POLICIES"]

#: How the step that ends at sigma = 0 is taken (only when the grid ends in 0):
#: ``"solver"`` the solver's own rule (for most, one Euler/DDIM step to 0, i.e. x <- D(x; σ_min));
#: ``"denoise"`` replace the last step by x <- D(x; σ_{N-1}) whatever the solver;
#: ``"stop"`` drop the last step and return x at σ_{N-1} (no denoising, one NFE fewer).
FINAL_STEP_POLICIES = ("solver", "denoise", "stop")


@dataclass
class SamplingInfo:
    """What a run did: returned by ``sample(..., return_info=True)``."""

    solver: str
    nfe: int = 0
    steps: int = 0
    accepted: int = 0
    rejected: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def validate_sigmas(sigmas, x: torch.Tensor | None = None, *, name: str = "sigmas") -> list[float]:
    """Check a sigma grid and return it as a host-side list of floats (one transfer)."""
    if isinstance(sigmas, torch.Tensor):
        if sigmas.ndim != 1:
            raise ValueError(f"{name} must be a 1-D tensor, got shape {tuple(sigmas.shape)}")
        if sigmas.is_complex() or not sigmas.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {sigmas.dtype}")
        if x is not None and sigmas.device != x.device:
            raise ValueError(
                f"{name} is on {sigmas.device} but x is on {x.device}; move them to one device "
                f"(e.g. sigmas.to(x.device))"
            )
        values = sigmas.detach().to("cpu", torch.float64).tolist()
    elif isinstance(sigmas, (list, tuple)):
        if not all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in sigmas):
            raise TypeError(f"{name} must be a 1-D tensor or a list of numbers")
        values = [float(s) for s in sigmas]
    else:
        raise TypeError(f"{name} must be a 1-D tensor, got {type(sigmas).__name__}")
    if len(values) < 2:
        raise ValueError(f"{name} needs at least 2 values (one step), got {len(values)}")
    for j, s in enumerate(values):
        if not math.isfinite(s):
            raise ValueError(f"{name}[{j}] is {s}; every sigma must be finite")
        if s < 0:
            raise ValueError(f"{name}[{j}] = {s} is negative; sigmas must be >= 0")
    for j in range(len(values) - 1):
        if not values[j] > values[j + 1]:
            raise ValueError(
                f"{name} must be strictly descending: {name}[{j}] = {values[j]} is not greater than "
                f"{name}[{j + 1}] = {values[j + 1]}"
            )
    return values


class Context:
    """What a solver may use while it steps: the model, the noise and the run's bookkeeping."""

    def __init__(
        self,
        model: Callable,
        x: torch.Tensor,
        sigmas: torch.Tensor,
        extra_args: Mapping[str, Any],
        callback: Callable | None,
        noise: Callable,
        progress: bool,
        check_finite: bool,
    ):
        self.model = model
        self.extra_args = dict(extra_args)
        self.callback = callback
        self.noise_sampler = noise
        self.show_progress = progress
        self.check_finite = check_finite
        self.batch = x.shape[0]
        self.shape = x.shape
        self.dtype = x.dtype
        self.sigmas = sigmas
        self.nfe = 0
        self.noise_draws = 0
        self.info_extra: dict[str, Any] = {}
        self._step: Step | None = None
        self._callback_due = False
        # Per model call, the sum of its output, kept on the device until the run ends: a NaN
        # or ±inf anywhere makes the sum non-finite. (So would finite outputs whose float32
        # sum overflows, |sum| > 3e38 — far outside any diffusion model's range.) A sum is one
        # cheap reduction; isfinite(out).all() is two kernels and a full-size bool tensor.
        self._checksums: list[torch.Tensor] = []
        self._checksum_where: list[tuple[int, float]] = []
        self._checksum_dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else None

    # -- the loop's side -------------------------------------------------------------------
    def progress(self, steps):
        if not self.show_progress:
            return steps  # a disabled tqdm still costs its construction on every run
        return tqdm(steps, desc="sampling", leave=False)

    def begin_step(self, step: Step) -> None:
        self._step = step
        self._callback_due = self.callback is not None

    # -- the solver's side -----------------------------------------------------------------
    def denoise(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """D(x; sigma): one model call, counted, shape-checked and cast to ``x``'s dtype.

        The first call of each step also fires the callback with k-diffusion's dict.
        """
        return self._call(x, sigma, with_variance=False)

    def denoise_with_variance(self, x: torch.Tensor, sigma: float):
        """(D, learned variance or None). Uses ``model.denoise_with_variance`` when the model
        has one (improved-DDPM networks wrapped by :mod:`ksampling.denoisers`)."""
        return self._call(x, sigma, with_variance=True)

    def denoise_with_uncond(self, x: torch.Tensor, sigma: float):
        """(D, D_∅): the guided and the unconditional denoised output of one model call
        (one NFE; checks and callback as :meth:`denoise`, the callback gets the guided D).
        Uses ``model.denoise_with_uncond``, which
        :class:`~ksampling.denoisers.ClassifierFreeGuidance` provides (CFG++ solvers)."""
        if not hasattr(self.model, "denoise_with_uncond"):
            raise TypeError(
                "CFG++ solvers need a guidance-wrapped model with a denoise_with_uncond(x, sigma, **extra_args) "
                "method returning (guided, unconditional), e.g. ksampling.denoisers.ClassifierFreeGuidance"
            )
        return self._call(x, sigma, with_variance=False, with_uncond=True)

    def noise(self, sigma: float, sigma_next: float) -> torch.Tensor:
        """Standard normal noise like ``x`` for the step sigma -> sigma_next."""
        self.noise_draws += 1
        n = self.noise_sampler(sigma, sigma_next)
        if n.shape != self.shape:
            raise ValueError(f"noise_sampler returned shape {tuple(n.shape)}, expected {tuple(self.shape)}")
        return n if n.dtype == self.dtype else n.to(self.dtype)

    def add_noise(self, x: torch.Tensor, std: float, sigma: float, sigma_next: float) -> torch.Tensor:
        """x + std · n with n ~ N(0, I) drawn for the step sigma -> sigma_next.

        The one place where a solver adds noise; ``std`` is a host-side float (no sync).
        """
        return torch.add(x, self.noise(sigma, sigma_next), alpha=std)

    def _call(self, x, sigma, with_variance, with_uncond=False):
        sigma_batch = x.new_full((self.batch,), sigma)
        variance = uncond = None
        if with_uncond:
            out, uncond = self.model.denoise_with_uncond(x, sigma_batch, **self.extra_args)
            uncond = self._checked(uncond, sigma)
        elif with_variance and hasattr(self.model, "denoise_with_variance"):
            out, variance = self.model.denoise_with_variance(x, sigma_batch, **self.extra_args)
        else:
            out = self.model(x, sigma_batch, **self.extra_args)
        self.nfe += 1
        out = self._checked(out, sigma)
        step = self._step
        if self._callback_due:
            self._callback_due = False
            # Adaptive and off-grid solvers (dpm_fast, dpm_adaptive) step between sigmas of
            # their own; their Steps say so with on_grid=False.
            on_grid = getattr(step, "on_grid", True)
            sigma_t = self.sigmas[step.index] if on_grid else self.sigmas.new_full((), step.sigma)
            sigma_hat = sigma_t if sigma == step.sigma else self.sigmas.new_full((), sigma)
            self.callback({"x": x, "i": step.index, "sigma": sigma_t, "sigma_hat": sigma_hat, "denoised": out})
        if with_uncond:
            return out, uncond
        return (out, variance) if with_variance else out

    def _checked(self, out, sigma):
        """A model output checked for type and shape, cast to x's dtype, its checksum kept."""
        step = self._step
        if not isinstance(out, torch.Tensor):
            raise TypeError(
                f"the model must return a tensor, got {type(out).__name__} "
                f"(step {step.index if step is not None else -1}, sigma={sigma:g})"
            )
        if out.shape != self.shape:
            raise ValueError(
                f"the model returned shape {tuple(out.shape)} at step {step.index if step is not None else -1} "
                f"(sigma={sigma:g}); expected the shape of x, {tuple(self.shape)}"
            )
        if out.dtype != self.dtype:
            out = out.to(self.dtype)
        if self.check_finite:
            self._checksums.append(out.sum(dtype=self._checksum_dtype))
            self._checksum_where.append((step.index if step is not None else -1, sigma))
        return out

    def raise_if_not_finite(self, x: torch.Tensor) -> None:
        """The one host sync of a run: report the first non-finite model output, if any."""
        if not self.check_finite:
            return
        checksums = self._checksums + [x.sum(dtype=self._checksum_dtype)]
        ok = torch.isfinite(torch.stack(checksums)).tolist()
        if all(ok):
            return
        first = ok.index(False)
        if first < len(self._checksum_where):
            index, sigma = self._checksum_where[first]
            raise ValueError(
                f"the model returned non-finite values (NaN or inf) at step {index} (sigma={sigma:g})"
            )
        raise ValueError("the sampler produced non-finite values; check the sigmas and the solver options")


def _all_finite(x: torch.Tensor) -> bool:
    """Whether every element of x is finite (one pass over x, one host sync)."""
    if x.numel() == 0:
        return True
    return bool(torch.isfinite(torch.stack(torch.aminmax(x))).all())


def _make_noise(solver: Solver, x, sigmas_list, generator, noise_sampler):
    if noise_sampler is not None:
        if generator is not None:
            raise ValueError("pass either generator or noise_sampler, not both")
        if not callable(noise_sampler):
            raise TypeError("noise_sampler must be callable as noise_sampler(sigma, sigma_next)")
        return noise_sampler
    if not solver.draws_noise:
        return _no_noise
    if solver.default_noise == "brownian":
        from .brownian import BrownianTreeNoiseSampler

        sigma_min = min(s for s in sigmas_list if s > 0)
        return BrownianTreeNoiseSampler(x, sigma_min, sigmas_list[0], generator=generator)
    return GaussianNoise(x, generator)


def _no_noise(sigma, sigma_next):
    raise RuntimeError("this solver configuration is deterministic and must not draw noise")


def sample(
    model: Callable,
    x: torch.Tensor,
    sigmas,
    solver: str | type[Solver] | Solver = "euler",
    *,
    extra_args: Mapping[str, Any] | None = None,
    callback: Callable[[dict], Any] | None = None,
    progress: bool = False,
    generator: torch.Generator | list[torch.Generator] | None = None,
    noise_sampler: Callable | None = None,
    final_step: str = "solver",
    check_finite: bool = True,
    return_info: bool = False,
    **options,
):
    """Sample from a diffusion model with any registered solver.

    Args:
        model: ``model(x, sigma_batch, **extra_args) -> D``, the denoiser in Karras form
            (k-diffusion's convention); ``sigma_batch`` has shape ``[B]``.
        x: the initial noise, already scaled by ``sigmas[0]`` (``x = noise * sigmas[0]``).
        sigmas: 1-D strictly descending grid, normally ending in 0.
        solver: a name from :func:`ksampling.samplers.available`, a solver class or instance.
        extra_args: keyword arguments passed to every model call (conditioning, ...).
        callback: called once per step with ``{'x', 'i', 'sigma', 'sigma_hat', 'denoised'}``.
        progress: show a tqdm progress bar.
        generator: a :class:`torch.Generator`, or one per sample so that each sample
            depends only on its own seed. ``None`` draws from a fresh non-deterministic
            generator; the global RNG is never used.
        noise_sampler: ``noise_sampler(sigma, sigma_next) -> N(0, I)`` like ``x``; replaces
            the generator.
        final_step: one of :data:`FINAL_STEP_POLICIES` (only matters when the grid ends in 0).
        check_finite: raise a ``ValueError`` naming the step if the model returned NaN/inf
            (checked once, after the loop, so the loop itself stays free of host syncs).
        return_info: also return a :class:`SamplingInfo` (NFE, steps, accepted/rejected).
        **options: the solver's options (``eta``, ``s_churn``, ``order``, ...).

    Returns:
        The sample (same dtype as ``x``), or ``(sample, info)`` with ``return_info=True``.
    """
    if not callable(model):
        raise TypeError(f"model must be callable as model(x, sigma, **extra_args), got {type(model).__name__}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(f"x must have a non-empty batch dimension first, got shape {tuple(x.shape)}")
    if extra_args is not None and not isinstance(extra_args, Mapping):
        raise TypeError(f"extra_args must be a dict, got {type(extra_args).__name__}")
    if callback is not None and not callable(callback):
        raise TypeError("callback must be callable")
    if final_step not in FINAL_STEP_POLICIES:
        raise ValueError(f"final_step must be one of {', '.join(map(repr, FINAL_STEP_POLICIES))}; got {final_step!r}")
    sigmas_list = validate_sigmas(sigmas, x)
    if not isinstance(sigmas, torch.Tensor):
        sigmas = torch.tensor(sigmas_list, dtype=torch.float64, device=x.device)
    if check_finite and not _all_finite(x):
        raise ValueError("x contains NaN or inf values")

    solver_obj = make_solver(solver, options)
    denoise_last = False
    if final_step != "solver" and sigmas_list[-1] == 0.0:
        # The solver stops at the last non-zero sigma; "denoise" then maps x to D(x; σ_min).
        sigmas_list = sigmas_list[:-1]
        denoise_last = final_step == "denoise"

    noise = _make_noise(solver_obj, x, sigmas_list, generator, noise_sampler)
    ctx = Context(model, x, sigmas, extra_args or {}, callback, noise, progress, check_finite)
    solver_obj.reset()
    # The grid is validated: denoisers skip their per-call check of σ (a host sync on a GPU).
    with torch.no_grad(), sigmas_checked_by_caller(model, sigmas_list):
        if len(sigmas_list) >= 2:
            steps = solver_obj.plan(sigmas_list)
            x = solver_obj.run(ctx, x, steps)
        if denoise_last:
            last = Step(index=len(sigmas_list) - 1, sigma=sigmas_list[-1], sigma_next=0.0)
            ctx.begin_step(last)
            x = ctx.denoise(x, last.sigma)
    ctx.raise_if_not_finite(x)
    if not return_info:
        return x
    run_info = SamplingInfo(
        solver=solver_obj.name,
        nfe=ctx.nfe,
        steps=ctx.info_extra.pop("steps", len(sigmas_list) - 1 + int(denoise_last)),
        accepted=ctx.info_extra.pop("accepted", len(sigmas_list) - 1),
        rejected=ctx.info_extra.pop("rejected", 0),
        extra=ctx.info_extra,
    )
    return x, run_info
