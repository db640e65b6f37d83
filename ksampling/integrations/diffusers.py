"""diffusers in both directions: diffusers models on ksampling solvers, and ksampling solvers
in diffusers pipelines.

* :func:`from_diffusers` (:mod:`~ksampling.integrations.diffusers_model`) turns a diffusers
  model (``UNet2DModel``, ``UNet2DConditionModel``, a transformer) and its scheduler (or
  scheduler config) into the denoiser D(x; σ) that :func:`ksampling.sample` runs on.
* :class:`KSamplingScheduler` (:mod:`~ksampling.integrations.diffusers_scheduler`) is a diffusers
  scheduler backed by any fixed-grid ksampling solver, on the grid of the scheduler it replaces:
  ``pipe.scheduler = KSamplingScheduler.from_config(pipe.scheduler, solver="unipc")``.

Needs the ``diffusers`` extra (``pip install ksampling[diffusers]``); ``import ksampling``
never imports diffusers.
"""

from __future__ import annotations

from .diffusers_model import (
    PREDICTION_TYPES,
    TIMESTEP_MODES,
    DiffusersNetwork,
    from_diffusers,
    process_from_config,
)
from .diffusers_scheduler import SIGMA_INFINITY, SOURCES, KSamplingScheduler, KSamplingSchedulerOutput

__all__ = [
    "from_diffusers", "DiffusersNetwork", "process_from_config", "KSamplingScheduler", "KSamplingSchedulerOutput",
    "PREDICTION_TYPES", "TIMESTEP_MODES", "SOURCES", "SIGMA_INFINITY",
]
