"""Latent Consistency Model multistep sampling (ComfyUI's ``lcm``)."""

from __future__ import annotations

import torch

from .base import Solver, check_nonnegative, register

__all__ = ["LCM"]


@register
class LCM(Solver):
    """Multistep consistency sampling (Song et al. 2023, "Consistency Models", Algorithm 1;
    Luo et al. 2023, "Latent Consistency Models", Algorithm 3), in the VE state space:
    jump to the denoised estimate and renoise to the next level,

        x_next = D(x; σ) + σ_next · s_i · z,   s_i = s_noise + (s_noise_end − s_noise) · i/(N − 1),

    (``x_next = D`` for σ_next = 0). As ComfyUI's ``sample_lcm``: ``s_noise_end = None`` keeps
    ``s_noise`` constant, and ``noise_clip_std > 0`` clamps z to ± noise_clip_std · std(z),
    the standard deviation of the whole batch's draw (so with clipping a sample depends on its
    batch, as there). Meant for consistency-distilled models: every step replaces x by D, so
    it is no discretisation of the probability-flow ODE and has no convergence order
    (``order = 1`` is nominal).

    Parity with a transcription of ComfyUI's ``sample_lcm`` on the same inputs and noise:
    3e-16 relative (float64, ``tests/test_new_methods.py``).
    """

    name = "lcm"
    order = 1
    nfe_per_step = 1
    kind = "sde"
    paper = "Song et al. 2023, Consistency Models; Luo et al. 2023, Latent Consistency Models"

    def __init__(self, s_noise: float = 1.0, s_noise_end: float | None = None, noise_clip_std: float = 0.0):
        self.s_noise = check_nonnegative("s_noise", s_noise)
        self.s_noise_end = self.s_noise if s_noise_end is None else check_nonnegative("s_noise_end", s_noise_end)
        self.noise_clip_std = check_nonnegative("noise_clip_std", noise_clip_std)

    @property
    def draws_noise(self) -> bool:
        return self.s_noise > 0 or self.s_noise_end > 0

    def coefficients(self, sigmas, i):
        n_steps = len(sigmas) - 1
        fraction = i / (n_steps - 1) if n_steps > 1 else 0.0
        scale = self.s_noise + (self.s_noise_end - self.s_noise) * fraction
        return dict(noise_std=sigmas[i + 1] * scale)

    def step(self, ctx, x, step):
        denoised = ctx.denoise(x, step.sigma)
        if step.to_zero or step.noise_std == 0.0:
            return denoised
        noise = ctx.noise(step.sigma, step.sigma_next)
        if self.noise_clip_std > 0:
            bound = self.noise_clip_std * noise.std()
            noise = torch.clamp(noise, min=-bound, max=bound)
        return torch.add(denoised, noise, alpha=step.noise_std)
