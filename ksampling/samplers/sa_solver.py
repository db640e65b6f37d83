"""SA-Solver: Stochastic Adams Solver (Xue et al. 2023, arXiv:2309.05019, NeurIPS 2023), data
prediction, as ComfyUI's ``sa_solver`` and ``sa_solver_pece``."""

from __future__ import annotations

import math

import torch

from .base import check_int, check_nonnegative, register
from .common import Stochastic, lagrange_exp_weights, linear_combination
from .validation import check_bool

__all__ = ["SASolver", "SASolverPECE", "stochastic_adams_weights"]

#: The σ interval in which ComfyUI's default SA-Solver is stochastic: its
#: ``percent_to_sigma(0.2)`` and ``percent_to_sigma(0.8)`` for Stable Diffusion 1.x
#: (discrete scaled-linear schedule, 1000 steps).
SD1_SDE_INTERVAL = (0.5711888666, 5.0924075907)


def stochastic_adams_weights(
    node_lambdas: list[float], lambda_s: float, lambda_t: float, tau: float, simple_order_2: bool = False, corrector: bool = False
) -> list[float]:
    """Weights ``b_j`` of D at ``node_lambdas`` (oldest first) for the step λ_s → λ_t:

        b_j = (1 + τ²) ∫_{λ_s}^{λ_t} e^{−(1 + τ²)(λ_t − λ)} ℓ_j(λ) dλ,

    ℓ_j the Lagrange basis on the nodes (Xue et al. 2023, eqs. 15 and 18, with α_t = 1 in
    the VE state space). ``simple_order_2`` uses the paper's simplified two-point weights
    (its Appendix D).
    """
    a = 1 + tau * tau
    h = lambda_t - lambda_s
    if simple_order_2 and len(node_lambdas) == 2:
        total = -math.expm1(-a * h)
        if corrector:
            newest = 0.5 * a * h
            return [total - newest, newest]
        oldest = 0.5 * a * h * h / (node_lambdas[0] - lambda_s)
        return [oldest, total - oldest]
    nodes = [(node - lambda_s) / h for node in node_lambdas]
    return [a * h * w for w in lagrange_exp_weights(nodes, -a * h)]


@register
class SASolver(Stochastic):
    """SA-Solver (Xue et al. 2023, Algorithm 1, data prediction) in the VE state space: with
    λ = −log σ, τ = τ(σ_next) (``eta`` inside ``[sde_sigma_min, sde_sigma_max]``, else 0) and
    h = λ_next − λ,

    predictor (Stochastic Adams–Bashforth, order p, eq. 15)::

        x̃_next = e^{−(1+τ²) h} x + Σ_{j<p} b_j D_{i−j} + σ_next √(1 − e^{−2τ² h}) S_noise ξ,

    corrector (Stochastic Adams–Moulton, order c, eq. 18), once D_next = D(x̃_next; σ_next) is
    known, with the same ξ::

        x_next = e^{−(1+τ²) h} x + Σ_{j<c} b'_j D_{next−j} + σ_next √(1 − e^{−2τ² h}) S_noise ξ,

    b from :func:`stochastic_adams_weights`. The corrector at step i uses the model call that
    starts step i, so PEC costs one model call per step; ``use_pece`` (``sa_solver_pece``)
    evaluates the corrected state again (two calls per step). The orders warm up with the
    history and, on a grid ending in 0, fall to 1 towards the end (ComfyUI's "lower order to
    end"); the step to σ = 0 returns D. Defaults as ComfyUI's: predictor 3, corrector 4,
    ``eta = 1`` on SD 1.x's σ interval of 20 %–80 % of sampling (:data:`SD1_SDE_INTERVAL`);
    ``tau_func(sigma) -> τ`` (ComfyUI's argument, called on the host with a float) replaces
    ``eta`` and the interval.
    Order at ``eta = 0``: that of the corrector (measured 4.0 with the defaults).

    Parity with a transcription of ComfyUI's ``sample_sa_solver`` on the same inputs and noise:
    1.1e-15 relative (float64, ``tests/test_new_methods.py``).
    """

    name = "sa_solver"
    order = 4
    nfe_per_step = 1
    multistep = True
    paper = "Xue et al. 2023, SA-Solver: Stochastic Adams Solver for Fast Sampling of Diffusion Models (arXiv:2309.05019)"

    use_pece = False

    def __init__(
        self,
        eta: float = 1.0,
        s_noise: float = 1.0,
        sde_sigma_min: float = SD1_SDE_INTERVAL[0],
        sde_sigma_max: float = SD1_SDE_INTERVAL[1],
        predictor_order: int = 3,
        corrector_order: int = 4,
        simple_order_2: bool = False,
        tau_func=None,
    ):
        super().__init__(eta=eta, s_noise=s_noise)
        self.sde_sigma_min = check_nonnegative("sde_sigma_min", sde_sigma_min)
        self.sde_sigma_max = check_nonnegative("sde_sigma_max", sde_sigma_max)
        self.predictor_order = check_int("predictor_order", predictor_order, 1, 6)
        self.corrector_order = check_int("corrector_order", corrector_order, 0, 6)
        self.simple_order_2 = check_bool("simple_order_2", simple_order_2)
        if tau_func is not None and not callable(tau_func):
            raise TypeError("tau_func must be callable as tau_func(sigma: float) -> float, or None")
        self.tau_func = tau_func
        self.reset()

    @property
    def draws_noise(self) -> bool:
        if self.tau_func is not None:  # tau_func replaces eta
            return self.s_noise > 0
        return super().draws_noise

    def reset(self):
        self.history: list = []  # D at the latest points, oldest first
        self.x_start = None  # the corrected x the last predictor started from
        self.noise = None  # that predictor's noise term, reused by the corrector

    def tau(self, sigma: float) -> float:
        """τ(σ), on the host: ``tau_func`` if given, else ``eta`` inside the SDE interval."""
        if self.tau_func is not None:
            tau = float(self.tau_func(sigma))
            if not math.isfinite(tau) or tau < 0:
                raise ValueError(f"tau_func({sigma:g}) returned {tau}; it must be finite and >= 0")
            return tau
        return self.eta if self.sde_sigma_min <= sigma <= self.sde_sigma_max else 0.0

    def coefficients(self, sigmas, i):
        n_steps = len(sigmas) - 1
        lam = [-math.log(s) if s > 0 else math.inf for s in sigmas[: i + 2]]
        available = min(i + 1, max(self.predictor_order, self.corrector_order))
        predictor_order = min(self.predictor_order, available)
        corrector_order = 0 if i == 0 or (sigmas[i + 1] == 0 and not self.use_pece) else min(self.corrector_order, available)
        if sigmas[-1] == 0:  # lower orders towards the end
            predictor_order = min(predictor_order, n_steps - 1 - i)
            corrector_order = min(corrector_order, n_steps - i)
        coeffs = dict(corrector_weights=[], predictor_weights=[], noise_std=0.0, x_weight=0.0, corrector_x_weight=0.0)
        if corrector_order > 0:
            tau = self.tau(sigmas[i])  # the previous predictor's τ
            h = lam[i] - lam[i - 1]
            coeffs["corrector_weights"] = stochastic_adams_weights(
                lam[i - corrector_order + 1 : i + 1], lam[i - 1], lam[i], tau, self.simple_order_2, corrector=True
            )
            coeffs["corrector_x_weight"] = math.exp(-(1 + tau * tau) * h)
        if sigmas[i + 1] > 0:
            tau = self.tau(sigmas[i + 1])
            h = lam[i + 1] - lam[i]
            coeffs["predictor_weights"] = stochastic_adams_weights(
                lam[i - predictor_order + 1 : i + 1], lam[i], lam[i + 1], tau, self.simple_order_2
            )
            coeffs["x_weight"] = math.exp(-(1 + tau * tau) * h)
            if tau > 0 and self.s_noise > 0:
                coeffs["noise_std"] = sigmas[i + 1] * math.sqrt(-math.expm1(-2 * tau * tau * h)) * self.s_noise
        return coeffs

    def step(self, ctx, x, step):
        denoised = ctx.denoise(x, step.sigma)
        keep = max(self.predictor_order, self.corrector_order, 1)
        self.history = (self.history + [denoised])[-keep:]
        if step.corrector_weights:
            used = self.history[-len(step.corrector_weights) :]
            x = linear_combination(self.x_start, step.corrector_x_weight, used, step.corrector_weights)
            if self.noise is not None:
                x = x + self.noise
            if self.use_pece:
                denoised = ctx.denoise(x, step.sigma)
                self.history[-1] = denoised
        if step.to_zero:
            return denoised
        used = self.history[-len(step.predictor_weights) :]
        x_next = linear_combination(x, step.x_weight, used, step.predictor_weights)
        self.x_start, self.noise = x, None
        if step.noise_std > 0:
            self.noise = ctx.noise(step.sigma, step.sigma_next) * step.noise_std
            x_next = x_next + self.noise
        return x_next


@register
class SASolverPECE(SASolver):
    """SA-Solver in PECE mode (predict, evaluate, correct, evaluate; ComfyUI's
    ``sa_solver_pece``): as ``sa_solver``, and the corrected state is evaluated again before
    the next predictor, which then uses D at the corrected point. Two model calls per step.

    Parity with a transcription of ComfyUI's ``sample_sa_solver_pece`` on the same inputs and noise:
    8e-16 relative (float64, ``tests/test_new_methods.py``).
    """

    name = "sa_solver_pece"
    nfe_per_step = 2
    use_pece = True
