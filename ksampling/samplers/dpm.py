"""DPM-Solver (noise-prediction form) as in k-diffusion: dpm_2, dpm_2_ancestral, dpm_fast,
dpm_adaptive.

Lu et al. 2022, "DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model Sampling in
Around 10 Steps" (arXiv:2206.00927). In the VE state space (α = 1) with ``λ = −log σ``,
``h = λ_next − λ`` and ``ε = (x − D(x; σ))/σ``, the DPM-Solver updates are

* DPM-Solver-1 (eq. 3.7):  x_next = x − σ_next (e^h − 1) ε(x, λ);
* DPM-Solver-2 (Algorithm 4, intermediate λ + r₁h):
  u = x − σ_s (e^{r₁h} − 1) ε(x, λ),
  x_next = x − σ_next (e^h − 1) ε − σ_next/(2r₁) (e^h − 1) (ε(u, λ + r₁h) − ε);
* DPM-Solver-3 (Algorithm 5, r₁ = 1/3, r₂ = 2/3):
  u₁ = x − σ₁ (e^{r₁h} − 1) ε,
  u₂ = x − σ₂ (e^{r₂h} − 1) ε − σ₂ (r₂/r₁) ((e^{r₂h} − 1)/(r₂h) − 1) (ε(u₁) − ε),
  x_next = x − σ_next (e^h − 1) ε − σ_next/r₂ ((e^h − 1)/h − 1) (ε(u₂) − ε).

``dpm_2`` / ``dpm_2_ancestral`` are k-diffusion's "DPM-Solver-2-inspired" samplers written on
the Karras ODE: an Euler half step to the geometric midpoint σ_mid = √(σ σ_next), then a full
step with the derivative there.

``dpm_fast`` and ``dpm_adaptive`` choose their own steps (``fixed_grid = False``). Through
:func:`ksampling.sample` they integrate from ``sigma_max = sigmas[0]`` to ``sigma_min`` = the
last non-zero sigma of the grid and, like k-diffusion's, **end at sigma_min** (they do not take
a step to 0; pass ``final_step="denoise"`` to finish with ``D(x; σ_min)``). A grid with no
non-zero sigma below ``sigmas[0]`` (one step to 0) is answered with ``x = D(x; sigmas[0])``.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch
from tqdm.auto import tqdm

from .ancestral import _Ancestral
from .base import Step, register
from .validation import check_int, check_nonnegative, check_positive, check_real
from .common import Stochastic, ancestral_step
from .dpm_solver import singlestep_coefficients, singlestep_update
from .euler import _ChurnSolver

__all__ = ["PIDStepSizeController", "dpm_solver_1", "dpm_solver_2", "dpm_solver_3"]


@register
class DPM2(_ChurnSolver):
    """k-diffusion's ``sample_dpm_2``: a midpoint method on dx/dσ = (x − D(x; σ))/σ with
    EDM churn (Karras et al. 2022, Algorithm 2) and the midpoint taken in log σ:

        d = (x̂ − D(x̂; σ̂))/σ̂,  σ_mid = √(σ̂ σ_next),  u = x̂ + (σ_mid − σ̂) d,
        x_next = x̂ + (σ_next − σ̂) (u − D(u; σ_mid))/σ_mid.

    The half step is u = D + (σ_mid/σ̂)(x̂ − D), one ``torch.lerp``. The step to σ_next = 0 is
    an Euler step.
    """

    name = "dpm_2"
    order = 2
    nfe_per_step = 2
    paper = "Lu et al. 2022 (DPM-Solver-2) and Karras et al. 2022, Algorithm 2; k-diffusion sample_dpm_2"

    def coefficients(self, sigmas, i):
        coeffs = super().coefficients(sigmas, i)
        sigma_hat, sigma_next = coeffs["sigma_hat"], sigmas[i + 1]
        coeffs.update(_midpoint_coefficients(sigma_hat, sigma_next))
        return coeffs

    def step(self, ctx, x, step):
        x = self.churn(ctx, x, step)
        denoised = ctx.denoise(x, step.sigma_hat)
        if step.to_zero:
            return torch.lerp(x, denoised, step.euler_weight)  # Euler: x_next = D
        return _midpoint_step(ctx, x, denoised, step)


@register
class DPM2Ancestral(_Ancestral):
    """k-diffusion's ``sample_dpm_2_ancestral``: the ``dpm_2`` step to σ_down, then fresh noise
    S_noise σ_up z (σ_down, σ_up from :func:`~ksampling.samplers.common.ancestral_step`). A step
    with σ_down = 0 is an Euler step. At ``eta = 0`` it equals ``dpm_2``.

    (For eta > 1 a step can have σ_down = 0 < σ_next; we add its noise, where k-diffusion's
    Euler branch skips it.)
    """

    name = "dpm_2_ancestral"
    order = 2
    nfe_per_step = 2
    paper = "Lu et al. 2022 (DPM-Solver-2); k-diffusion sample_dpm_2_ancestral"

    def coefficients(self, sigmas, i):
        coeffs = super().coefficients(sigmas, i)
        coeffs.update(_midpoint_coefficients(sigmas[i], coeffs["sigma_down"]))
        return coeffs

    def step(self, ctx, x, step):
        denoised = ctx.denoise(x, step.sigma)
        if step.sigma_down == 0.0:
            x = torch.lerp(x, denoised, step.euler_weight)  # Euler: x_down = D
        else:
            x = _midpoint_step(ctx, x, denoised, step)
        return self.add_noise(ctx, x, step)


def _midpoint_coefficients(sigma: float, sigma_target: float) -> dict:
    """The scalars of the dpm_2 step σ → σ_target through σ_mid = √(σ σ_target)."""
    if sigma_target == 0.0:
        return dict(sigma_mid=0.0)
    sigma_mid = math.exp(0.5 * (math.log(sigma) + math.log(sigma_target)))
    return dict(
        sigma_mid=sigma_mid,
        mid_weight=1 - sigma_mid / sigma,  # u = lerp(x, D, 1 − σ_mid/σ)
        dt_over_sigma_mid=(sigma_target - sigma) / sigma_mid,
    )


def _midpoint_step(ctx, x, denoised, step):
    """u = D + (σ_mid/σ)(x − D),  x_target = x + (σ_target − σ) (u − D(u; σ_mid))/σ_mid."""
    x_mid = torch.lerp(x, denoised, step.mid_weight)
    return torch.add(x, x_mid - ctx.denoise(x_mid, step.sigma_mid), alpha=step.dt_over_sigma_mid)


# -- DPM-Solver in λ = −log σ, noise prediction ----------------------------------------------
def _sigma(lam: float) -> float:
    return math.exp(-lam)


class _EpsCache:
    """ε(x, λ) = (x − D(x; σ(λ)))/σ(λ), one model call per stage of a step.

    Stages are keyed by their λ: the DPM-Solver-2 (r₁ = 1/3) and DPM-Solver-3 steps of
    dpm_adaptive share their first two stages, as in the paper's embedded pair."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.values: dict[float, torch.Tensor] = {}

    def __call__(self, x, lam: float):
        eps = self.values.get(lam)
        if eps is None:
            sigma = _sigma(lam)
            eps = (x - self.ctx.denoise(x, sigma)) / sigma
            self.values[lam] = eps
        return eps


def _dpm_solver(eps_at, x, lam, lam_next, order, r1=1 / 2, r2=2 / 3):
    """One step of :class:`~ksampling.samplers.dpm_solver.DPMSolver` with noise prediction,
    in k-diffusion's terms: times λ and ``eps_at(x, λ) = ε``."""
    sigma = _sigma(lam)
    coef = SimpleNamespace(**singlestep_coefficients(sigma, _sigma(lam_next), order, "noise", r1, r2))
    return singlestep_update(lambda u, s: eps_at(u, -math.log(s)), x, eps_at(x, lam), coef, order, r1, r2)


def dpm_solver_1(eps_at, x, lam, lam_next):
    """DPM-Solver-1: x_next = x − σ_next (e^h − 1) ε."""
    return _dpm_solver(eps_at, x, lam, lam_next, 1)


def dpm_solver_2(eps_at, x, lam, lam_next, r1=1 / 2):
    """DPM-Solver-2 (Lu et al. 2022, Algorithm 4) with the intermediate point λ + r₁h."""
    return _dpm_solver(eps_at, x, lam, lam_next, 2, r1=r1)


def dpm_solver_3(eps_at, x, lam, lam_next, r1=1 / 3, r2=2 / 3):
    """DPM-Solver-3 (Lu et al. 2022, Algorithm 5)."""
    return _dpm_solver(eps_at, x, lam, lam_next, 3, r1=r1, r2=r2)


_DPM_SOLVER_STEPS = {1: dpm_solver_1, 2: dpm_solver_2, 3: dpm_solver_3}


def _ancestral_target(lam: float, lam_next: float, lam_end: float, eta: float) -> tuple[float, float]:
    """k-diffusion's ancestral split in λ: step deterministically to λ_down (never past the end)
    and add noise of std √(σ_next² − σ(λ_down)²)."""
    if eta == 0.0:
        return lam_next, 0.0
    sigma_down, _ = ancestral_step(_sigma(lam), _sigma(lam_next), eta)
    lam_down = min(lam_end, -math.log(sigma_down)) if sigma_down > 0 else lam_end
    return lam_down, math.sqrt(max(_sigma(lam_next) ** 2 - _sigma(lam_down) ** 2, 0.0))


def _range(steps: list[Step]) -> tuple[float, float]:
    """(sigma_max, sigma_min) of the grid: its first and its last non-zero sigma."""
    last = steps[-1]
    sigma_min = last.sigma_next if last.sigma_next > 0 else last.sigma
    return steps[0].sigma, sigma_min


def _denoise_once(ctx, x, sigma: float):
    """The degenerate grid [σ, 0]: no σ_min to integrate to, so one step to 0: x = D(x; σ)."""
    step = Step(index=0, sigma=sigma, sigma_next=0.0, sigma_prev=None, first=True, last=True, to_zero=True, n_steps=1)
    ctx.begin_step(step)
    return ctx.denoise(x, sigma)


class _OffGrid(Stochastic):
    """A solver that steps between sigmas of its own (it overrides :meth:`Solver.run`). Its
    Steps carry ``on_grid=False``: the callback then reports ``step.sigma`` instead of the
    caller's grid at ``step.index``. An ODE solver at its default ``eta = 0``."""

    kind = "ode"
    fixed_grid = False


@register
class DPMFast(_OffGrid):
    """DPM-Solver-fast (Lu et al. 2022, §3.4), k-diffusion ``sample_dpm_fast``: singlestep
    DPM-Solver on ``m = ⌊nfe/3⌋ + 1`` equal steps in λ between σ_max and σ_min, all of order 3
    except the last ones, which make the model calls add up to exactly ``nfe``:
    orders ``[3, …, 3, 2, 1]`` if ``nfe % 3 == 0``, else ``[3, …, 3, nfe % 3]``.

    Options: ``nfe`` (default: the number of steps of the grid), ``eta`` and ``s_noise``
    (ancestral noise per step, as k-diffusion; ``eta = 0`` is the ODE solver).
    The run ends at σ_min (see the module notes).
    """

    name = "dpm_fast"
    order = 3
    nfe_per_step = 3
    paper = "Lu et al. 2022, DPM-Solver (arXiv:2206.00927), DPM-Solver-fast"

    def __init__(self, nfe: int | None = None, eta: float = 0.0, s_noise: float = 1.0):
        super().__init__(eta, s_noise)
        self.nfe = None if nfe is None else check_int("nfe", nfe, 1)

    @staticmethod
    def orders(nfe: int) -> list[int]:
        m = nfe // 3 + 1
        if nfe % 3 == 0:
            return [3] * (m - 2) + [2, 1]
        return [3] * (m - 1) + [nfe % 3]

    def run(self, ctx, x, steps):
        sigma_max, sigma_min = _range(steps)
        if sigma_min == sigma_max:
            return _denoise_once(ctx, x, sigma_max)
        nfe = self.nfe if self.nfe is not None else len(steps)
        orders = self.orders(nfe)
        m = nfe // 3 + 1
        lam_start, lam_end = -math.log(sigma_max), -math.log(sigma_min)
        lams = [lam_start + (lam_end - lam_start) * k / m for k in range(m)] + [lam_end]
        plan = []
        for i, order in enumerate(orders):
            lam, lam_next = lams[i], lams[i + 1]
            lam_target, noise_std = _ancestral_target(lam, lam_next, lam_end, self.eta)
            plan.append(
                Step(
                    index=i,
                    sigma=_sigma(lam),
                    sigma_next=_sigma(lam_next),
                    sigma_prev=_sigma(lams[i - 1]) if i > 0 else None,
                    first=i == 0,
                    last=i == len(orders) - 1,
                    to_zero=False,
                    n_steps=len(orders),
                    on_grid=False,
                    lam=lam,
                    lam_target=lam_target,
                    solver_order=order,
                    noise_std=self.s_noise * noise_std,
                )
            )
        for step in ctx.progress(plan):
            ctx.begin_step(step)
            update = _DPM_SOLVER_STEPS[step.solver_order]
            x = update(_EpsCache(ctx), x, step.lam, step.lam_target)
            x = self.add_noise(ctx, x, step)
        return x


class PIDStepSizeController:
    """PID control of the step size h (Söderlind 2003, "Digital filters in adaptive
    time-stepping"), as in k-diffusion: with ``ε_k = 1/(error_k + eps)``,

        factor = limiter(ε_k^{β₁} ε_{k−1}^{β₂} ε_{k−2}^{β₃}),  limiter(f) = 1 + atan(f − 1),

    ``β₁ = (p + i + d)/order``, ``β₂ = −(p + 2d)/order``, ``β₃ = d/order``; the step is accepted
    when ``factor >= accept_safety`` and ``h`` is multiplied by ``factor`` either way.
    Plain host floats."""

    def __init__(self, h, pcoeff, icoeff, dcoeff, order=1, accept_safety=0.81, eps=1e-8):
        self.h = h
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.accept_safety = accept_safety
        self.eps = eps
        self.inv_errors: list[float] = []

    def propose_step(self, error: float) -> bool:
        inv_error = 1 / (error + self.eps)
        if not self.inv_errors:
            self.inv_errors = [inv_error] * 3
        self.inv_errors[0] = inv_error
        e0, e1, e2 = self.inv_errors
        try:
            product = e0**self.b1 * e1**self.b2 * e2**self.b3
        except (OverflowError, ZeroDivisionError):  # only for extreme errors and coefficients
            product = math.inf
        factor = 1 + math.atan(product - 1)
        accept = factor >= self.accept_safety
        if accept:
            self.inv_errors = [e0, e0, e1]
        self.h *= factor
        return accept


@register
class DPMAdaptive(_OffGrid):
    """DPM-Solver-12 / DPM-Solver-23 with adaptive steps (Lu et al. 2022, §3.4 and
    Algorithm 3), k-diffusion ``sample_dpm_adaptive``.

    Each attempt from λ to λ + h computes an embedded pair sharing its model calls: order 2
    uses DPM-Solver-1 and -2 (2 calls), order 3 uses DPM-Solver-2 with r₁ = 1/3 and
    DPM-Solver-3 (3 calls). The error

        E = ‖(x_low − x_high) / max(atol, rtol · max(|x_low|, |x_prev|))‖₂ / √(numel x)

    (one number for the whole batch, as in k-diffusion) drives a :class:`PIDStepSizeController`
    (``order`` 1.5 when eta > 0). An accepted attempt moves to ``x_high``; ``eta > 0`` adds
    ancestral noise as in ``dpm_fast``.

    The controller options are checked: ``h_init`` > 0 and finite, ``accept_safety`` in
    [0, 1], ``pcoeff + icoeff + dcoeff > 0``; ``max_attempts`` (10 000) bounds the attempts,
    and a run that needs more, or whose step size underflows, raises a ``RuntimeError``.

    Reading E is one host sync per attempt: the step-size control needs it. NFE, accepted and
    rejected attempts are returned in ``sample(..., return_info=True)``. The run ends at σ_min
    (see the module notes).
    """

    name = "dpm_adaptive"
    order = 3
    nfe_per_step = 3
    paper = "Lu et al. 2022, DPM-Solver (arXiv:2206.00927), adaptive step size (Algorithm 3)"

    def __init__(
        self,
        order: int = 3,
        rtol: float = 0.05,
        atol: float = 0.0078,
        h_init: float = 0.05,
        pcoeff: float = 0.0,
        icoeff: float = 1.0,
        dcoeff: float = 0.0,
        accept_safety: float = 0.81,
        eta: float = 0.0,
        s_noise: float = 1.0,
        max_attempts: int = 10_000,
    ):
        super().__init__(eta, s_noise)
        self.solver_order = check_int("order", order, 2, 3)
        self.rtol = check_nonnegative("rtol", rtol)
        self.atol = check_nonnegative("atol", atol)
        if self.rtol == 0 and self.atol == 0:
            raise ValueError("rtol and atol cannot both be 0")
        self.h_init = check_positive("h_init", h_init)
        self.pcoeff, self.icoeff, self.dcoeff = (check_real(n, v) for n, v in (("pcoeff", pcoeff), ("icoeff", icoeff), ("dcoeff", dcoeff)))
        if not self.pcoeff + self.icoeff + self.dcoeff > 0:
            # β₁ = (p + i + d)/order is the exponent of the newest error: with β₁ <= 0 a larger
            # error makes a larger step and the controller never settles
            raise ValueError(
                f"pcoeff + icoeff + dcoeff must be > 0 (the step must shrink when the error grows), "
                f"got {self.pcoeff} + {self.icoeff} + {self.dcoeff}"
            )
        # factor = 1 + atan(·) lies in (1 − π/4, 1 + π/2): accept_safety > 1 would reject steps
        # while growing them, and above 1 + π/2 nothing is ever accepted
        self.accept_safety = check_real("accept_safety", accept_safety, low=0.0, high=1.0)
        self.max_attempts = check_int("max_attempts", max_attempts, 1)

    def run(self, ctx, x, steps):
        sigma_max, sigma_min = _range(steps)
        if sigma_min == sigma_max:
            return _denoise_once(ctx, x, sigma_max)
        lam, lam_end = -math.log(sigma_max), -math.log(sigma_min)
        pid = PIDStepSizeController(
            self.h_init, self.pcoeff, self.icoeff, self.dcoeff, 1.5 if self.eta else self.solver_order, self.accept_safety
        )
        low, high = (dpm_solver_1, dpm_solver_2) if self.solver_order == 2 else (self._dpm_solver_2_third, dpm_solver_3)
        rms_scale = 1 / math.sqrt(x.numel())
        x_prev = x
        attempts = accepted = rejected = 0
        bar = tqdm(desc="dpm_adaptive", unit="attempt", leave=False, disable=not ctx.show_progress)
        while lam < lam_end - 1e-5:
            if attempts == self.max_attempts or not lam + pid.h > lam:
                bar.close()
                raise RuntimeError(
                    f"dpm_adaptive stopped after {attempts} attempts ({accepted} accepted) at "
                    f"sigma={_sigma(lam):g}, short of sigma_min={sigma_min:g} (step size h={pid.h:g} "
                    f"in log sigma); the tolerances "
                    f"rtol={self.rtol:g}, atol={self.atol:g} may be unreachable for this model, or "
                    f"raise max_attempts={self.max_attempts}"
                )
            lam_next = min(lam_end, lam + pid.h)
            lam_target, noise_std = _ancestral_target(lam, lam_next, lam_end, self.eta)
            step = Step(
                index=attempts, sigma=_sigma(lam), sigma_next=_sigma(lam_next), sigma_prev=None,
                first=attempts == 0, last=False, to_zero=False, n_steps=None, on_grid=False,
            )
            ctx.begin_step(step)
            eps_at = _EpsCache(ctx)
            x_low = low(eps_at, x, lam, lam_target)
            x_high = high(eps_at, x, lam, lam_target)
            scale = torch.clamp_min(torch.maximum(x_low.abs(), x_prev.abs()) * self.rtol, self.atol)
            error = float(torch.linalg.vector_norm((x_low - x_high) / scale)) * rms_scale  # host sync
            if not math.isfinite(error):
                raise ValueError(
                    f"dpm_adaptive: the error estimate is {error} at sigma={step.sigma:g}; "
                    "the model returned non-finite values, or the tolerances (rtol, atol) are so small "
                    "that the scaled error overflows, or atol = 0 met a zero state"
                )
            accept = pid.propose_step(error)
            # read by the k-diffusion drop-in, whose callback reports k-diffusion's 'error' and 'h'
            self.last_error, self.last_h = error, pid.h
            if accept:
                x_prev = x_low
                x = x_high
                x = self.add_noise(ctx, x, step, self.s_noise * noise_std)
                lam = lam_next
                accepted += 1
            else:
                rejected += 1
            attempts += 1
            bar.update(1)
        bar.close()
        ctx.info_extra.update(steps=attempts, accepted=accepted, rejected=rejected)
        return x

    @staticmethod
    def _dpm_solver_2_third(eps_at, x, lam, lam_next):
        # The low-order partner of DPM-Solver-3: DPM-Solver-2 through DPM-Solver-3's first stage.
        return dpm_solver_2(eps_at, x, lam, lam_next, r1=1 / 3)
