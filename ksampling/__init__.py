"""ksampling: sample from any diffusion model with any good solver, through one interface.

Every network becomes a denoiser ``D(x; σ)`` (Karras et al. 2022); every solver runs on
that one form through :func:`sample`.
"""

from . import denoisers, samplers, schedules
from .samplers import Plan, SamplingInfo, available, plan, sample

__version__ = "0.1.0"
__all__ = ["sample", "plan", "Plan", "available", "SamplingInfo", "samplers", "schedules", "denoisers", "__version__"]
