"""Validators of solver options: one home for every ``check_*`` (argument order ``(name, value)``).

Each returns the value normalised (``float``/``int``/``bool``) or raises a ``TypeError`` (wrong
kind) or ``ValueError`` (out of range) that names the option and the range it must be in.
Infinities are refused unless a validator says otherwise: an infinite noise scale or
tolerance is never what a caller meant, and it turns into NaN inside the loop.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any, Sequence

import torch

__all__ = [
    "check_real",
    "check_nonnegative",
    "check_positive",
    "check_int",
    "check_bool",
    "check_choice",
    "check_fraction",
    "check_threshold",
]


def check_real(
    name: str,
    value: Any,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
    allow_inf: bool = False,
) -> float:
    """A real number (not bool; numpy scalars and one-element tensors too), not NaN, finite
    unless ``allow_inf``, in the interval ``[low, high]`` (ends excluded with ``low_open`` /
    ``high_open``). Options are read once, on the host, before any loop."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_complex():
            raise ValueError(f"{name} must be a real scalar, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{name} must be a number, got nan")
    if math.isinf(value) and not allow_inf:
        raise ValueError(f"{name} must be finite, got {value}")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        raise ValueError(f"{name} must be in {left}{low:g}, {high:g}{right}, got {value}")
    return value


def check_nonnegative(name: str, value: Any, *, allow_inf: bool = False) -> float:
    """A real number >= 0 (finite unless ``allow_inf``, e.g. ``s_tmax = inf``)."""
    value = check_real(name, value, allow_inf=allow_inf)
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def check_positive(name: str, value: Any) -> float:
    """A finite real number > 0."""
    return check_real(name, value, low=0.0, low_open=True)


def check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    """An int (not bool) in ``low..high`` (no upper bound when ``high`` is None)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        span = f">= {low}" if high is None else f"in {low}..{high}"
        raise ValueError(f"{name} must be {span}, got {value}")
    return value


def check_bool(name: str, value: Any) -> bool:
    """True or False (TypeError naming the option otherwise)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__}")
    return value


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    """One of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def check_fraction(name: str, value: Any) -> float:
    """A number strictly between 0 and 1 (singlestep intermediate points r1, r2)."""
    return check_real(name, value, low=0.0, high=1.0, low_open=True, high_open=True)


def check_threshold(name: str, value: Any) -> float:
    """A number of steps >= 1, or ``math.inf`` (``lower_order_final_below``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of steps, got {type(value).__name__}")
    if math.isnan(value) or value < 1:
        raise ValueError(f"{name} must be >= 1 (a number of steps, or math.inf for always), got {value}")
    return float(value)
