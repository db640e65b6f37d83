"""The ``fitted`` solver: a registered solver with per-step corrections learned by
:func:`ksampling.fit.fit_sigmas`, so that one ``sample`` call reproduces a fitted sampler.

It runs a fixed-grid base solver (``base``, with ``base_options``) and changes two things,
each per step ``i`` of the grid (``None``: no change):

* ``model_sigma_scale[i]`` = c_i: the model is called at c_i·σ wherever the base solver asks
  for D(x; σ) during step i, while the solver's own coefficients keep the grid's σ. This is
  LD3's decoupled model-input time (Tong et al. 2024, arXiv:2405.15506): the step's
  truncation error is partly cancelled by evaluating the denoiser slightly off the grid.
* ``update_scale[i]`` = g_i: the step's update is scaled,

      ``x_{i+1} = x_i + g_i · (Φ_i(x_i) − x_i)``,

  Φ_i the base solver's step: a one-parameter-per-step correction of the solver's
  coefficients in the spirit of S4S (Frankel et al. 2025, arXiv:2502.17423).

Neither changes the number of model calls: ``nfe`` is the base solver's.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from .base import Solver, make_solver, register

__all__ = ["Fitted"]


class _ModelSigmaContext:
    """The loop's Context, except that the model sees ``scale · σ`` (the callback and the
    NFE count are the loop's own)."""

    def __init__(self, ctx, scale: float):
        self._ctx = ctx
        self._scale = scale

    def __getattr__(self, name):
        return getattr(self._ctx, name)

    def denoise(self, x, sigma):
        return self._ctx.denoise(x, sigma * self._scale)

    def denoise_with_variance(self, x, sigma):
        return self._ctx.denoise_with_variance(x, sigma * self._scale)

    def denoise_with_uncond(self, x, sigma):
        return self._ctx.denoise_with_uncond(x, sigma * self._scale)


def _per_step(name: str, values) -> list[float] | None:
    if values is None:
        return None
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a list of numbers (one per step) or None, got {type(values).__name__}")
    out = []
    for j, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"{name}[{j}] must be a number, got {type(v).__name__}")
        if not math.isfinite(v) or v <= 0:
            raise ValueError(f"{name}[{j}] must be a finite number > 0, got {v}")
        out.append(float(v))
    return out


@register
class Fitted(Solver):
    """A base solver with fitted per-step model-input σ factors and update scales.

    ``x_{i+1} = x_i + g_i (Φ_i(x_i; D(·; c_i σ)) − x_i)``: Φ_i the step of ``base`` (a
    fixed-grid solver, configured by ``base_options``), c_i = ``model_sigma_scale[i]``
    (LD3, arXiv:2405.15506), g_i = ``update_scale[i]`` (an S4S-style coefficient
    correction, arXiv:2502.17423). Both lists have one entry per step of the grid; ``None``
    leaves the base solver unchanged. Made by :func:`ksampling.fit.fit_sigmas`.
    """

    name = "fitted"
    order = 2  # that of the default base, ipndm (the real order is the base's)
    nfe_per_step = 1
    paper = "LD3 (Tong et al. 2024, arXiv:2405.15506); S4S (Frankel et al. 2025, arXiv:2502.17423)"

    def __init__(self, base: str = "ipndm", base_options: dict[str, Any] | None = None,
                 model_sigma_scale: Sequence[float] | None = None, update_scale: Sequence[float] | None = None):
        if not isinstance(base, str):
            raise TypeError(f"base must be a solver name, got {type(base).__name__}")
        if base == self.name:
            raise ValueError("base cannot be 'fitted' itself")
        if base_options is not None and not isinstance(base_options, dict):
            raise TypeError(f"base_options must be a dict or None, got {type(base_options).__name__}")
        self.base_name = base
        self.base = make_solver(base, dict(base_options or {}))
        if not self.base.fixed_grid:
            raise ValueError(f"base must be a fixed-grid solver; {base!r} chooses its own steps")
        self.model_sigma_scale = _per_step("model_sigma_scale", model_sigma_scale)
        self.update_scale = _per_step("update_scale", update_scale)
        self.default_noise = self.base.default_noise

    @property
    def draws_noise(self) -> bool:
        return self.base.draws_noise

    def reset(self) -> None:
        self.base.reset()

    def plan(self, sigmas):
        steps = self.base.plan(sigmas)
        for name, values in (("model_sigma_scale", self.model_sigma_scale), ("update_scale", self.update_scale)):
            if values is not None and len(values) != len(steps):
                raise ValueError(f"{name} has {len(values)} entries but the grid has {len(steps)} steps")
        for i, step in enumerate(steps):
            step.model_scale = 1.0 if self.model_sigma_scale is None else self.model_sigma_scale[i]
            step.update_gain = 1.0 if self.update_scale is None else self.update_scale[i]
        return steps

    def step(self, ctx, x, step):
        inner = ctx if step.model_scale == 1.0 else _ModelSigmaContext(ctx, step.model_scale)
        x_next = self.base.step(inner, x, step)
        if step.update_gain == 1.0:
            return x_next
        return x.lerp(x_next, step.update_gain)
