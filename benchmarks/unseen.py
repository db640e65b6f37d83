"""Two Gaussian mixtures that are not among the suite's problems, for checking that the fit
(:mod:`ksampling.fit`) and the goal ratios are not tuned to the repository's problems.

``python -m benchmarks --unseen ...`` runs them (see :data:`UNSEEN_PROBLEMS`). Their shapes,
seeds and component widths differ from ``gmm-2d`` / ``gmm-64d``; nothing in the library or
the fit was chosen by looking at them.
"""

from __future__ import annotations

import numpy as np

from .problems import _mixture_problem

__all__ = ["UNSEEN_PROBLEMS", "unseen_a", "unseen_b"]


def unseen_a(device="cpu"):
    """3-D, 6 narrow components (std 0.03-0.15) at random positions, very unequal weights."""
    rng = np.random.default_rng(101)
    means = rng.normal(0.0, 0.8, (6, 3))
    weights = rng.dirichlet(np.full(6, 0.7))
    stds = rng.uniform(0.03, 0.15, 6)
    return _mixture_problem("unseen-a", "3-D, 6 Gaussians (std 0.03-0.15), random means, Dirichlet weights",
                            weights, means, stds, device)


def unseen_b(device="cpu"):
    """32-D, 24 components (std 0.05-0.4) around two clusters."""
    rng = np.random.default_rng(202)
    centres = rng.normal(0.0, 1.0, (2, 32))
    means = centres[rng.integers(0, 2, 24)] + rng.normal(0.0, 0.35, (24, 32))
    weights = rng.uniform(0.2, 2.0, 24)
    stds = rng.uniform(0.05, 0.4, 24)
    return _mixture_problem("unseen-b", "32-D, 24 Gaussians (std 0.05-0.4) in two clusters", weights, means, stds,
                            device)


UNSEEN_PROBLEMS = {"unseen-a": unseen_a, "unseen-b": unseen_b}
