"""A drop-in replacement for ``k_diffusion.sampling`` and ``k_diffusion.external``.

Code written against k-diffusion 0.1.1 keeps working after one changed import:

```python
import ksampling.kdiffusion as K          # was: import k_diffusion as K
sigmas = K.sampling.get_sigmas_karras(20, 0.03, 14.6)
model = K.external.CompVisDenoiser(ldm)
x = K.sampling.sample_dpmpp_2m(model, noise * sigmas[0], sigmas, callback=cb)
```

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
* **Smaller things.** ``get_sigmas_*`` compute in float64 and round once to the default dtype
  (k-diffusion's float32 ``exp(.) - 1`` in ``get_sigmas_vp`` loses up to 2e-4);
  ``sample_dpm_fast``/``sample_dpm_adaptive`` build their λ grid in float64 (k-diffusion uses
  the default dtype); ``sample_dpm_adaptive``'s callback has every key of k-diffusion's but the
  step-size controller's internal ``error`` and ``h``; :class:`DPMSolver`'s whole-run methods
  integrate only towards lower noise.
"""

from __future__ import annotations

import math
import sys
import types

import torch
from torch import nn

from .samplers import brownian as _brownian
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
    "DPMSolver",
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


class BatchedBrownianTree(_brownian.BatchedBrownianTree):
    """k-diffusion's ``BatchedBrownianTree(x, t0, t1, seed=None, **kwargs)`` on ksampling's tree.

    ``seed=None`` draws the seed from the global RNG, as k-diffusion does; a list of seeds
    gives one tree per batch item. Calling it with ``(t0, t1)`` returns W(t1) − W(t0).
    """

    def __init__(self, x, t0, t1, seed=None, **kwargs):
        super().__init__(x, t0, t1, seed=_global_seed() if seed is None else seed, **kwargs)


class BrownianTreeNoiseSampler(_brownian.BrownianTreeNoiseSampler):
    """k-diffusion's ``BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed=None,
    transform=lambda x: x)``: N(0, I) noise for the step σ → σ_next from Brownian increments,
    consistent across step counts. ``seed=None`` draws the seed from the global RNG, as
    k-diffusion does (ksampling's own class takes a ``generator`` instead)."""

    def __init__(self, x, sigma_min, sigma_max, seed=None, transform=lambda x: x):
        super().__init__(x, sigma_min, sigma_max, seed=_global_seed() if seed is None else seed, transform=transform)


# -- schedules: thin over ksampling.schedules ---------------------------------------------------
def _schedule(name):
    from . import schedules

    fn = getattr(schedules, name)

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


def linear_multistep_coeff(order, t, i, j):
    """Weight of the derivative at ``t[i - j]`` in the LMS step ``t[i] -> t[i + 1]``: the
    integral over the step of the Lagrange basis polynomial through ``t[i], …, t[i-order+1]``
    (:func:`ksampling.samplers.lms.lms_coefficients`, exact instead of k-diffusion's
    ``scipy.integrate.quad``)."""
    from .samplers.lms import lms_coefficients

    if order - 1 > i:
        raise ValueError(f"Order {order} too high for step {i}")
    values = [float(v) for v in t]
    return lms_coefficients(values, i, order)[j]


def _positive_scalar(name, value):
    value = float(value)
    if not value > 0:
        raise ValueError(f"{name} must be > 0 (sigma_min and sigma_max must not be 0), got {value}")
    return value


def _with_t(callback):
    """k-diffusion's DPM-Solver callbacks also carry t = −log σ and t_up = −log σ̂."""
    if callback is None:
        return None

    def wrapped(info):
        callback({**info, "t": -info["sigma"].log(), "t_up": -torch.as_tensor(info["sigma_hat"]).log()})

    return wrapped


def sample_dpm_fast(model, x, sigma_min, sigma_max, n, extra_args=None, callback=None, disable=None, eta=0.0, s_noise=1.0, noise_sampler=None):
    """DPM-Solver-fast from ``sigma_max`` to ``sigma_min`` with exactly ``n`` model calls
    (solver ``dpm_fast``); ends at ``sigma_min``, as k-diffusion's."""
    sigma_min, sigma_max = _positive_scalar("sigma_min", sigma_min), _positive_scalar("sigma_max", sigma_max)
    noise_sampler = default_noise_sampler(x) if noise_sampler is None else noise_sampler
    sigmas = torch.tensor([sigma_max, sigma_min], dtype=torch.float64, device=x.device)
    return _run("dpm_fast", model, x, sigmas, extra_args, _with_t(callback), disable, noise_sampler,
                nfe=n, eta=eta, s_noise=s_noise)


def sample_dpm_adaptive(model, x, sigma_min, sigma_max, extra_args=None, callback=None, disable=None, order=3, rtol=0.05, atol=0.0078, h_init=0.05, pcoeff=0.0, icoeff=1.0, dcoeff=0.0, accept_safety=0.81, eta=0.0, s_noise=1.0, noise_sampler=None, return_info=False):
    """DPM-Solver-12/23 with adaptive steps from ``sigma_max`` to ``sigma_min`` (solver
    ``dpm_adaptive``); ``return_info=True`` also returns k-diffusion's
    ``{'steps', 'nfe', 'n_accept', 'n_reject'}``.

    The callback is called once per attempt, after it, with k-diffusion's keys ``x`` (after
    the attempt), ``i``, ``sigma``/``t`` (where the solution now is), ``sigma_hat``/``t_up``,
    ``denoised`` (at the attempt's start) and the running ``steps``, ``nfe``, ``n_accept``,
    ``n_reject``; the controller's internal ``error`` and ``h`` are not reported.
    """
    sigma_min, sigma_max = _positive_scalar("sigma_min", sigma_min), _positive_scalar("sigma_max", sigma_max)
    noise_sampler = default_noise_sampler(x) if noise_sampler is None else noise_sampler
    sigmas = torch.tensor([sigma_max, sigma_min], dtype=torch.float64, device=x.device)
    nfe_per_attempt = order if order in (2, 3) else 3
    pending = []  # the attempt whose end is only known at the start of the next one
    counts = {"steps": 0, "nfe": 0, "n_accept": 0, "n_reject": 0}

    def finish(x_after, sigma_after):
        start = pending.pop()
        accepted = float(sigma_after) != float(start["sigma"])
        counts["steps"] += 1
        counts["nfe"] += nfe_per_attempt
        counts["n_accept" if accepted else "n_reject"] += 1
        t = -torch.as_tensor(sigma_after, dtype=torch.float64).log()
        callback({"x": x_after, "i": start["i"], "sigma": t.neg().exp(), "sigma_hat": t.neg().exp(),
                  "t": t, "t_up": t, "denoised": start["denoised"], **counts})

    def on_attempt(info):
        if pending:
            finish(info["x"], info["sigma"])
        pending.append(info)

    x, run_info = _run("dpm_adaptive", model, x, sigmas, extra_args, None if callback is None else on_attempt, disable,
                       noise_sampler, return_info=True, order=order, rtol=rtol, atol=atol, h_init=h_init,
                       pcoeff=pcoeff, icoeff=icoeff, dcoeff=dcoeff, accept_safety=accept_safety, eta=eta, s_noise=s_noise)
    if pending:
        finish(x, sigma_min)
    if return_info:
        return x, {"steps": run_info.steps, "nfe": run_info.nfe, "n_accept": run_info.accepted, "n_reject": run_info.rejected}
    return x


@torch.no_grad()
def log_likelihood(model, x, sigma_min, sigma_max, extra_args=None, atol=1e-4, rtol=1e-4):
    """log p(x) under the probability-flow ODE (Song et al. 2021, "Score-Based Generative
    Modeling through SDEs", App. D.2), as k-diffusion computes it: integrate
    ``dx/dσ = (x − D)/σ`` from ``sigma_min`` to ``sigma_max`` together with
    ``d log p/dσ = −div f``, the divergence estimated by Hutchinson's trick with one Rademacher
    vector v from the **global** RNG (k-diffusion's contract), with dopri5 at ``atol``/``rtol``;
    then add the N(0, σ_max² I) prior. Returns ``(log_likelihood [B], {'fevals': n})``.

    Needs torchdiffeq (``pip install ksampling[bench]`` or ``pip install torchdiffeq``).
    """
    try:
        from torchdiffeq import odeint
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("log_likelihood needs torchdiffeq: pip install ksampling[bench] (or pip install torchdiffeq)") from exc
    extra_args = {} if extra_args is None else extra_args
    batch = x.shape[0]
    probe = torch.randint_like(x, 2) * 2 - 1
    fevals = 0

    def augmented(sigma, state):
        nonlocal fevals
        with torch.enable_grad():
            x_t = state[0].detach().requires_grad_()
            denoised = model(x_t, sigma * x_t.new_ones([batch]), **extra_args)
            drift = (x_t - denoised) / sigma
            fevals += 1
            (jvp,) = torch.autograd.grad((drift * probe).sum(), x_t)
        # E[vᵀ J v] = tr J: the divergence of the drift
        return drift.detach(), (probe * jvp).flatten(1).sum(1)

    times = x.new_tensor([float(sigma_min), float(sigma_max)])
    solution = odeint(augmented, (x, x.new_zeros([batch])), times, atol=atol, rtol=rtol, method="dopri5")
    latent, delta_ll = solution[0][-1], solution[1][-1]
    prior = torch.distributions.Normal(0, float(sigma_max)).log_prob(latent).flatten(1).sum(1)
    return prior + delta_ll, {"fevals": fevals}


class DPMSolver(nn.Module):
    """k-diffusion's ``DPMSolver(model, extra_args=None, eps_callback=None, info_callback=None)``
    (Lu et al. 2022, arXiv:2206.00927) on ksampling's DPM-Solver.

    The step methods take and return k-diffusion's ``eps_cache`` dict (stages ``'eps'``,
    ``'eps_r1'``, ``'eps_r2'``) and call :func:`ksampling.samplers.dpm.dpm_solver_1` / ``_2`` /
    ``_3``; :meth:`dpm_solver_fast` and :meth:`dpm_solver_adaptive` run the ``dpm_fast`` /
    ``dpm_adaptive`` solvers. Times are t = −log σ (0-d tensors or floats). Unlike
    k-diffusion's, the whole-run methods integrate only towards lower noise (t_end > t_start).
    """

    def __init__(self, model, extra_args=None, eps_callback=None, info_callback=None):
        super().__init__()
        self.model = model
        self.extra_args = {} if extra_args is None else extra_args
        self.eps_callback = eps_callback
        self.info_callback = info_callback

    def t(self, sigma):
        return -sigma.log()

    def sigma(self, t):
        return t.neg().exp()

    def eps(self, eps_cache, key, x, t, *args, **kwargs):
        """ε = (x − D(x; σ(t)))/σ(t), from the cache when this stage was computed already."""
        if key in eps_cache:
            return eps_cache[key], eps_cache
        sigma = math.exp(-float(t))
        denoised = self.model(x, x.new_full([x.shape[0]], sigma), *args, **self.extra_args, **kwargs)
        eps = (x - denoised) / sigma
        if self.eps_callback is not None:
            self.eps_callback()
        return eps, {key: eps, **eps_cache}

    def _stepper(self, eps_cache):
        # ksampling's DPM-Solver asks for ε stage by stage, in order; k-diffusion names them.
        cache = dict(eps_cache)
        names = iter(("eps", "eps_r1", "eps_r2"))

        def eps_at(x, lam):
            nonlocal cache
            eps, cache = self.eps(cache, next(names), x, lam)
            return eps

        return eps_at, lambda: cache

    def _run_step(self, update, x, t, t_next, eps_cache, **kwargs):
        from .samplers import dpm

        eps_at, cache = self._stepper({} if eps_cache is None else eps_cache)
        x_next = getattr(dpm, update)(eps_at, x, float(t), float(t_next), **kwargs)
        return x_next, cache()

    def dpm_solver_1_step(self, x, t, t_next, eps_cache=None):
        """DPM-Solver-1 from t to t_next; returns ``(x_next, eps_cache)``."""
        return self._run_step("dpm_solver_1", x, t, t_next, eps_cache)

    def dpm_solver_2_step(self, x, t, t_next, r1=1 / 2, eps_cache=None):
        """DPM-Solver-2 (intermediate point t + r1·h); returns ``(x_next, eps_cache)``."""
        return self._run_step("dpm_solver_2", x, t, t_next, eps_cache, r1=r1)

    def dpm_solver_3_step(self, x, t, t_next, r1=1 / 3, r2=2 / 3, eps_cache=None):
        """DPM-Solver-3; returns ``(x_next, eps_cache)``."""
        return self._run_step("dpm_solver_3", x, t, t_next, eps_cache, r1=r1, r2=r2)

    def _counted_model(self):
        def model(x, sigma, **extra_args):
            out = self.model(x, sigma, **extra_args)
            if self.eps_callback is not None:
                self.eps_callback()
            return out

        return model

    def _info(self):
        if self.info_callback is None:
            return None

        def callback(info):
            self.info_callback({k: v for k, v in info.items() if k not in ("sigma", "sigma_hat")})

        return callback

    def _sigmas(self, t_start, t_end):
        t_start, t_end = float(t_start), float(t_end)
        if not t_end > t_start:
            raise ValueError("t_end must be > t_start (integration towards lower noise)")
        return math.exp(-t_end), math.exp(-t_start)

    def dpm_solver_fast(self, x, t_start, t_end, nfe, eta=0.0, s_noise=1.0, noise_sampler=None):
        """DPM-Solver-fast with exactly ``nfe`` model calls (solver ``dpm_fast``)."""
        sigma_min, sigma_max = self._sigmas(t_start, t_end)
        return sample_dpm_fast(self._counted_model(), x, sigma_min, sigma_max, nfe, extra_args=self.extra_args,
                               callback=self._info(), disable=True, eta=eta, s_noise=s_noise, noise_sampler=noise_sampler)

    def dpm_solver_adaptive(self, x, t_start, t_end, order=3, rtol=0.05, atol=0.0078, h_init=0.05, pcoeff=0.0, icoeff=1.0, dcoeff=0.0, accept_safety=0.81, eta=0.0, s_noise=1.0, noise_sampler=None):
        """DPM-Solver-12/23 with adaptive steps (solver ``dpm_adaptive``); returns ``(x, info)``."""
        sigma_min, sigma_max = self._sigmas(t_start, t_end)
        return sample_dpm_adaptive(
            self._counted_model(), x, sigma_min, sigma_max, extra_args=self.extra_args, callback=self._info(),
            disable=True, order=order, rtol=rtol, atol=atol, h_init=h_init, pcoeff=pcoeff, icoeff=icoeff,
            dcoeff=dcoeff, accept_safety=accept_safety, eta=eta, s_noise=s_noise, noise_sampler=noise_sampler,
            return_info=True,
        )


def __getattr__(name):
    # k-diffusion's PID controller lives with the dpm_adaptive solver.
    if name == "PIDStepSizeController":
        from .samplers.dpm import PIDStepSizeController

        return PIDStepSizeController
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- k_diffusion.external: wrappers on ksampling's processes and NetworkDenoiser ------------------
from .denoisers.processes import NoiseProcess, VPDiscrete, vp_alpha  # noqa: E402
from .denoisers.wrappers import NetworkDenoiser  # noqa: E402


class _WrapperProcess(NoiseProcess):
    """The wrapper's own ``sigma_to_t`` (so that a subclass that overrides it is honoured)
    with VP input scaling α = 1/√(1+σ²) = c_in."""

    discrete = True

    def __init__(self, wrapper):
        self._wrapper = wrapper
        self.sigma_min, self.sigma_max = 0.0, math.inf

    def sigma_to_t(self, sigma):
        return self._wrapper.sigma_to_t(sigma)

    def t_to_sigma(self, t):
        return self._wrapper.t_to_sigma(t)

    def alpha(self, sigma):
        return vp_alpha(sigma)


class _Hook:
    """A network that calls one of the wrapper's methods (``get_eps``/``get_v``/its model)."""

    def __init__(self, wrapper, method):
        self._wrapper, self._method = wrapper, method

    def __call__(self, x_net, t, **kwargs):
        return getattr(self._wrapper, self._method)(x_net, t, **kwargs)


def _network_denoiser(wrapper, method, prediction):
    # Kept out of nn.Module's registry (it points back at the wrapper).
    return NetworkDenoiser(_Hook(wrapper, method), _WrapperProcess(wrapper), prediction=prediction)


class VDenoiser(nn.Module):
    """A v-diffusion-pytorch model as D(x; σ): the network sees ``x·c_in`` and
    ``t = 2/π · atan σ`` and predicts v (``prediction="v"`` of :class:`NetworkDenoiser`)."""

    def __init__(self, inner_model):
        super().__init__()
        self.inner_model = inner_model
        self.sigma_data = 1.0
        self.__dict__["_denoiser"] = _network_denoiser(self, "inner_model", "v")

    def get_scalings(self, sigma):
        c_skip = self.sigma_data**2 / (sigma**2 + self.sigma_data**2)
        c_out = -sigma * self.sigma_data / (sigma**2 + self.sigma_data**2) ** 0.5
        c_in = 1 / (sigma**2 + self.sigma_data**2) ** 0.5
        return c_skip, c_out, c_in

    def sigma_to_t(self, sigma):
        return sigma.atan() / math.pi * 2

    def t_to_sigma(self, t):
        return (t * math.pi / 2).tan()

    def loss(self, input, noise, sigma, **kwargs):
        """MSE between the network output and the v target (k-diffusion's training loss)."""
        c_skip, c_out, c_in = [_append_dims(s, input.ndim) for s in self.get_scalings(sigma)]
        noised = input + noise * _append_dims(sigma, input.ndim)
        output = self.inner_model(noised * c_in, self.sigma_to_t(sigma), **kwargs)
        target = (input - c_skip * noised) / c_out
        return (output - target).pow(2).flatten(1).mean(1)

    def forward(self, input, sigma, **kwargs):
        return self._denoiser(input, sigma, **kwargs)


class DiscreteSchedule(nn.Module):
    """A discrete list of training sigmas (ascending) and the maps σ ↔ t between them
    (:class:`ksampling.denoisers.VPDiscrete`): ``quantize=True`` rounds t to the nearest
    training index, else t is interpolated linearly in log σ."""

    def __init__(self, sigmas, quantize):
        super().__init__()
        self.register_buffer("sigmas", sigmas)
        self.register_buffer("log_sigmas", sigmas.log())
        self.quantize = quantize
        alphas_cumprod = 1 / (1 + sigmas.detach().double().cpu() ** 2)
        self.__dict__["_processes"] = {
            True: VPDiscrete(alphas_cumprod=alphas_cumprod, time="round"),
            False: VPDiscrete(alphas_cumprod=alphas_cumprod, time="interpolate"),
        }

    @property
    def sigma_min(self):
        return self.sigmas[0]

    @property
    def sigma_max(self):
        return self.sigmas[-1]

    def get_sigmas(self, n=None):
        """All training sigmas descending (``n=None``), or ``n`` sigmas at evenly spaced
        (fractional) timesteps from T−1 to 0; then 0."""
        if n is None:
            return append_zero(self.sigmas.flip(0))
        t_max = len(self.sigmas) - 1
        t = torch.linspace(t_max, 0, n, device=self.sigmas.device)
        return append_zero(self.t_to_sigma(t))

    def sigma_to_t(self, sigma, quantize=None):
        quantize = self.quantize if quantize is None else quantize
        t = self._processes[bool(quantize)].sigma_to_t(sigma)
        # k-diffusion returns an integer index when quantizing, else t in the sigmas' dtype
        return t.long() if quantize else t.to(self.sigmas.dtype)

    def t_to_sigma(self, t):
        return self._processes[False].t_to_sigma(t.float()).to(self.sigmas.dtype)


class DiscreteEpsDDPMDenoiser(DiscreteSchedule):
    """A discrete-time DDPM network that predicts ε, as D(x; σ) = x − σ ε(x·c_in, t)."""

    def __init__(self, model, alphas_cumprod, quantize):
        super().__init__(((1 - alphas_cumprod) / alphas_cumprod) ** 0.5, quantize)
        self.inner_model = model
        self.sigma_data = 1.0
        self.__dict__["_denoiser"] = _network_denoiser(self, "get_eps", "eps")

    def get_scalings(self, sigma):
        c_out = -sigma
        c_in = 1 / (sigma**2 + self.sigma_data**2) ** 0.5
        return c_out, c_in

    def get_eps(self, *args, **kwargs):
        return self.inner_model(*args, **kwargs)

    def loss(self, input, noise, sigma, **kwargs):
        """MSE between the predicted and the true noise (DDPM's simple loss)."""
        c_out, c_in = [_append_dims(s, input.ndim) for s in self.get_scalings(sigma)]
        noised = input + noise * _append_dims(sigma, input.ndim)
        eps = self.get_eps(noised * c_in, self.sigma_to_t(sigma), **kwargs)
        return (eps - noise).pow(2).flatten(1).mean(1)

    def forward(self, input, sigma, **kwargs):
        return self._denoiser(input, sigma, **kwargs)


class OpenAIDenoiser(DiscreteEpsDDPMDenoiser):
    """An OpenAI guided/improved-diffusion model; with learned sigmas its output's first half
    of the channels is ε."""

    def __init__(self, model, diffusion, quantize=False, has_learned_sigmas=True, device="cpu"):
        alphas_cumprod = torch.tensor(diffusion.alphas_cumprod, device=device, dtype=torch.float32)
        super().__init__(model, alphas_cumprod, quantize=quantize)
        self.has_learned_sigmas = has_learned_sigmas

    def get_eps(self, *args, **kwargs):
        output = self.inner_model(*args, **kwargs)
        return output.chunk(2, dim=1)[0] if self.has_learned_sigmas else output


class CompVisDenoiser(DiscreteEpsDDPMDenoiser):
    """A CompVis latent-diffusion (Stable Diffusion 1.x/2.x ε) model: ε = ``model.apply_model``."""

    def __init__(self, model, quantize=False, device="cpu"):
        super().__init__(model, model.alphas_cumprod, quantize=quantize)

    def get_eps(self, *args, **kwargs):
        return self.inner_model.apply_model(*args, **kwargs)


class DiscreteVDDPMDenoiser(DiscreteSchedule):
    """A discrete-time DDPM network that predicts v, as D(x; σ) = c_skip x + c_out v(x·c_in, t)."""

    def __init__(self, model, alphas_cumprod, quantize):
        super().__init__(((1 - alphas_cumprod) / alphas_cumprod) ** 0.5, quantize)
        self.inner_model = model
        self.sigma_data = 1.0
        self.__dict__["_denoiser"] = _network_denoiser(self, "get_v", "v")

    def get_scalings(self, sigma):
        c_skip = self.sigma_data**2 / (sigma**2 + self.sigma_data**2)
        c_out = -sigma * self.sigma_data / (sigma**2 + self.sigma_data**2) ** 0.5
        c_in = 1 / (sigma**2 + self.sigma_data**2) ** 0.5
        return c_skip, c_out, c_in

    def get_v(self, *args, **kwargs):
        return self.inner_model(*args, **kwargs)

    def loss(self, input, noise, sigma, **kwargs):
        """MSE between the network output and the v target."""
        c_skip, c_out, c_in = [_append_dims(s, input.ndim) for s in self.get_scalings(sigma)]
        noised = input + noise * _append_dims(sigma, input.ndim)
        output = self.get_v(noised * c_in, self.sigma_to_t(sigma), **kwargs)
        target = (input - c_skip * noised) / c_out
        return (output - target).pow(2).flatten(1).mean(1)

    def forward(self, input, sigma, **kwargs):
        return self._denoiser(input, sigma, **kwargs)


class CompVisVDenoiser(DiscreteVDDPMDenoiser):
    """A CompVis latent-diffusion v model (Stable Diffusion 2.x 768-v): v = ``model.apply_model``."""

    def __init__(self, model, quantize=False, device="cpu"):
        super().__init__(model, model.alphas_cumprod, quantize=quantize)

    def get_v(self, x, t, cond, **kwargs):
        return self.inner_model.apply_model(x, t, cond)


# -- the two namespaces, so that `K.sampling.X` / `K.external.X` and
#    `import ksampling.kdiffusion.sampling` work as with k_diffusion ------------------------------
_SAMPLING_NAMES = [n for n in __all__ if n not in ("sampling", "external")] + ["PIDStepSizeController"]
_EXTERNAL_NAMES = [
    "VDenoiser", "DiscreteSchedule", "DiscreteEpsDDPMDenoiser", "OpenAIDenoiser", "CompVisDenoiser",
    "DiscreteVDDPMDenoiser", "CompVisVDenoiser",
]


class _Namespace(types.ModuleType):
    def __getattr__(self, name):
        value = getattr(sys.modules[__name__], name) if name in self._names else None
        if value is None:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        return value

    def __dir__(self):
        return sorted(self._names)


def _namespace(name, names, doc):
    module = _Namespace(f"{__name__}.{name}", doc)
    module._names = frozenset(names)
    module.__all__ = list(names)
    sys.modules[module.__name__] = module
    return module


def append_dims(x, target_dims):
    """``x`` with singleton dimensions appended until it has ``target_dims`` dimensions
    (``k_diffusion.utils.append_dims``, which code written for k-diffusion often imports)."""
    if target_dims < x.ndim:
        raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}, which is less")
    return _append_dims(x, target_dims)


sampling = _namespace("sampling", _SAMPLING_NAMES, "k_diffusion.sampling on ksampling (see ksampling.kdiffusion).")
utils = _namespace("utils", ["append_dims"], "The one helper of k_diffusion.utils that sampling code uses.")
external = _namespace("external", _EXTERNAL_NAMES, "k_diffusion.external on ksampling (see ksampling.kdiffusion).")
sampling.append_zero  # noqa: B018 - fail at import if a name is missing
__all__ += _EXTERNAL_NAMES + ["PIDStepSizeController", "append_dims", "utils"]
