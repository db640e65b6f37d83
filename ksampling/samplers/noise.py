"""Noise for stochastic solvers, without the global RNG.

Protocol (k-diffusion's): a noise sampler is ``noise_sampler(sigma, sigma_next) -> Tensor``
returning standard normal noise shaped like ``x`` for the step ``sigma -> sigma_next``.

Randomness comes from ``generator``: one :class:`torch.Generator` for the batch, or one per
sample (EDM's ``StackedRandomGenerator`` idea) so that sample ``i`` depends only on its own
generator, never on the batch size or its position in the batch.
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["GaussianNoise", "PredrawnNoise", "no_noise", "as_generators", "fresh_generator", "seeds_from_generators"]


def fresh_generator(device: torch.device | str = "cpu") -> torch.Generator:
    """A new generator seeded from the OS entropy; the global RNG is left untouched."""
    g = torch.Generator(device=device)
    g.seed()
    return g


def as_generators(generator, batch_size: int, device) -> list[torch.Generator] | torch.Generator:
    """Validate ``generator``: ``None`` (fresh, non-deterministic), one generator, or one per sample."""
    if generator is None:
        return fresh_generator(device if torch.device(device).type != "mps" else "cpu")
    if isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, Sequence) and not isinstance(generator, (str, bytes)):
        gens = list(generator)
        if not all(isinstance(g, torch.Generator) for g in gens):
            raise TypeError("generator must be a torch.Generator or a sequence of them, one per sample")
        if len(gens) != batch_size:
            raise ValueError(
                f"generator: got {len(gens)} generators for a batch of {batch_size}; "
                "pass one per sample or a single generator"
            )
        return gens
    raise TypeError(f"generator must be a torch.Generator or a list of them, got {type(generator).__name__}")


def seeds_from_generators(generators, batch_size: int) -> list[int]:
    """One 63-bit seed per sample drawn from the generator(s), for seeded noise sources such
    as the Brownian tree. Called once before the loop (it reads the seeds back to the host)."""
    if isinstance(generators, torch.Generator):
        draw = torch.randint(0, 2**63 - 1, (batch_size,), generator=generators, device=generators.device)
        return [int(s) for s in draw.tolist()]
    return [
        int(torch.randint(0, 2**63 - 1, (), generator=g, device=g.device).tolist())
        for g in generators
    ]


class GaussianNoise:
    """i.i.d. standard normal noise like ``x``, drawn from the given generator(s).

    With a list of generators each sample's noise is drawn from its own generator, so a
    sample is bit-identical whether drawn alone or inside a batch.
    """

    def __init__(self, x: torch.Tensor, generator=None):
        self.shape = x.shape
        self.dtype = x.dtype
        self.device = x.device
        self.generators = as_generators(generator, x.shape[0], x.device)

    def __call__(self, sigma=None, sigma_next=None) -> torch.Tensor:
        gens = self.generators
        if isinstance(gens, torch.Generator):
            noise = torch.randn(self.shape, generator=gens, device=gens.device, dtype=self.dtype)
        else:
            noise = torch.stack(
                [torch.randn(self.shape[1:], generator=g, device=g.device, dtype=self.dtype) for g in gens]
            )
        return noise.to(self.device, non_blocking=True)


def no_noise(sigma, sigma_next):
    """The noise sampler of a deterministic run: drawing from it is a bug in the solver."""
    raise RuntimeError("this solver configuration is deterministic and must not draw noise")


class PredrawnNoise:
    """A noise sampler that hands out the rows of ``noise`` (``[draws, *x.shape]``) in order:
    noise drawn before the run (:meth:`~ksampling.samplers.loop.Plan.draw_noise`), for compiled and captured runs,
    which cannot draw from a :class:`torch.Generator` inside their graph."""

    def __init__(self, noise: torch.Tensor):
        self.noise = noise
        self.drawn = 0

    def __call__(self, sigma, sigma_next):
        if self.drawn >= self.noise.shape[0]:
            raise ValueError(
                f"noise: the run needs more than the {self.noise.shape[0]} pre-drawn draws given; "
                "make them with plan.draw_noise(x, generator)"
            )
        n = self.noise[self.drawn]
        self.drawn += 1
        return n
