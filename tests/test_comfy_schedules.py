"""ComfyUI's scheduler names as ksampling schedules, against transcriptions of ComfyUI's
formulas (comfy/samplers.py, comfy_extras/nodes_gits.py) run in float64 on the same table."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ksampling import schedules
from ksampling.denoisers import VPDiscrete
from ksampling.gits_tables import LEVELS, PRESETS


class ModelSamplingDiscrete:
    """ComfyUI's ModelSamplingDiscrete (its ``sigmas``, ``timestep`` and ``sigma``), transcribed
    in float64."""

    def __init__(self, sigmas):
        self.sigmas = sigmas
        self.log_sigmas = sigmas.log()
        self.sigma_min, self.sigma_max = sigmas[0], sigmas[-1]

    def timestep(self, sigma):
        return (sigma.log() - self.log_sigmas[:, None]).abs().argmin(dim=0).view(sigma.shape)

    def sigma(self, timestep):
        t = torch.clamp(timestep.double(), min=0, max=len(self.log_sigmas) - 1)
        low, high = t.floor().long(), t.ceil().long()
        w = t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()


def comfy_simple(s, steps):
    ss = len(s.sigmas) / steps
    return [float(s.sigmas[-(1 + int(x * ss))]) for x in range(steps)] + [0.0]


def comfy_ddim(s, steps):
    x = 1
    if math.isclose(float(s.sigmas[x]), 0, abs_tol=0.00001):
        steps += 1
        sigs = []
    else:
        sigs = [0.0]
    ss = max(len(s.sigmas) // steps, 1)
    while x < len(s.sigmas):
        sigs += [float(s.sigmas[x])]
        x += ss
    return sigs[::-1]


def comfy_normal(s, steps, sgm=False):
    start, end = s.timestep(s.sigma_max), s.timestep(s.sigma_min)
    append_zero = True
    if sgm:
        timesteps = torch.linspace(float(start), float(end), steps + 1, dtype=torch.float64)[:-1]
    else:
        if math.isclose(float(s.sigma(end)), 0, abs_tol=0.00001):
            steps += 1
            append_zero = False
        timesteps = torch.linspace(float(start), float(end), steps, dtype=torch.float64)
    return [float(s.sigma(t)) for t in timesteps] + ([0.0] if append_zero else [])


def comfy_beta(s, steps, alpha=0.6, beta=0.6):
    scipy_stats = pytest.importorskip("scipy.stats")
    total = len(s.sigmas) - 1
    ts = np.rint(scipy_stats.beta.ppf(1 - np.linspace(0, 1, steps, endpoint=False), alpha, beta) * total)
    sigs, last = [], -1
    for t in ts:
        if t != last:
            sigs += [float(s.sigmas[int(t)])]
        last = t
    return sigs + [0.0]


def comfy_linear_quadratic(sigma_max, steps, threshold_noise=0.025, linear_steps=None):
    if steps == 1:
        schedule = [1.0, 0.0]
    else:
        linear_steps = steps // 2 if linear_steps is None else linear_steps
        linear = [i * threshold_noise / linear_steps for i in range(linear_steps)]
        diff = linear_steps - threshold_noise * steps
        quadratic_steps = steps - linear_steps
        quadratic_coef = diff / (linear_steps * quadratic_steps**2)
        linear_coef = threshold_noise / linear_steps - 2 * diff / (quadratic_steps**2)
        const = quadratic_coef * (linear_steps**2)
        quadratic = [quadratic_coef * (i**2) + linear_coef * i + const for i in range(linear_steps, steps)]
        schedule = [1.0 - x for x in linear + quadratic + [1.0]]
    return [x * sigma_max for x in schedule]


def comfy_kl_optimal(n, sigma_min, sigma_max):
    adj = torch.arange(n, dtype=torch.float64) / (n - 1)
    return (adj * math.atan(sigma_min) + (1 - adj) * math.atan(sigma_max)).tan().tolist() + [0.0]


def loglinear_interp(t_steps, num_steps):
    """GITS' (and ComfyUI's GITSScheduler's) loglinear_interp, transcribed."""
    xs = np.linspace(0, 1, len(t_steps))
    ys = np.log(t_steps[::-1])
    return np.exp(np.interp(np.linspace(0, 1, num_steps), xs, ys))[::-1].copy()


@pytest.fixture(scope="module")
def sd_table():
    # Stable Diffusion 1.x: scaled-linear betas 0.00085 … 0.012, T = 1000
    return VPDiscrete(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).sigmas.double()


def close(ours, expected, rtol=1e-12):
    expected = torch.tensor(expected, dtype=torch.float64)
    assert ours.dtype == torch.float64 and ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, rtol=rtol, atol=0)


@pytest.mark.parametrize("steps", [1, 4, 10, 33])
def test_table_schedulers_match_comfyui(sd_table, steps):
    s = ModelSamplingDiscrete(sd_table)
    close(schedules.simple(steps, sd_table), comfy_simple(s, steps))
    close(schedules.ddim_uniform(steps, sd_table), comfy_ddim(s, steps))
    close(schedules.normal(steps, sd_table), comfy_normal(s, steps))
    close(schedules.sgm_uniform(steps, sd_table), comfy_normal(s, steps, sgm=True))
    close(schedules.beta_discrete(steps, sd_table), comfy_beta(s, steps), rtol=0)
    close(schedules.beta_discrete(steps, sd_table, alpha=0.5, beta=0.7), comfy_beta(s, steps, 0.5, 0.7), rtol=0)


def test_tables_that_reach_zero_end_there_as_in_comfyui():
    table = torch.cat([torch.tensor([1e-7, 4e-6]), torch.linspace(0.01, 3.0, 98)]).double()
    s = ModelSamplingDiscrete(table)
    for steps in (3, 8):
        close(schedules.ddim_uniform(steps, table), comfy_ddim(s, steps))
        close(schedules.normal(steps, table), comfy_normal(s, steps))


@pytest.mark.parametrize("steps", [1, 2, 7, 20])
def test_closed_form_comfyui_schedulers(sd_table, steps):
    close(schedules.linear_quadratic(steps, 14.6), comfy_linear_quadratic(14.6, steps))
    close(schedules.linear_quadratic(steps, 1.0, threshold_noise=0.1), comfy_linear_quadratic(1.0, steps, 0.1))
    if steps > 1:
        close(schedules.kl_optimal(steps, 0.03, 14.6), comfy_kl_optimal(steps, 0.03, 14.6))


def test_comfyui_dispatch_names_every_scheduler(sd_table):
    assert schedules.COMFYUI_SCHEDULERS == (
        "simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal", "linear_quadratic", "kl_optimal"
    )
    s = ModelSamplingDiscrete(sd_table)
    process = VPDiscrete(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    for name in schedules.COMFYUI_SCHEDULERS:
        grid = schedules.comfyui(name, 8, process)
        assert grid[-1] == 0 and bool((grid[:-1] > grid[1:]).all()), name
        torch.testing.assert_close(grid, schedules.comfyui(name, 8, sd_table))
    close(schedules.comfyui("simple", 8, process), comfy_simple(s, 8))
    close(schedules.comfyui("karras", 8, process), schedules.karras(8, float(sd_table[0]), float(sd_table[-1])).tolist())
    with pytest.raises(ValueError, match="simple"):
        schedules.comfyui("ays", 8, process)


def test_laplace_matches_comfyui():
    n, sigma_min, sigma_max, mu, beta = 12, 0.02, 20.0, 0.3, 0.8
    u = torch.linspace(0, 1, n, dtype=torch.float64)
    lmb = mu - beta * torch.sign(0.5 - u) * torch.log(1 - 2 * torch.abs(0.5 - u) + 1e-5)
    expected = torch.clamp(torch.exp(lmb), min=sigma_min, max=sigma_max).tolist() + [0.0]
    close(schedules.laplace(n, sigma_min, sigma_max, mu=mu, beta=beta), expected)


@pytest.mark.parametrize("coeff", [0.80, 1.20, 1.50])
def test_gits_presets(coeff):
    rows = PRESETS[coeff]
    assert len(PRESETS) == 15 and len(rows) == 19
    for steps in (2, 10, 20):
        levels = [LEVELS[i] for i in rows[steps - 2]]
        assert len(levels) == steps + 1
        close(schedules.gits(steps, coeff), levels[:-1] + [0.0], rtol=0)
    # past 20 steps, ComfyUI interpolates the 20-step table log-linearly
    expected = loglinear_interp(np.array([LEVELS[i] for i in rows[-1]]), 31)
    expected[-1] = 0
    close(schedules.gits(30, coeff), expected.tolist(), rtol=1e-12)
    # the published grids start at SD 1.x's sigma_max and end at its sigma_min
    assert LEVELS[rows[8][0]] == 14.61464119 and LEVELS[rows[8][-1]] == 0.02916753
    with pytest.raises(ValueError, match="coeff"):
        schedules.gits(10, 0.82)
    with pytest.raises(ValueError, match="n must be >= 2"):
        schedules.gits(1, coeff)
