"""The helper of ``k_diffusion.utils`` that sampling code written for k-diffusion imports."""

from __future__ import annotations

__all__ = ["append_dims"]


def append_dims(x, target_dims):
    """``x`` with singleton dimensions appended until it has ``target_dims`` dimensions."""
    if target_dims < x.ndim:
        raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}, which is less")
    return x[(...,) + (None,) * (target_dims - x.ndim)]
