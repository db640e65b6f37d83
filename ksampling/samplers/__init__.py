"""Solvers on the one loop.

``available()`` lists every solver; ``get(name)`` returns its class; ``info(name)`` its
metadata (order, NFE per step, ODE or SDE, multistep, options with their defaults).
"""

# Each solver module registers its solvers on import.
from . import adams, ancestral, deis, dpm, dpm_solver, dpmpp, er_sde, euler, fitted, lms, res_multistep, runge_kutta, unipc  # noqa: F401
from . import cfg_pp, heunpp, lcm, restart, sa_solver, seeds  # noqa: F401  (cfg_pp after the base solvers it extends)
from .base import SOLVERS, Solver, Step, available, get, info, register
from .loop import FINAL_STEP_POLICIES, Plan, PredrawnNoise, SamplingInfo, plan, sample
from .noise import GaussianNoise

__all__ = [
    "sample",
    "plan",
    "Plan",
    "PredrawnNoise",
    "available",
    "get",
    "info",
    "register",
    "Solver",
    "Step",
    "SamplingInfo",
    "GaussianNoise",
    "FINAL_STEP_POLICIES",
    "SOLVERS",
]
