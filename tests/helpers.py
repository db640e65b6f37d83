"""Small shared test tools: a host-sync counter, closed-form toy denoisers, starting noise,
a table noise sampler, grids and the convergence-order fit.

The toy denoisers here are written from the formulas directly, independently of
``ksampling.denoisers.analytic``, so the core tests do not check the library against itself.
"""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

# The convergence order: minus the least-squares slope of log(error) against log(N), one
# implementation for the tests and the benchmarks.
from benchmarks.metrics import fit_order as fitted_order  # noqa: F401

F64 = torch.float64

#: Tensor methods that copy a value to the host (a GPU->CPU sync on CUDA, and a break in
#: CUDA-graph capture).
HOST_CONVERSIONS = frozenset(
    {"__bool__", "item", "__float__", "__int__", "__index__", "tolist", "cpu", "numpy", "__repr__", "__format__"}
)


class HostSyncCounter(TorchFunctionMode):
    """Counts tensor-to-host conversions made while it is active."""

    def __init__(self):
        super().__init__()
        self.count = 0
        self.names: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in HOST_CONVERSIONS:
            self.count += 1
            self.names.append(name)
        return func(*args, **(kwargs or {}))


class GaussianData:
    """Data x0 ~ N(mean, diag(var)); D(x; σ) = μ + var/(var + σ²) (x − μ) (exact posterior mean)."""

    def __init__(self, mean, var):
        self.mean = torch.as_tensor(mean, dtype=torch.float64)
        self.var = torch.as_tensor(var, dtype=torch.float64)

    def __call__(self, x, sigma):
        s2 = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype) ** 2
        mean, var = self.mean.to(x), self.var.to(x)
        return mean + var / (var + s2) * (x - mean)

    def ode_solution(self, x_start, sigma_start, sigma):
        """x(σ) = μ + (x_T − μ) sqrt((σ² + c²)/(σ_T² + c²)) per dimension."""
        return self.mean + (x_start - self.mean) * torch.sqrt((sigma**2 + self.var) / (sigma_start**2 + self.var))


class SmoothToy:
    """A smooth nonlinear denoiser (not the posterior mean of any particular data), elementwise
    so that it is batch-invariant to the bit."""

    def __call__(self, x, sigma):
        s = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        return torch.tanh(x / (1 + s)) * (1 / (1 + 0.1 * s))

    def denoise_with_uncond(self, x, sigma):
        """(D, a second smooth function as the unconditional D_∅), for the CFG++ solvers."""
        s = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        return self(x, sigma), torch.tanh(0.8 * x / (1 + s))


def karras_grid(n, sigma_min=0.002, sigma_max=80.0, rho=7.0, append_zero=True):
    ramp = [i / max(n - 1, 1) for i in range(n)]
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sig = [(hi + r * (lo - hi)) ** rho for r in ramp]
    if append_zero:
        sig.append(0.0)
    return torch.tensor(sig, dtype=torch.float64)


def start(*shape, sigma_max=10.0, seed=0):
    """Starting noise x = σ_max · n in float64, n from a generator seeded with ``seed``;
    ``shape`` defaults to (2, 3)."""
    return torch.randn(shape or (2, 3), dtype=F64, generator=torch.Generator().manual_seed(seed)) * sigma_max


class TableNoise:
    """A deterministic noise sampler: the k-th call returns the k-th tensor of a seeded table,
    whatever implementation calls it (and whatever sigmas it asks for)."""

    def __init__(self, shape, seed=0, count=64):
        g = torch.Generator().manual_seed(seed)
        self.table = [torch.randn(shape, dtype=F64, generator=g) for _ in range(count)]
        self.calls = 0

    def __call__(self, sigma, sigma_next):
        self.calls += 1
        return self.table[self.calls - 1]


def rel_err(a, b):
    """‖a − b‖ / ‖b‖."""
    return float((a - b).norm() / b.norm())
