"""A seeded Brownian tree: noise for SDE solvers that is consistent across step counts.

``W(t)`` is a deterministic function of ``t`` on ``[t0, t1]``, built by bisection (Lévy's
construction of Brownian motion): ``W(t0) = 0``, ``W(t1) ~ N(0, t1 − t0)``, and the midpoint
of a dyadic interval ``[a, b]`` whose end values are known is drawn from the Brownian bridge,

    W((a + b)/2) = (W(a) + W(b))/2 + (√(b − a)/2) · z,

where ``z`` is standard normal noise drawn from a generator seeded by an integer hash of
(seed, level, index) of that midpoint. A query descends from the root to the dyadic leaf of
width ≤ ``tol`` that holds ``t`` and interpolates linearly inside it. So every query of the
same ``t`` returns the same value whatever the order of the queries, and increments add
exactly: ``W(c) − W(a) = (W(b) − W(a)) + (W(c) − W(b))``. Increments over intervals much
longer than ``tol`` are N(0, Δt); a step of length comparable to ``tol`` loses variance to the
interpolation (``tol = 1e-6`` in the units of ``t`` by default, as torchsde's tree).

All branching is on host floats: a query costs at most ``depth = ⌈log2((t1 − t0)/tol)⌉``
draws of the shape of ``x`` (fewer with the cache of recent nodes) and no device-to-host
transfer. Unlike k-diffusion's wrapper of ``torchsde.BrownianTree`` this needs no torchsde,
never touches the global RNG, and clamps queries outside ``[t0, t1]`` without warnings.
"""

from __future__ import annotations

import math
import numbers
from collections import OrderedDict
from typing import Callable, Sequence

import torch

from .noise import as_generators, seeds_from_generators

__all__ = ["BrownianTreeNoiseSampler", "BatchedBrownianTree"]

_MASK64 = (1 << 64) - 1
_MAX_DEPTH = 48


def _splitmix64(z: int) -> int:
    """One round of the splitmix64 mixer (Steele, Lea & Flood 2014): a bijective 64-bit hash."""
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _node_seed(seed: int, level: int, index: int) -> int:
    return _splitmix64(_splitmix64(_splitmix64(seed & _MASK64) ^ level) ^ index)


def _host_float(value, name: str) -> float:
    # A tensor argument (k-diffusion passes 0-dim tensors) is read once; floats cost nothing.
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _check_seed(seed, name: str = "seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(seed).__name__}")
    return int(seed)


class BatchedBrownianTree:
    """Brownian motion on ``[t0, t1]`` shaped like ``x``, one tree per sample or one for all.

    k-diffusion's constructor and call signature: ``tree(ta, tb)`` returns ``W(tb) − W(ta)``.

    Args:
        x: tensor whose shape, device and dtype the increments take.
        t0, t1: the ends of the time interval (either order; floats or 0-dim tensors).
        seed: an int (one tree for the whole batch), a list of ints (one tree per sample:
            sample ``i`` then depends only on ``seed[i]``, not on the batch size or its
            position), or ``None`` to take the seed(s) from ``generator``.
        generator: used only when ``seed`` is None: one :class:`torch.Generator` (one seed
            drawn from it), a list of them (one seed per sample), or ``None`` (a fresh
            non-deterministic seed; the global RNG is never used).
        tol: width of the leaves in units of ``t``; increments of intervals much longer than
            ``tol`` are exactly Brownian.
        cache_size: how many node values (tensors like ``x``) to keep; the default, two
            root-to-leaf paths, lets consecutive queries share their common ancestors.
        cpu: draw the tree's noise on the CPU and move it to ``x``'s device, so that a seed
            gives the same noise on every device (ComfyUI's ``cpu=True``); by default it is
            drawn on ``x``'s device.
        w0: accepted for compatibility with k-diffusion/torchsde; increments do not depend on it.
    """

    def __init__(
        self,
        x: torch.Tensor,
        t0,
        t1,
        seed: int | Sequence[int] | None = None,
        *,
        generator=None,
        tol: float = 1e-6,
        cache_size: int | None = None,
        cpu: bool = False,
        w0: torch.Tensor | None = None,
    ):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError("x must be a floating-point torch.Tensor")
        if x.ndim < 1:
            raise ValueError("x must have a batch dimension")
        t0, t1 = _host_float(t0, "t0"), _host_float(t1, "t1")
        if t0 == t1:
            raise ValueError(f"t0 and t1 must differ, got t0 = t1 = {t0}")
        self.sign = 1.0 if t0 < t1 else -1.0
        self.t0, self.t1 = min(t0, t1), max(t0, t1)
        self.span = self.t1 - self.t0
        if not math.isfinite(self.span):
            raise ValueError(f"the interval t0 = {t0:g} .. t1 = {t1:g} is too long for float64")
        tol = _host_float(tol, "tol")
        if tol <= 0:
            raise ValueError(f"tol must be > 0, got {tol}")
        # log2(span) − log2(tol), not log2(span/tol): the quotient overflows for huge spans
        self.depth = min(_MAX_DEPTH, max(1, math.ceil(math.log2(self.span) - math.log2(tol))))

        batch = x.shape[0]
        if seed is not None and generator is not None:
            raise ValueError("pass either seed or generator, not both")
        if seed is None:
            gens = as_generators(generator, batch, x.device)
            if isinstance(gens, torch.Generator):
                seed = seeds_from_generators(gens, 1)[0]
            else:
                seed = seeds_from_generators(gens, batch)
        if isinstance(seed, (list, tuple)):
            if len(seed) != batch:
                raise ValueError(f"seed: got {len(seed)} seeds for a batch of {batch}; pass one per sample or one int")
            self.seeds = [_check_seed(s, "seed[i]") for s in seed]
            self.batched = True
        else:
            self.seeds = [_check_seed(seed)]
            self.batched = False

        self.shape = x.shape
        self.out_dtype = x.dtype
        # The tree itself is kept at least in float32 so that fine levels do not round away.
        self.dtype = torch.promote_types(x.dtype, torch.float32)
        self.device = x.device
        if not isinstance(cpu, bool):
            raise TypeError(f"cpu must be a bool, got {type(cpu).__name__}")
        gen_device = x.device if x.device.type in ("cpu", "cuda") and not cpu else torch.device("cpu")
        self._generator = torch.Generator(device=gen_device)
        self._cache: OrderedDict[tuple[int, int], torch.Tensor] = OrderedDict()
        self._cache_size = 2 * (self.depth + 1) if cache_size is None else int(cache_size)
        self._points: OrderedDict[float, torch.Tensor] = OrderedDict()
        self._zero = torch.zeros(self.shape, dtype=self.dtype, device=self.device)
        self._root = self._draw(0, 1) * math.sqrt(self.span)

    # -- the tree --------------------------------------------------------------------------
    def _draw(self, level: int, index: int) -> torch.Tensor:
        """Standard normal noise of node (level, index), a function of the seed(s) only."""
        g = self._generator
        if self.batched:
            parts = []
            for s in self.seeds:
                g.manual_seed(_node_seed(s, level, index))
                parts.append(torch.randn(self.shape[1:], generator=g, device=g.device, dtype=self.dtype))
            z = torch.stack(parts)
        else:
            g.manual_seed(_node_seed(self.seeds[0], level, index))
            z = torch.randn(self.shape, generator=g, device=g.device, dtype=self.dtype)
        return z.to(self.device, non_blocking=True)

    def _midpoint(self, level: int, index: int, w_left: torch.Tensor, w_right: torch.Tensor) -> torch.Tensor:
        key = (level, index)
        w = self._cache.get(key)
        if w is not None:
            self._cache.move_to_end(key)
            return w
        # Brownian bridge at the midpoint of a parent interval of width span / 2^(level-1).
        std = 0.5 * math.sqrt(self.span / 2.0 ** (level - 1))
        w = (w_left + w_right) * 0.5 + self._draw(level, index) * std
        self._cache[key] = w
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return w

    def _value(self, t: float) -> torch.Tensor:
        """W(t) (with W(t0) = 0; the cached tensor itself); ``t`` outside [t0, t1] is clamped."""
        t = min(max(t, self.t0), self.t1)
        cached = self._points.get(t)
        if cached is not None:
            return cached
        u = (t - self.t0) / self.span
        w_left, w_right = self._zero, self._root
        left = 0  # the current interval is [left, left + 1] / 2^level
        for level in range(1, self.depth + 1):
            mid = 2 * left + 1
            w_mid = self._midpoint(level, mid, w_left, w_right)
            if u >= mid / 2.0**level:
                left, w_left = mid, w_mid
            else:
                left, w_right = 2 * left, w_mid
        frac = u * 2.0**self.depth - left
        if frac <= 0.0:
            value = w_left
        elif frac >= 1.0:
            value = w_right
        else:
            value = w_left + (w_right - w_left) * frac
        self._points[t] = value
        if len(self._points) > 8:
            self._points.popitem(last=False)
        return value

    def __call__(self, t0, t1) -> torch.Tensor:
        """W(t1) − W(t0), shaped like ``x`` (k-diffusion's ``BatchedBrownianTree`` call)."""
        ta, tb = _host_float(t0, "t0"), _host_float(t1, "t1")
        return ((self._value(tb) - self._value(ta)) * self.sign).to(self.out_dtype)


class _PointTree:
    """The Brownian "tree" of a one-point interval: there is no increment to draw."""

    def __init__(self, x: torch.Tensor, t: float):
        self.t0 = self.t1 = t
        self.shape, self.out_dtype, self.device = x.shape, x.dtype, x.device


class BrownianTreeNoiseSampler:
    """Noise sampler backed by a Brownian tree (k-diffusion's protocol and signature).

    ``sampler(sigma, sigma_next)`` returns ``(W(t_next) − W(t)) / √|t_next − t|`` with
    ``t = transform(sigma)``: standard normal noise for the step, and the noise of a coarse
    step is the normalised sum of the noise of the fine steps that make it up, so an SDE
    solver's results converge pathwise as the step count grows.

    Args:
        x: tensor whose shape, device and dtype to use.
        sigma_min, sigma_max: the range of sigma the tree covers; queries outside it are
            clamped to it (without warnings) and normalised by the clamped length, so the
            noise stays N(0, I); a query entirely outside the range returns zeros.
        seed: int, or a list of ints (one per sample, so that sample ``i`` is independent of
            the batch size and position); ``None`` takes the seed(s) from ``generator``.
        transform: maps sigma to the tree's time ``t`` (default: the identity). It receives a
            0-dim float64 CPU tensor, as in k-diffusion, and may return a tensor or a float.
        generator: a :class:`torch.Generator` or one per sample, used when ``seed`` is None
            (this is how :func:`ksampling.sample` seeds it).
        tol: leaf width of the tree in units of ``t``.
        cpu: draw the noise on the CPU (the same numbers whatever ``x``'s device).

    Sigmas given as Python floats (as the sampling loop passes them) cause no device sync; a
    0-dim tensor is read once per call.
    """

    def __init__(
        self,
        x: torch.Tensor,
        sigma_min,
        sigma_max,
        seed: int | Sequence[int] | None = None,
        transform: Callable | None = None,
        *,
        generator=None,
        tol: float = 1e-6,
        cpu: bool = False,
    ):
        if transform is not None and not callable(transform):
            raise TypeError("transform must be callable, e.g. lambda sigma: sigma.log()")
        self.transform = transform
        sigma_min, sigma_max = _host_float(sigma_min, "sigma_min"), _host_float(sigma_max, "sigma_max")
        t0, t1 = self._t(sigma_min), self._t(sigma_max)
        if t0 == t1:
            # A one-point range (a one-step grid to 0): every increment inside it is 0.
            self.tree = _PointTree(x, t0)
        else:
            self.tree = BatchedBrownianTree(x, t0, t1, seed, generator=generator, tol=tol, cpu=cpu)

    def _t(self, sigma) -> float:
        if self.transform is None:
            return _host_float(sigma, "sigma")
        if not isinstance(sigma, torch.Tensor):
            sigma = torch.tensor(_host_float(sigma, "sigma"), dtype=torch.float64)
        return _host_float(self.transform(sigma), "transform(sigma)")

    def __call__(self, sigma, sigma_next) -> torch.Tensor:
        tree = self.tree
        t = min(max(self._t(sigma), tree.t0), tree.t1)
        t_next = min(max(self._t(sigma_next), tree.t0), tree.t1)
        dt = abs(t_next - t)
        if dt == 0.0:
            # Both ends clamped to the same point (or sigma == sigma_next): no Brownian increment.
            return torch.zeros(tree.shape, dtype=tree.out_dtype, device=tree.device)
        return tree(t, t_next) * (1.0 / math.sqrt(dt))
