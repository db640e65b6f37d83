"""Wrappers that turn any diffusion network into the Karras denoiser D(x; σ).

* :mod:`.processes`: noise processes (VE, VP discrete / continuous, rectified flow): σ ↔ the
  network's time and the network's input scaling.
* :mod:`.predictions`: prediction types (eps, x0, v, score, flow, mean, learned variances).
* :mod:`.wrappers`: :class:`NetworkDenoiser`, a network of any process and prediction as D.
* :mod:`.edm`: EDM preconditioning.
* :mod:`.guidance`: classifier-free guidance.
* :mod:`.analytic`: denoisers with exact answers (Dirac, Gaussian, mixture, ideal denoiser).
"""

from . import analytic, edm, guidance, predictions, processes, wrappers
from .analytic import *  # noqa: F401,F403
from .base import Denoiser, LearnedVariance
from .edm import *  # noqa: F401,F403
from .guidance import *  # noqa: F401,F403
from .processes import *  # noqa: F401,F403
from .wrappers import *  # noqa: F401,F403


def from_diffusers(model, scheduler_or_config, **kwargs):
    """D(x; σ) from a diffusers model and its scheduler (config); see
    :func:`ksampling.integrations.diffusers.from_diffusers`. Needs the ``diffusers`` extra."""
    from ..integrations.diffusers import from_diffusers as _from_diffusers

    return _from_diffusers(model, scheduler_or_config, **kwargs)


__all__ = (
    ["Denoiser", "LearnedVariance", "from_diffusers"]
    + analytic.__all__
    + edm.__all__
    + guidance.__all__
    + processes.__all__
    + wrappers.__all__
)
