"""A drop-in replacement for ``k_diffusion.sampling`` and ``k_diffusion.external``.

Code written against k-diffusion 0.1.1 keeps working after one changed import::

    import ksampling.kdiffusion as K          # was: import k_diffusion as K
    sigmas = K.sampling.get_sigmas_karras(20, 0.03, 14.6)
    model = K.external.CompVisDenoiser(ldm)
    x = K.sampling.sample_dpmpp_2m(model, noise * sigmas[0], sigmas, callback=cb)

(``from ksampling.kdiffusion import sampling, external`` and ``from ksampling.kdiffusion import
sample_euler`` work too.) Every name has k-diffusion's signature, defaults, callback dict and
return value, but is a thin shim: each ``sample_*`` builds its arguments and calls
:func:`ksampling.sample` with the solver of the same name, each schedule calls
:mod:`ksampling.schedules`, and the ``external`` wrappers put k-diffusion's methods on top of
:class:`ksampling.denoisers.VPDiscrete` and :class:`ksampling.denoisers.NetworkDenoiser`.
There is no second implementation of any solver.

Differences from k-diffusion, all deliberate:

* **Randomness.** Like k-diffusion, and unlike :func:`ksampling.sample` (which never touches
  the global RNG), this module draws from the *global* torch RNG when you pass no
  ``noise_sampler``: :func:`default_noise_sampler` is ``torch.randn_like(x)``, and the SDE
  samplers seed their Brownian tree from ``torch.randint`` on the global RNG. That is the
  contract callers of k-diffusion rely on (``torch.manual_seed(s)`` makes a run
  reproducible). With the same seed the ancestral samplers and EDM churn over the whole
  grid draw the same numbers as k-diffusion. Two known departures: with ``eta = 0`` or with
  churn restricted by ``s_tmin``/``s_tmax`` no numbers are drawn where k-diffusion draws and
  discards them, and the Brownian tree is ksampling's own, so SDE samplers with a default
  noise sampler give a different (equally valid) sample than k-diffusion for the same seed.
  Pass an explicit ``noise_sampler`` to get identical results.
* **No host syncs.** k-diffusion turns tensors into Python values 1–9 times per step
  (``if sigmas[i + 1] == 0``, ``min`` on tensors, ...); here every branch is decided once,
  before the loop, from ``sigmas.tolist()``.
* **Bugs fixed.** ``sample_dpmpp_3m_sde`` (and ``sample_dpmpp_2m_sde``) crash in
  k-diffusion on a one-step grid ending in 0 (``h`` is read before it is assigned); here they
  take one denoising step. Invalid input (unsorted sigmas, a model that returns NaN, an
  unknown ``solver_type``) raises a ``ValueError`` naming the parameter instead of
  returning NaN.
* **Non-finite model outputs** are detected (checked once, after the loop) and raise.
"""

from __future__ import annotations

import math
import sys
import types

import torch

from .samplers.common import ancestral_step as _ancestral_step
from .samplers.loop import sample as _sample
from .samplers.loop import validate_sigmas as _validate_sigmas

__all__ = [
    "append_zero",
    "get_sigmas_karras",
    "get_sigmas_exponential",
    "get_sigmas_polyexponential",
    "get_sigmas_vp",
    "to_d",
    "get_ancestral_step",
    "default_noise_sampler",
    "BatchedBrownianTree",
    "BrownianTreeNoiseSampler",
    "sample_euler",
    "sample_euler_ancestral",
    "sample_heun",
    "sample_dpm_2",
    "sample_dpm_2_ancestral",
    "linear_multistep_coeff",
    "sample_lms",
    "log_likelihood",
    "sample_dpm_fast",
    "sample_dpm_adaptive",
    "sample_dpmpp_2s_ancestral",
    "sample_dpmpp_sde",
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde",
    "sample_dpmpp_3m_sde",
    "sampling",
    "external",
]


# -- helpers of k_diffusion.sampling ------------------------------------------------------------
def append_zero(x):
    """``x`` with a 0 appended (the final sigma of a grid)."""
    return torch.cat([x, x.new_zeros([1])])


def _append_dims(v, ndim):
    return v[(...,) + (None,) * (ndim - v.ndim)]


def to_d(x, sigma, denoised):
    """The Karras ODE derivative dx/dσ = (x − D(x; σ)) / σ; ``sigma`` has shape [B]."""
    return (x - denoised) / _append_dims(sigma, x.ndim)


def get_ancestral_step(sigma_from, sigma_to, eta=1.0):
    """(σ_down, σ_up) of an ancestral step with σ_down² + σ_up² = σ_to²
    (:func:`ksampling.samplers.common.ancestral_step`). Like k-diffusion it accepts floats or
    0-d tensors and returns tensors when given tensors (this helper is for callers' own code;
    the samplers compute it on the host before the loop)."""
    if not eta:
        return sigma_to, 0.0
    down, up = _ancestral_step(float(sigma_from), float(sigma_to), float(eta))
    for ref in (sigma_from, sigma_to):
        if isinstance(ref, torch.Tensor):
            return ref.new_tensor(down), ref.new_tensor(up)
    return down, up


def default_noise_sampler(x):
    """k-diffusion's default: fresh ``torch.randn_like(x)`` from the **global** RNG for every
    step (ksampling's own :func:`ksampling.sample` never uses the global RNG)."""

    def noise_sampler(sigma, sigma_next):
        return torch.randn_like(x)

    return noise_sampler


def _global_seed():
    # k-diffusion's way of seeding a Brownian tree when no seed is given.
    return torch.randint(0, 2**63 - 1, []).item()


def _brownian_module():
    from .samplers import brownian

    if not hasattr(brownian, "BrownianTreeNoiseSampler"):
        raise NotImplementedError("ksampling.samplers.brownian.BrownianTreeNoiseSampler is not available yet")
    return brownian


class BatchedBrownianTree:
    """k-diffusion's ``BatchedBrownianTree(x, t0, t1, seed=None, **kwargs)`` on ksampling's tree.

    ``seed=None`` draws the seed from the global RNG, as k-diffusion does; a list of seeds
    gives one tree per batch item. Calling it with ``(t0, t1)`` returns W(t1) − W(t0).
    """

    def __new__(cls, x, t0, t1, seed=None, **kwargs):
        if seed is None:
            seed = _global_seed()
        return _brownian_module().BatchedBrownianTree(x, t0, t1, seed=seed, **kwargs)


class BrownianTreeNoiseSampler:
    """k-diffusion's ``BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed=None,
    transform=lambda x: x)``: N(0, I) noise for the step σ → σ_next from Brownian increments,
    consistent across step counts. ``seed=None`` draws the seed from the global RNG, as
    k-diffusion does (ksampling's own class takes a ``generator`` instead)."""

    def __new__(cls, x, sigma_min, sigma_max, seed=None, transform=lambda x: x):
        if seed is None:
            seed = _global_seed()
        return _brownian_module().BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed=seed, transform=transform)


# -- schedules: thin over ksampling.schedules ---------------------------------------------------
def _schedule(name):
    from . import schedules

    fn = getattr(schedules, name, None)
    if fn is None:
        raise NotImplementedError(f"ksampling.schedules.{name} is not available yet")

    def in_default_dtype(*args, **kwargs):
        # k-diffusion returns tensors of torch's default dtype (float32); ksampling computes
        # in float64 and rounds once, so the values are the float64 ones rounded, not float32
        # arithmetic's.
        return fn(*args, **kwargs).to(torch.get_default_dtype())

    return in_default_dtype


def get_sigmas_karras(n, sigma_min, sigma_max, rho=7.0, device="cpu"):
    """Karras et al. (2022) schedule: ``n`` sigmas from ``sigma_max`` to ``sigma_min`` evenly
    spaced in σ^(1/ρ), then 0 (see :func:`ksampling.schedules.karras`)."""
    return _schedule("karras")(n, sigma_min, sigma_max, rho=rho, device=device)


def get_sigmas_exponential(n, sigma_min, sigma_max, device="cpu"):
    """``n`` sigmas evenly spaced in log σ, then 0 (see :func:`ksampling.schedules.exponential`)."""
    return _schedule("exponential")(n, sigma_min, sigma_max, device=device)


def get_sigmas_polyexponential(n, sigma_min, sigma_max, rho=1.0, device="cpu"):
    """Polynomial in log σ, then 0 (see :func:`ksampling.schedules.polyexponential`)."""
    return _schedule("polyexponential")(n, sigma_min, sigma_max, rho=rho, device=device)


def get_sigmas_vp(n, beta_d=19.9, beta_min=0.1, eps_s=1e-3, device="cpu"):
    """The continuous VP schedule of Song et al. (2021), then 0 (see :func:`ksampling.schedules.vp`)."""
    return _schedule("vp")(n, beta_d=beta_d, beta_min=beta_min, eps_s=eps_s, device=device)


# -- the samplers: each one is a call of ksampling.sample -----------------------------------------
def _progress(disable):
    # tqdm's disable=None means "only on a terminal"; ksampling's progress is a plain bool.
    if disable is None:
        return bool(getattr(sys.stderr, "isatty", lambda: False)())
    return not disable


def _run(solver, model, x, sigmas, extra_args, callback, disable, noise_sampler=None, **options):
    return _sample(
        model,
        x,
        sigmas,
        solver,
        extra_args=extra_args,
        callback=callback,
        progress=_progress(disable),
        noise_sampler=noise_sampler,
        **options,
    )


def _brownian_default(x, sigmas):
    # k-diffusion: BrownianTreeNoiseSampler(x, min non-zero sigma, max sigma) seeded from the
    # global RNG. One host transfer of the grid, before the loop.
    values = _validate_sigmas(sigmas, x)
    positive = [s for s in values if s > 0]
    if min(positive) == max(values):
        # the grid is [σ, 0]: a single denoising step, which draws no noise (k-diffusion
        # would build a tree on an empty interval here, and crash later).
        return default_noise_sampler(x)
    return BrownianTreeNoiseSampler(x, min(positive), max(values))


def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    """Euler steps, Karras et al. (2022) Algorithm 2, with optional churn (solver ``euler``)."""
    return _run("euler", model, x, sigmas, extra_args, callback, disable, default_noise_sampler(x),
                s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise)


def sample_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0, noise_sampler=None):
    """Ancestral sampling with Euler steps (solver ``euler_ancestral``)."""
    noise_sampler = default_noise_sampler(x) if noise_sampler is None else noise_sampler
    return _run("euler_ancestral", model, x, sigmas, extra_args, callback, disable, noise_sampler, eta=eta, s_noise=s_noise)


def sample_heun(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    """Heun steps, Karras et al. (2022) Algorithm 2, with optional churn (solver ``heun``)."""
    return _run("heun", model, x, sigmas, extra_args, callback, disable, default_noise_sampler(x),
                s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise)


def sample_dpm_2(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    """DPM-Solver-2 steps (midpoint in log σ) with Karras churn (solver ``dpm_2``)."""
    return _run("dpm_2", model, x, sigmas, extra_args, callback, disable, default_noise_sampler(x),
                s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise)


def sample_dpm_2_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0, noise_sampler=None):
    """Ancestral sampling with DPM-Solver-2 steps (solver ``dpm_2_ancestral``)."""
    noise_sampler = default_noise_sampler(x) if noise_sampler is None else noise_sampler
    return _run("dpm_2_ancestral", model, x, sigmas, extra_args, callback, disable, noise_sampler, eta=eta, s_noise=s_noise)


def sample_lms(model, x, sigmas, extra_args=None, callback=None, disable=None, order=4):
    """Linear multistep (Adams–Bashforth in σ) of the given order (solver ``lms``)."""
    return _run("lms", model, x, sigmas, extra_args, callback, disable, order=order)


def sample_dpmpp_2s_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0, noise_sampler=None):
    """Ancestral sampling with DPM-Solver++(2S) steps (solver ``dpmpp_2s_ancestral``)."""
    noise_sampler = default_noise_sampler(x) if noise_sampler is None else noise_sampler
    return _run("dpmpp_2s_ancestral", model, x, sigmas, extra_args, callback, disable, noise_sampler, eta=eta, s_noise=s_noise)


def sample_dpmpp_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0, noise_sampler=None, r=1 / 2):
    """DPM-Solver++ (stochastic, singlestep) (solver ``dpmpp_sde``); Brownian-tree noise by default."""
    noise_sampler = _brownian_default(x, sigmas) if noise_sampler is None else noise_sampler
    return _run("dpmpp_sde", model, x, sigmas, extra_args, callback, disable, noise_sampler, eta=eta, s_noise=s_noise, r=r)


def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """DPM-Solver++(2M) (solver ``dpmpp_2m``)."""
    return _run("dpmpp_2m", model, x, sigmas, extra_args, callback, disable)


def sample_dpmpp_2m_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0, noise_sampler=None, solver_type="midpoint"):
    """DPM-Solver++(2M) SDE (solver ``dpmpp_2m_sde``); Brownian-tree noise by default."""
    if solver_type not in {"heun", "midpoint"}:
        raise ValueError("solver_type must be 'heun' or 'midpoint'")
    noise_sampler = _brownian_default(x, sigmas) if noise_sampler is None else noise_sampler
    return _run("dpmpp_2m_sde", model, x, sigmas, extra_args, callback, disable, noise_sampler,
                eta=eta, s_noise=s_noise, solver_type=solver_type)


def sample_dpmpp_3m_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0, noise_sampler=None):
    """DPM-Solver++(3M) SDE (solver ``dpmpp_3m_sde``); Brownian-tree noise by default."""
    noise_sampler = _brownian_default(x, sigmas) if noise_sampler is None else noise_sampler
    return _run("dpmpp_3m_sde", model, x, sigmas, extra_args, callback, disable, noise_sampler, eta=eta, s_noise=s_noise)
