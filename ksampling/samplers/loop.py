"""The one sampling loop: validation, model calls, NFE, callbacks, progress and noise.

Every solver runs through :class:`Plan` (:func:`sample` makes one and calls it once). Making
a plan validates the model, the grid and the solver, and computes all per-step scalars on the
host, in float64, from ``sigmas.tolist()``. Calling it runs the steps: inside the loop no
tensor is turned into a Python value; the finiteness of the model outputs is accumulated on
the device and checked once, after the last step. A run traces into one graph
(``torch.compile(plan, fullgraph=True)``) and records into one CUDA graph
(:meth:`Plan.capture`).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from tqdm.auto import tqdm

from ..denoisers.base import sigmas_checked_by_caller
from .base import Solver, Step, make_solver
from .noise import GaussianNoise, PredrawnNoise, no_noise

__all__ = ["sample", "plan", "Plan", "PredrawnNoise", "SamplingInfo", "Context", "validate_sigmas", "FINAL_STEP_POLICIES", "MAX_SIGMA"]

#: How the step that ends at sigma = 0 is taken (only when the grid ends in 0):
#: ``"solver"`` the solver's own rule (for most, one Euler/DDIM step to 0, i.e. x <- D(x; σ_min));
#: ``"denoise"`` replace the last step by x <- D(x; σ_{N-1}) whatever the solver;
#: ``"stop"`` drop the last step and return x at σ_{N-1} (no denoising, one NFE fewer).
FINAL_STEP_POLICIES = ("solver", "denoise", "stop")


#: The largest sigma a grid may hold: σ² must stay finite in float64 (the solvers' host-side
#: coefficients square it), and no diffusion model comes near it.
MAX_SIGMA = 1e150


@dataclass
class SamplingInfo:
    """What a run did: returned by ``sample(..., return_info=True)``."""

    solver: str
    nfe: int = 0
    steps: int = 0
    accepted: int = 0
    rejected: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _check_device(sigmas, x: torch.Tensor, name: str) -> None:
    if isinstance(sigmas, torch.Tensor) and sigmas.device != x.device:
        raise ValueError(
            f"{name} is on {sigmas.device} but x is on {x.device}; move them to one device "
            f"(e.g. sigmas.to(x.device))"
        )


def validate_sigmas(sigmas, x: torch.Tensor | None = None, *, name: str = "sigmas") -> list[float]:
    """Check a sigma grid and return it as a host-side list of floats (one transfer)."""
    if isinstance(sigmas, torch.Tensor):
        if sigmas.ndim != 1:
            raise ValueError(f"{name} must be a 1-D tensor, got shape {tuple(sigmas.shape)}")
        if sigmas.is_complex() or not sigmas.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {sigmas.dtype}")
        if x is not None:
            _check_device(sigmas, x, name)
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
        if s > MAX_SIGMA:
            raise ValueError(f"{name}[{j}] = {s:g} is too large; sigmas must be <= {MAX_SIGMA:g} (σ² must be finite)")
    for j in range(len(values) - 1):
        if not values[j] > values[j + 1]:
            raise ValueError(
                f"{name} must be strictly descending: {name}[{j}] = {values[j]} is not greater than "
                f"{name}[{j + 1}] = {values[j + 1]}"
            )
    return values


class _Checksums:
    """The sum of every model output (and of every user-supplied noise draw), kept on the
    device until the run ends: a NaN or ±inf anywhere makes its sum non-finite. (So would
    finite outputs whose float32 sum overflows, |sum| > 3e38 — far outside any diffusion
    model's range.) One sum is one cheap reduction; ``isfinite(out).all()`` would be two
    kernels and a full-size bool tensor.

    Eagerly the sums go into one preallocated buffer: a list of 0-d tensors, one per call,
    scatters small long-lived allocations between the large ones and made peak memory grow
    with the number of steps. Under ``torch.compile`` (``traced``) they are a plain list,
    which the compiler fuses into its graph.
    """

    def __init__(self, x: torch.Tensor, capacity: int, traced: bool):
        self.dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        self.where: list[tuple[str, int, float]] = []  # (source, step index, sigma) of each sum
        self.traced = traced
        if traced:
            self._sums: list[torch.Tensor] = []
            return
        self._buffer = torch.empty(max(capacity, 1), dtype=self.dtype, device=x.device)
        self._slots = self._buffer.unbind(0)
        self._dims = tuple(range(x.ndim))

    def add(self, tensor: torch.Tensor, source: str, index: int, sigma: float) -> None:
        k = len(self.where)
        self.where.append((source, index, sigma))
        if self.traced:
            self._sums.append(tensor.sum(dtype=self.dtype))
            return
        if tensor.requires_grad:  # a differentiable run: the check is no part of the graph
            tensor = tensor.detach()
        if k == len(self._slots):  # adaptive solvers may call the model more often than planned
            grown = self._buffer.new_empty(2 * k)
            grown[:k] = self._buffer
            self._buffer, self._slots = grown, grown.unbind(0)
        torch.sum(tensor, self._dims, dtype=self.dtype, out=self._slots[k])

    def finite(self, x: torch.Tensor) -> torch.Tensor:
        """A bool tensor: for each sum (and the final x), whether it is finite."""
        self.add(x, "sampler", -1, math.nan)
        sums = torch.stack(self._sums) if self.traced else self._buffer[: len(self.where)]
        return torch.isfinite(sums)

    def raise_first(self, finite: list[bool]) -> None:
        """Raise a ValueError naming the first non-finite sum's source, step and sigma."""
        if all(finite):
            return
        source, index, sigma = self.where[finite.index(False)]
        if source == "model":
            raise ValueError(f"the model returned non-finite values (NaN or inf) at step {index} (sigma={sigma:g})")
        if source == "noise":
            raise ValueError(
                f"the noise_sampler returned non-finite values (NaN or inf) at step {index} (sigma={sigma:g}); "
                "the model's outputs were finite up to there"
            )
        raise ValueError("the sampler produced non-finite values; check the sigmas and the solver options")


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
        *,
        sigma_batches: dict | None = None,
        capacity: int = 64,
        traced: bool = False,
        check_noise: bool = False,
    ):
        self.model = model
        self.extra_args = extra_args
        self.callback = callback
        self.noise_sampler = noise
        self.show_progress = progress and not traced  # tqdm is host I/O: no place in a graph
        self.check_finite = check_finite
        self.batch = x.shape[0]
        self.shape = x.shape
        self.dtype = x.dtype
        self.sigmas = sigmas
        self.nfe = 0
        self.info_extra: dict[str, Any] = {}
        self._step: Step | None = None
        self._callback_due = False
        # sigma (a host float) -> the [B] tensor the model gets; a Plan keeps it across runs
        self._sigma_batches = {} if sigma_batches is None else sigma_batches
        self.missed_sigmas: list[float] = []
        self.checksums = _Checksums(x, capacity, traced) if check_finite else None
        self._check_noise = check_noise and check_finite  # only noise the caller brought can be bad

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
        return self._finish(self.model(x, self._sigma_batch(x, sigma), **self.extra_args), x, sigma)

    def denoise_with_variance(self, x: torch.Tensor, sigma: float):
        """(D, learned variance or None). Uses ``model.denoise_with_variance`` when the model
        has one (improved-DDPM networks wrapped by :mod:`ksampling.denoisers`)."""
        if not hasattr(self.model, "denoise_with_variance"):
            return self.denoise(x, sigma), None
        out, variance = self.model.denoise_with_variance(x, self._sigma_batch(x, sigma), **self.extra_args)
        return self._finish(out, x, sigma), variance

    def denoise_with_uncond(self, x: torch.Tensor, sigma: float):
        """(D, D_uncond): the guided and the unconditional denoised of one model call
        (``model.denoise_with_uncond``, counted as one NFE), for the CFG++ solvers."""
        method = getattr(self.model, "denoise_with_uncond", None)
        if method is None:
            raise TypeError(
                "CFG++ solvers need a guidance-wrapped model with a denoise_with_uncond(x, sigma, **extra_args) "
                "method returning (guided, unconditional), e.g. ksampling.denoisers.ClassifierFreeGuidance"
            )
        result = method(x, self._sigma_batch(x, sigma), **self.extra_args)
        if not (isinstance(result, tuple) and len(result) == 2):
            raise TypeError(
                f"model.denoise_with_uncond must return a tuple (denoised, uncond_denoised), got {type(result).__name__}"
            )
        out, uncond = result
        step = self._step
        uncond = self._check_output(uncond, sigma, step, "model.denoise_with_uncond (its uncond part)")
        if self.checksums is not None:
            self.checksums.add(uncond, "model", step.index if step is not None else -1, sigma)
        return self._finish(out, x, sigma), uncond

    def noise(self, sigma: float, sigma_next: float) -> torch.Tensor:
        """Standard normal noise like ``x`` for the step sigma -> sigma_next."""
        n = self.noise_sampler(sigma, sigma_next)
        if not isinstance(n, torch.Tensor):
            raise TypeError(
                f"noise_sampler must return a tensor shaped like x, got {type(n).__name__} (sigma={sigma:g})"
            )
        if n.shape != self.shape:
            raise ValueError(f"noise_sampler returned shape {tuple(n.shape)}, expected {tuple(self.shape)}")
        if n.dtype != self.dtype:
            n = n.to(self.dtype)
        if self._check_noise:
            step = self._step
            self.checksums.add(n, "noise", step.index if step is not None else -1, sigma)
        return n

    def add_noise(self, x: torch.Tensor, std: float, sigma: float, sigma_next: float) -> torch.Tensor:
        """x + std · n with n ~ N(0, I) drawn for the step sigma -> sigma_next.

        The one place where a solver adds noise; ``std`` is a host-side float (no sync).
        """
        return torch.add(x, self.noise(sigma, sigma_next), alpha=std)

    # -- inside ---------------------------------------------------------------------------
    def _sigma_batch(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        sigma_batch = self._sigma_batches.get(sigma)
        if sigma_batch is None:
            # Not cached: made for this call and freed after it. Caching it here would leave
            # a small long-lived allocation between the large ones of every step, which
            # fragments the heap (peak memory then grows with the number of steps); a Plan
            # makes the missed ones in one allocation before its next run instead.
            self.missed_sigmas.append(sigma)
            sigma_batch = x.new_full((self.batch,), sigma)
        return sigma_batch

    def _check_output(self, out, sigma: float, step: Step | None, what: str = "the model") -> torch.Tensor:
        if not isinstance(out, torch.Tensor):
            raise TypeError(
                f"{what} must return a tensor, got {type(out).__name__} "
                f"(step {step.index if step is not None else -1}, sigma={sigma:g})"
            )
        if out.shape != self.shape:
            raise ValueError(
                f"{what} returned shape {tuple(out.shape)} at step {step.index if step is not None else -1} "
                f"(sigma={sigma:g}); expected the shape of x, {tuple(self.shape)}"
            )
        if out.dtype != self.dtype:
            if not out.is_floating_point():
                raise TypeError(
                    f"{what} returned a {out.dtype} tensor at step {step.index if step is not None else -1} "
                    f"(sigma={sigma:g}); a denoiser must return floating-point values (a cast would truncate them)"
                )
            out = out.to(self.dtype)
        return out

    def _finish(self, out, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """The bookkeeping of one model call: count, check, checksum, callback."""
        self.nfe += 1
        step = self._step
        if not isinstance(out, torch.Tensor) or out.shape != self.shape or out.dtype != self.dtype:
            out = self._check_output(out, sigma, step)
        if self.checksums is not None:
            self.checksums.add(out, "model", step.index if step is not None else -1, sigma)
        if self._callback_due:
            self._callback_due = False
            # Adaptive and off-grid solvers (dpm_fast, dpm_adaptive) step between sigmas of
            # their own; their Steps say so with on_grid=False.
            on_grid = getattr(step, "on_grid", True)
            sigma_t = self.sigmas[step.index] if on_grid else self.sigmas.new_full((), step.sigma)
            sigma_hat = sigma_t if sigma == step.sigma else self.sigmas.new_full((), sigma)
            self.callback({"x": x, "i": step.index, "sigma": sigma_t, "sigma_hat": sigma_hat, "denoised": out})
        return out

    def raise_if_not_finite(self, x: torch.Tensor) -> None:
        """The one host sync of a run: report the first non-finite model output, if any."""
        if self.checksums is None:
            return
        self.checksums.raise_first(self.checksums.finite(x).tolist())


def _check_x_tensor(x) -> None:
    """x must be a floating-point tensor with a non-empty batch dimension first."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(f"x must have a non-empty batch dimension first, got shape {tuple(x.shape)}")


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
        return no_noise
    if solver.default_noise == "brownian":
        from .brownian import BrownianTreeNoiseSampler

        sigma_min = min(s for s in sigmas_list if s > 0)
        return BrownianTreeNoiseSampler(x, sigma_min, sigmas_list[0], generator=generator)
    return GaussianNoise(x, generator)


class _Recorder:
    """Wraps a noise sampler and keeps what it returned (for :meth:`Plan.draw_noise`)."""

    def __init__(self, sampler):
        self.sampler = sampler
        self.draws: list[torch.Tensor] = []

    def __call__(self, sigma, sigma_next):
        n = self.sampler(sigma, sigma_next)
        self.draws.append(n)
        return n


def _stub_model(x, sigma, **extra_args):
    return x


class Plan:
    """A sampling run prepared once and run many times: ``ksampling.plan(model, sigmas, solver)``.

    Making the plan validates the model, the grid, the solver and its options, and computes
    every host-side coefficient of every step (``Solver.plan``). Calling it samples:
    ``plan(x, generator=None, noise_sampler=None)``, as often as wanted, for new batches (of
    any shape; the ``[B]`` sigma tensors given to the model are made once per device, dtype
    and batch size and kept). :func:`sample` is one plan, called once.

    A plan is compilable: ``torch.compile(plan, fullgraph=True)`` traces a whole run into one
    graph (noise then comes pre-drawn: ``plan(x, noise=plan.draw_noise(x, generator))``; a
    :class:`torch.Generator` cannot be traced), and :meth:`capture` records one into a CUDA
    graph. A plan keeps per-run state (a multistep solver's history, the checksums): call one
    plan from one thread at a time. The model gets the same sigma tensors in every run: it
    must not modify them in place.
    """

    def __init__(
        self,
        model: Callable,
        sigmas,
        solver: str | type[Solver] | Solver = "euler",
        *,
        extra_args: Mapping[str, Any] | None = None,
        final_step: str = "solver",
        check_finite: bool = True,
        callback: Callable[[dict], Any] | None = None,
        progress: bool = False,
        **options,
    ):
        if not callable(model):
            raise TypeError(f"model must be callable as model(x, sigma, **extra_args), got {type(model).__name__}")
        if extra_args is not None and not isinstance(extra_args, Mapping):
            raise TypeError(f"extra_args must be a dict, got {type(extra_args).__name__}")
        if callback is not None and not callable(callback):
            raise TypeError("callback must be callable")
        if final_step not in FINAL_STEP_POLICIES:
            raise ValueError(f"final_step must be one of {', '.join(map(repr, FINAL_STEP_POLICIES))}; got {final_step!r}")
        sigmas_list = validate_sigmas(sigmas)
        self.model = model
        self.extra_args = dict(extra_args or {})
        self.callback = callback
        self.progress = bool(progress)
        self.check_finite = bool(check_finite)
        self.final_step = final_step
        self.sigmas = sigmas if isinstance(sigmas, torch.Tensor) else torch.tensor(sigmas_list, dtype=torch.float64)
        self.solver = make_solver(solver, options)

        run_sigmas = sigmas_list
        final = None
        if final_step != "solver" and sigmas_list[-1] == 0.0:
            # The solver stops at the last non-zero sigma; "denoise" then maps x to D(x; σ_min).
            run_sigmas = sigmas_list[:-1]
            if final_step == "denoise":
                n = len(run_sigmas)
                final = Step(
                    index=n - 1, sigma=run_sigmas[-1], sigma_next=0.0,
                    sigma_prev=run_sigmas[-2] if n >= 2 else None,
                    first=n == 1, last=True, to_zero=True, n_steps=n,
                )
        self.run_sigmas = run_sigmas
        self.steps: list[Step] = self.solver.plan(run_sigmas) if len(run_sigmas) >= 2 else []
        self.final = final
        self.sigma_max = sigmas_list[0]
        check_range = getattr(model, "check_sigma_range", None)
        if callable(check_range):  # a grid above a network's training range warns once, here
            check_range(self.sigma_max)
        # model calls of a run as planned (the checksum buffer's size; adaptive solvers grow it)
        self._capacity = len(self.steps) * self.solver.nfe_per_step + 2
        self._sigma_batches: dict[tuple, dict[float, torch.Tensor]] = {}
        self._missed: dict[int, list[float]] = {}  # id(cache) -> sigmas its last run made per call
        self._sigmas_on: dict[torch.device, torch.Tensor] = {self.sigmas.device: self.sigmas}
        self._noise_draws: int | None = None

    # -- calling -------------------------------------------------------------------------------
    def __call__(
        self,
        x: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        noise_sampler: Callable | None = None,
        *,
        noise: torch.Tensor | None = None,
        return_info: bool = False,
        differentiable: bool = False,
    ):
        """Sample from ``x`` (the initial noise, already scaled by ``sigmas[0]``).

        Args:
            generator: a :class:`torch.Generator`, or one per sample (see :func:`sample`).
            noise_sampler: ``noise_sampler(sigma, sigma_next) -> N(0, I)`` like ``x``.
            noise: pre-drawn noise, ``[draws, *x.shape]`` (:meth:`draw_noise`); what a
                compiled or captured run uses instead of a generator.
            return_info: also return a :class:`SamplingInfo`.
            differentiable: run with autograd on (gradients flow to ``x`` and the model's
                parameters; the σ coefficients are host floats). Off: the run is under
                ``torch.no_grad()``.
        """
        traced = torch.compiler.is_compiling()
        self._check_x(x, traced)
        noise_fn = self._noise(x, generator, noise_sampler, noise, traced)
        x, ctx = self._execute(x, noise_fn, traced, differentiable, check_noise=noise_sampler is not None or noise is not None)
        if ctx.checksums is not None:
            finite = ctx.checksums.finite(x)
            if traced:
                # A graph cannot raise without a host sync: an asynchronous device assertion
                # (on CUDA a device-side assert). Compile with check_finite=False to leave it out.
                torch._assert_async(finite.all(), "ksampling: non-finite values (NaN or inf) in a compiled run")
            else:
                ctx.checksums.raise_first(finite.tolist())
        if not return_info:
            return x
        return x, self._info(ctx)

    def _execute(self, x, noise_fn, traced: bool, differentiable: bool, check_noise: bool = False):
        """The run itself: (x at the end, its Context). No host sync, no validation."""
        ctx = Context(
            self.model, x, self._sigmas_for(x.device), self.extra_args, self.callback, noise_fn,
            self.progress, self.check_finite,
            sigma_batches=None if traced else self._sigma_batches_for(x),
            capacity=self._capacity, traced=traced, check_noise=check_noise,
        )
        solver = self.solver
        solver.reset()
        if not traced:
            self._missed[id(ctx._sigma_batches)] = ctx.missed_sigmas
        try:
            # The grid is validated: denoisers skip their per-call check of σ (a host sync on a
            # GPU). A traced run skips it by itself (and cannot trace a context variable).
            checked = contextlib.nullcontext() if traced else sigmas_checked_by_caller()
            with contextlib.nullcontext() if differentiable else torch.no_grad(), checked:
                if self.steps:
                    x = solver.run(ctx, x, self.steps)
                if self.final is not None:
                    ctx.begin_step(self.final)
                    x = ctx.denoise(x, self.final.sigma)
        finally:
            solver.reset()  # the history's tensors are not kept alive between runs
        return x, ctx

    def _info(self, ctx) -> SamplingInfo:
        steps_taken = len(self.run_sigmas) - 1
        return SamplingInfo(
            solver=self.solver.name,
            nfe=ctx.nfe,
            steps=ctx.info_extra.pop("steps", steps_taken + int(self.final is not None)),
            accepted=ctx.info_extra.pop("accepted", steps_taken),
            rejected=ctx.info_extra.pop("rejected", 0),
            extra=ctx.info_extra,
        )

    def _check_x(self, x, traced: bool) -> None:
        _check_x_tensor(x)
        if self.sigma_max > torch.finfo(x.dtype).max:
            raise ValueError(
                f"sigmas[0] = {self.sigma_max:g} does not fit in x's dtype {x.dtype} "
                f"(at most {torch.finfo(x.dtype).max:g}); use a smaller sigma_max or a wider dtype"
            )
        if self.check_finite and not traced and not _all_finite(x):
            raise ValueError("x contains NaN or inf values")

    def _noise(self, x, generator, noise_sampler, noise, traced: bool):
        if noise is not None:
            if generator is not None or noise_sampler is not None:
                raise ValueError("pass one of noise, generator and noise_sampler, not several")
            if not isinstance(noise, torch.Tensor) or noise.shape[1:] != x.shape:
                raise ValueError(
                    "noise must be a tensor [draws, *x.shape] of pre-drawn standard normal noise "
                    "(plan.draw_noise(x, generator))"
                )
            return PredrawnNoise(noise)
        if traced and noise_sampler is None and self.solver.draws_noise:
            raise ValueError(
                f"a compiled run of {self.solver.name!r} cannot draw from a torch.Generator (it cannot be traced); "
                "pass pre-drawn noise: plan(x, noise=plan.draw_noise(x, generator))"
            )
        return _make_noise(self.solver, x, self.run_sigmas, generator, noise_sampler)

    def _sigmas_for(self, device) -> torch.Tensor:
        sigmas = self._sigmas_on.get(device)
        if sigmas is None:
            sigmas = self._sigmas_on[device] = self.sigmas.to(device)
        return sigmas

    def _sigma_batches_for(self, x) -> dict:
        """The ``[B]`` sigma tensors of x's device, dtype and batch size, as ``{sigma: tensor}``:
        rows of one ``[K, B]`` tensor made before the run, for the grid's sigmas on the first
        run and then for every sigma that the previous run called the model with."""
        key = (x.device, x.dtype, x.shape[0])
        cache = self._sigma_batches.get(key)
        if cache is None:
            cache = self._sigma_batches[key] = {}
            values = self.run_sigmas
        else:
            values = self._missed.pop(id(cache), None)
        if values:
            values = list(dict.fromkeys(values))
            # float64 host values rounded to x's dtype, as x.new_full rounds them
            rows = torch.tensor(values, dtype=x.dtype, device=x.device).unsqueeze(1)
            if x.shape[0] > 1:
                rows = rows.expand(len(values), x.shape[0]).contiguous()
            cache.update(zip(values, rows.unbind(0)))
        return cache

    # -- noise for compiled and captured runs ------------------------------------------------
    def noise_draws(self) -> int:
        """How many N(0, I) draws like ``x`` one run takes (0 for a deterministic configuration)."""
        if self._noise_draws is None:
            if not self.solver.draws_noise:
                self._noise_draws = 0
            else:
                if not self.solver.fixed_grid and self.solver.name == "dpm_adaptive":
                    raise ValueError("dpm_adaptive chooses its steps from the model's outputs: its noise cannot be pre-drawn")
                counter = _Recorder(lambda sigma, sigma_next: self.sigmas.new_zeros(1))
                probe = self.sigmas.new_zeros(1)
                saved = self.model, self.callback, self.check_finite, self.progress
                self.model, self.callback, self.check_finite, self.progress = _stub_model, None, False, False
                try:
                    self._execute(probe, counter, False, False)
                finally:
                    self.model, self.callback, self.check_finite, self.progress = saved
                self._noise_draws = len(counter.draws)
        return self._noise_draws

    def draw_noise(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        """The noise of one run, drawn now: ``[draws, *x.shape]``, exactly what
        ``plan(x, generator=generator)`` would draw (same generator state, same order), for
        ``plan(x, noise=...)``, a compiled plan or a captured one."""
        self._check_x(x, True)
        draws = self.noise_draws()
        if draws == 0:
            return x.new_empty((0, *x.shape))
        sampler = _Recorder(_make_noise(self.solver, x, self.run_sigmas, generator, None))
        if isinstance(sampler.sampler, GaussianNoise):
            for _ in range(draws):  # i.i.d. draws: no need to walk the steps
                sampler(None, None)
        else:  # a Brownian tree is asked for the increments of the run's own sigma pairs
            saved = self.model, self.callback, self.check_finite, self.progress
            self.model, self.callback, self.check_finite, self.progress = _stub_model, None, False, False
            try:
                self._execute(torch.zeros_like(x), sampler, False, False)
            finally:
                self.model, self.callback, self.check_finite, self.progress = saved
        return torch.stack([n.to(x.dtype) for n in sampler.draws])

    # -- CUDA graphs ---------------------------------------------------------------------------
    def capture(self, x_example: torch.Tensor, *, warmup: int = 2):
        """Record one whole run into a CUDA graph with static buffers (needs CUDA).

        Returns a :class:`~ksampling.samplers.graphs.CapturedPlan`: ``captured(x, generator)``
        (or ``noise=``) copies its inputs into the static buffers, replays the graph and
        returns the result (a new tensor). See :mod:`ksampling.samplers.graphs`.
        """
        from .graphs import CapturedPlan

        return CapturedPlan(self, x_example, use_graph=True, warmup=warmup)

    def __repr__(self) -> str:
        return (
            f"Plan(solver={self.solver.name!r}, steps={len(self.steps)}, final_step={self.final_step!r}, "
            f"sigma_max={self.sigma_max:g}, sigma_min={self.run_sigmas[-1]:g})"
        )


#: ``ksampling.plan(model, sigmas, solver, **options)`` makes a :class:`Plan`: the run of
#: :func:`sample` prepared once, to be called for each batch (the class itself, under the
#: name a call reads best with).
plan = Plan


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
    differentiable: bool = False,
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
        differentiable: keep autograd on (gradients flow to ``x`` and the model's
            parameters); by default the run is under ``torch.no_grad()``.
        **options: the solver's options (``eta``, ``s_churn``, ``order``, ...).

    Returns:
        The sample (same dtype as ``x``), or ``(sample, info)`` with ``return_info=True``.

    This is ``plan(model, sigmas, solver, ...)(x, ...)``: to sample many batches on one grid,
    make the :func:`plan` once.
    """
    if not callable(model):
        raise TypeError(f"model must be callable as model(x, sigma, **extra_args), got {type(model).__name__}")
    _check_x_tensor(x)
    _check_device(sigmas, x, "sigmas")
    run = Plan(
        model, sigmas, solver, extra_args=extra_args, final_step=final_step, check_finite=check_finite,
        callback=callback, progress=progress, **options,
    )
    return run(x, generator, noise_sampler, return_info=return_info, differentiable=differentiable)
