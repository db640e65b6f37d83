"""Wrappers that turn any diffusion network into the Karras denoiser D(x; σ)."""

from .base import Denoiser, LearnedVariance

__all__ = ["Denoiser", "LearnedVariance"]
