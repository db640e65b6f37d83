"""Reference solutions of the probability-flow ODE, cached on disk.

The samplers integrate ``dx/dσ = (x − D(x; σ)) / σ`` from ``σ_max`` down to ``σ_min``. In
``t = log σ`` the same ODE reads ``dx/dt = x − D(x; e^t)``, which has no 1/σ blow-up near
``σ_min``; scipy's ``solve_ivp`` with DOP853 (8th order, float64, rtol = atol = 1e-10 by
default) integrates it for the whole batch at once. Where a closed form exists (Gaussian
data: :meth:`ksampling.denoisers.Gaussian.ode_solution`) the suite uses it instead.

Results are cached under ``benchmarks/cache/reference/`` keyed by the problem's
fingerprint, the initial noise (hence the seeds and the batch), the sigma range and the
tolerances, so that repeated runs skip the integration.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import torch

__all__ = ["ode_reference", "reference_solution", "CACHE_DIR"]

CACHE_DIR = Path(__file__).resolve().parent / "cache" / "reference"


def ode_reference(denoiser, x_T: torch.Tensor, sigma_max: float, sigma_min: float, *, rtol: float = 1e-10,
                  atol: float = 1e-10, extra_args=None) -> torch.Tensor:
    """x(σ_min) of the probability-flow ODE from x(σ_max) = x_T, by DOP853 in t = log σ (float64).

    Returns a float64 tensor on x_T's device. Raises ``RuntimeError`` if the integration fails.
    """
    try:
        from scipy.integrate import solve_ivp
    except ImportError as exc:  # pragma: no cover - scipy is a bench extra
        raise ImportError("the ODE reference needs scipy: pip install ksampling[bench]") from exc
    if not sigma_max > sigma_min > 0:
        raise ValueError(f"need sigma_max > sigma_min > 0, got sigma_max={sigma_max}, sigma_min={sigma_min}")
    shape, device = x_T.shape, x_T.device
    batch = shape[0]
    extra_args = extra_args or {}

    def rhs(t, y):
        x = torch.from_numpy(y).view(shape).to(device)
        with torch.no_grad():
            denoised = denoiser(x, x.new_full((batch,), math.exp(t)), **extra_args).to(torch.float64)
        return (x - denoised).cpu().numpy().ravel()

    y0 = x_T.detach().to("cpu", torch.float64).numpy().ravel().copy()
    sol = solve_ivp(rhs, (math.log(sigma_max), math.log(sigma_min)), y0, method="DOP853", rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"DOP853 reference failed: {sol.message}")
    out = torch.from_numpy(sol.y[:, -1].copy()).view(shape)
    if not torch.isfinite(out).all():
        raise RuntimeError("DOP853 reference produced non-finite values")
    return out.to(device)


def _key(*parts) -> str:
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            part = part.detach().to("cpu", torch.float64).contiguous().numpy().tobytes()
        elif not isinstance(part, bytes):
            part = repr(part).encode()
        digest.update(part)
        digest.update(b"|")
    return digest.hexdigest()[:20]


def reference_solution(problem, x_T: torch.Tensor, *, rtol: float = 1e-10, atol: float = 1e-10,
                       cache: bool = True) -> torch.Tensor:
    """The true x(σ_min) for ``problem`` from x_T: closed form when the problem has one,
    else DOP853 (cached on disk)."""
    if problem.exact_solution is not None:
        return problem.exact_solution(x_T.to(torch.float64), problem.sigma_max, problem.sigma_min)
    path = CACHE_DIR / f"{problem.name}-{_key(problem.fingerprint, x_T, problem.sigma_max, problem.sigma_min, rtol, atol)}.npy"
    if cache and path.exists():
        return torch.from_numpy(np.load(path)).to(x_T.device)
    out = ode_reference(problem.denoiser, x_T.to(torch.float64), problem.sigma_max, problem.sigma_min,
                        rtol=rtol, atol=atol)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, out.cpu().numpy())
        tmp.replace(path)  # atomic: parallel runs never read half a file
    return out
