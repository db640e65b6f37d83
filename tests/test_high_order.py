"""The solvers beyond k-diffusion: parity with trusted implementations, short grids, host-side
coefficients, bad options.

References: the real k-diffusion's ``DPMSolver`` steps (singlestep DPM-Solver-1/2/3, noise
prediction), ``sample_dpmpp_2s_ancestral`` at eta = 0 (DPM-Solver++(2S)),
``sample_dpmpp_3m_sde`` at eta = 0 and ``sample_lms``; diffusers' ``UniPCMultistepScheduler``,
``DEISMultistepScheduler`` and ``DPMSolverMultistepScheduler`` run with their own model calls
on their own sigma grid.
"""

from __future__ import annotations

import math

import pytest
import torch

import ksampling
from helpers import HostSyncCounter, SmoothToy, TableNoise, karras_grid, start
from ksampling.samplers import get
from ksampling.samplers.common import lagrange_exp_weights, phi, step_orders
from ksampling.samplers.er_sde import _step_integrals, NOISE_SCALES
from reference import k_diffusion

F64 = torch.float64

#: Every solver of this module family, with option sets that exercise each code path.
CONFIGS = [
    ("dpm_solver", dict(order=1)),
    ("dpm_solver", dict(order=2)),
    ("dpm_solver", dict(order=3)),
    ("dpm_solver", dict(order=2, algorithm="noise", r1=0.4)),
    ("dpm_solver", dict(order=3, algorithm="noise", r1=0.25)),
    ("dpmpp_3m", dict()),
    ("dpmpp_3m", dict(lower_order_final=False, solver_type="midpoint", official_coefficients=True)),
    ("unipc", dict()),
    ("unipc", dict(order=3, variant="bh1", final_corrector=True)),
    ("unipc", dict(order=1, use_corrector=False, lower_order_final=False)),
    ("deis", dict()),
    ("deis", dict(order=2, variable="rho", lower_order_final=False)),
    ("deis", dict(prediction="data")),
    ("ipndm", dict()),
    ("ipndm_v", dict(max_order=3)),
    ("gradient_estimation", dict()),
    ("heun3", dict()),
    ("ralston3", dict()),
    ("res_multistep", dict()),
    ("er_sde", dict()),
    ("er_sde", dict(noise_scale="sde", max_stage=2)),
    ("er_sde", dict(noise_scale=lambda s: s * (1 + s))),
]
IDS = [f"{name}-{i}" for i, (name, _) in enumerate(CONFIGS)]


def toy(x, sigma):
    s = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
    return torch.tanh(x / (1 + s)) * (1 / (1 + 0.1 * s)) + 0.05 * torch.sin(3 * x) / (1 + s)


# -- host-side helpers ------------------------------------------------------------------------
def test_phi_functions_match_their_integrals():
    # φ_k(z) = ∫_0^1 e^{(1−θ)z} θ^{k−1}/(k−1)! dθ, by a fine Simpson rule
    def integral(k, z, n=4000):
        h = 1.0 / n
        f = [math.exp((1 - j * h) * z) * (j * h) ** (k - 1) / math.factorial(k - 1) for j in range(n + 1)]
        return h / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))

    for k in (1, 2, 3, 4):
        for z in (-30.0, -3.0, -1.0, -0.999, -0.3, -1e-6, 0.0, 1e-4, 0.7, 1.0, 2.5):
            assert phi(k, z) == pytest.approx(integral(k, z), rel=1e-10, abs=1e-14), (k, z)
    assert phi(1, -1e-9) == pytest.approx(1 - 0.5e-9, rel=1e-15)  # no cancellation near 0


def test_lagrange_weights_integrate_polynomials_exactly():
    nodes = [0.0, -0.7, -1.9, -3.2]
    for z in (-2.0, 0.0, 1.3):
        weights = lagrange_exp_weights(nodes, z)
        for degree in range(4):
            exact = math.factorial(degree) * phi(degree + 1, z)  # ∫ e^{z(1−θ)} θ^deg dθ
            assert sum(w * t**degree for w, t in zip(weights, nodes)) == pytest.approx(exact, rel=1e-11)


def test_step_orders_warm_up_and_lower_the_final_orders():
    assert step_orders(6, 3, False, 15) == [1, 2, 3, 3, 3, 3]
    assert step_orders(6, 3, True, 15) == [1, 2, 3, 3, 2, 1]
    assert step_orders(6, 3, True, 5) == [1, 2, 3, 3, 3, 3]  # 6 steps is not below 5
    assert step_orders(2, 3, True, math.inf) == [1, 1]


def test_er_sde_step_integrals():
    # φ = σ: S1 = log(σ/σ_next), S2 = (σ − σ_next) − σ log(σ/σ_next)... with sign (s − σ)
    sigma, sigma_next = 3.0, 0.2
    s1, s2 = _step_integrals(NOISE_SCALES["ode"], sigma, sigma_next)
    assert s1 == pytest.approx(math.log(sigma / sigma_next), rel=1e-13)
    assert s2 == pytest.approx((sigma - sigma_next) - sigma * math.log(sigma / sigma_next), rel=1e-12)
    scipy_integrate = pytest.importorskip("scipy.integrate")
    scale = NOISE_SCALES["default"]
    ref1 = scipy_integrate.quad(lambda s: 1 / scale(s), sigma_next, sigma, epsabs=0, epsrel=1e-13)[0]
    ref2 = scipy_integrate.quad(lambda s: (s - sigma) / scale(s), sigma_next, sigma, epsabs=0, epsrel=1e-13)[0]
    s1, s2 = _step_integrals(scale, sigma, sigma_next)
    assert s1 == pytest.approx(ref1, rel=1e-11) and s2 == pytest.approx(ref2, rel=1e-11)


# -- parity with k-diffusion ------------------------------------------------------------------
GRIDS = {
    "to_zero": lambda: karras_grid(7, 0.05, 20.0),
    "to_sigma_min": lambda: karras_grid(7, 0.05, 20.0, append_zero=False),
}


@pytest.mark.parametrize("grid", list(GRIDS))
@pytest.mark.parametrize("order", [1, 2, 3])
def test_dpm_solver_noise_matches_k_diffusion_dpm_solver_steps(order, grid):
    K = k_diffusion()
    sigmas, x = GRIDS[grid](), start()
    solver = K.sampling.DPMSolver(toy)
    ref = x.clone()
    for i in range(len(sigmas) - 1):
        if sigmas[i + 1] == 0:  # k-diffusion's steps need h < ∞; the step to 0 is x <- D
            ref = toy(ref, sigmas[i].expand(x.shape[0]))
            continue
        t, t_next = solver.t(sigmas[i]), solver.t(sigmas[i + 1])
        ref = getattr(solver, f"dpm_solver_{order}_step")(ref, t, t_next)[0]
    ours, run = ksampling.sample(toy, x.clone(), sigmas, "dpm_solver", order=order, algorithm="noise", return_info=True)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    n = len(sigmas) - 1
    assert run.nfe == (n - 1) * order + 1 if grid == "to_zero" else n * order


@pytest.mark.parametrize("grid", list(GRIDS))
def test_dpm_solver_data_order_2_is_k_diffusion_dpmpp_2s_at_eta_0(grid):
    K = k_diffusion()
    sigmas, x = GRIDS[grid](), start()
    ref = K.sampling.sample_dpmpp_2s_ancestral(toy, x.clone(), sigmas, eta=0.0, disable=True)
    ours = ksampling.sample(toy, x.clone(), sigmas, "dpm_solver", order=2)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("grid", list(GRIDS))
def test_dpmpp_3m_official_coefficients_is_k_diffusion_dpmpp_3m_sde_at_eta_0(grid):
    K = k_diffusion()
    sigmas, x = GRIDS[grid](), start()
    ref = K.sampling.sample_dpmpp_3m_sde(toy, x.clone(), sigmas, eta=0.0, disable=True)
    ours = ksampling.sample(toy, x.clone(), sigmas, "dpmpp_3m", official_coefficients=True, lower_order_final=False)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    # the exact third-order term differs from the reference code's
    exact = ksampling.sample(toy, x.clone(), sigmas, "dpmpp_3m", lower_order_final=False)
    assert (exact - ref).abs().max() > 1e-6


@pytest.mark.parametrize("grid", list(GRIDS))
def test_lms_is_k_diffusion_lms(grid):
    # (ipndm_v is the published variable-step iPNDM since issue 11: tests/test_new_methods.py)
    K = k_diffusion()
    sigmas, x = GRIDS[grid](), start()
    ref = K.sampling.sample_lms(toy, x.clone(), sigmas, order=4, disable=True)
    ours = ksampling.sample(toy, x.clone(), sigmas, "lms", order=4)
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-10)


# -- parity with diffusers ----------------------------------------------------------------------
def _run_diffusers(scheduler, model, x_ve):
    """Sample with a diffusers scheduler on its own grid: it works on x_vp = x / sqrt(1 + σ²)
    and is told the model predicts x0 (prediction_type="sample"), which is D."""
    sigmas = scheduler.sigmas
    x = x_ve / torch.sqrt(1 + sigmas[0] ** 2)
    for i, t in enumerate(scheduler.timesteps):
        sigma = sigmas[i]
        denoised = model(x * torch.sqrt(1 + sigma**2), sigma.expand(x.shape[0]))
        x = scheduler.step(denoised, t, x).prev_sample
    return x * torch.sqrt(1 + sigmas[-1] ** 2)


DIFFUSERS_CASES = [
    # (scheduler, its config, our solver, our options, relative tolerance)
    ("UniPCMultistepScheduler", dict(solver_order=2, solver_type="bh2"), "unipc", dict(order=2, variant="bh2"), 1e-12),
    ("UniPCMultistepScheduler", dict(solver_order=3, solver_type="bh2"), "unipc", dict(order=3, variant="bh2"), 1e-12),
    # diffusers' bh1 returns NaN on a step to σ = 0 (B(h) = −h = −∞), so end at σ_min
    (
        "UniPCMultistepScheduler",
        dict(solver_order=3, solver_type="bh1", final_sigmas_type="sigma_min"),
        "unipc",
        dict(order=3, variant="bh1"),
        1e-12,
    ),
    (
        "UniPCMultistepScheduler",
        dict(solver_order=2, solver_type="bh1", final_sigmas_type="sigma_min", lower_order_final=False),
        "unipc",
        dict(order=2, variant="bh1", lower_order_final=False),
        1e-12,
    ),
    ("DEISMultistepScheduler", dict(solver_order=3), "deis", dict(order=3, lower_order_final_below=15), 1e-12),
    ("DEISMultistepScheduler", dict(solver_order=2), "deis", dict(order=2, lower_order_final_below=15), 1e-12),
    # DPMSolverMultistepScheduler upcasts the sample to float32 inside step(): 1e-6
    (
        "DPMSolverMultistepScheduler",
        dict(solver_order=3),
        "dpmpp_3m",
        dict(official_coefficients=True, solver_type="midpoint", lower_order_final_below=15),
        1e-6,
    ),
    (
        "DPMSolverMultistepScheduler",
        dict(solver_order=3, solver_type="heun", final_sigmas_type="sigma_min"),
        "dpmpp_3m",
        dict(official_coefficients=True, solver_type="heun", lower_order_final_below=15),
        1e-6,
    ),
]


@pytest.mark.parametrize("steps", [8, 16])
@pytest.mark.parametrize("case", range(len(DIFFUSERS_CASES)))
def test_parity_with_diffusers(case, steps):
    diffusers = pytest.importorskip("diffusers")
    scheduler_name, config, solver, options, rtol = DIFFUSERS_CASES[case]
    scheduler = getattr(diffusers, scheduler_name)(num_train_timesteps=1000, prediction_type="sample", **config)
    scheduler.set_timesteps(steps)
    scheduler.sigmas = scheduler.sigmas.to(F64)  # let it compute its coefficients in float64
    sigmas = scheduler.sigmas.clone()
    x = start(3, 2, seed=3) / 10 * sigmas[0]
    ref = _run_diffusers(scheduler, toy, x.clone())
    ours = ksampling.sample(toy, x.clone(), sigmas, solver, **options)
    assert ((ours - ref).abs().max() / ref.abs().max()).item() < rtol


# -- cross-checks against the lead's solvers (independent code) ------------------------------
@pytest.mark.parametrize("grid", list(GRIDS))
def test_first_order_members_are_ddim(grid):
    sigmas, x = GRIDS[grid](), start()
    ddim = ksampling.sample(toy, x.clone(), sigmas, "euler")
    for name, options in [
        ("dpm_solver", dict(order=1)),
        ("dpm_solver", dict(order=1, algorithm="noise")),
        ("unipc", dict(order=1, use_corrector=False)),
        ("deis", dict(order=1)),
        ("deis", dict(order=1, variable="rho")),
        ("ipndm", dict(max_order=1)),
        ("ipndm_v", dict(max_order=1)),
        ("gradient_estimation", dict(ge_gamma=1.0)),
        ("er_sde", dict(noise_scale="ode", max_stage=1)),
    ]:
        torch.testing.assert_close(ksampling.sample(toy, x.clone(), sigmas, name, **options), ddim, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("grid", list(GRIDS))
def test_lagrange_and_divided_difference_forms_agree(grid):
    """DEIS with data prediction integrates the Lagrange interpolant of D exactly (generic
    helper); dpmpp_3m and res_multistep write the same integrals with divided differences."""
    sigmas, x = GRIDS[grid](), start()
    deis3 = ksampling.sample(toy, x.clone(), sigmas, "deis", prediction="data", lower_order_final=False)
    dpmpp3m = ksampling.sample(toy, x.clone(), sigmas, "dpmpp_3m", lower_order_final=False)
    torch.testing.assert_close(deis3, dpmpp3m, rtol=1e-11, atol=1e-11)
    deis2 = ksampling.sample(toy, x.clone(), sigmas, "deis", order=2, prediction="data", lower_order_final=False)
    res = ksampling.sample(toy, x.clone(), sigmas, "res_multistep")
    torch.testing.assert_close(deis2, res, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("grid", list(GRIDS))
def test_er_sde_reverse_sde_first_stage_is_ddpm(grid):
    # φ(σ) = σ²: r = σ_next²/σ², noise std² = σ_next²(σ² − σ_next²)/σ², DDPM's posterior
    sigmas, x = GRIDS[grid](), start()
    ours = ksampling.sample(toy, x.clone(), sigmas, "er_sde", noise_scale="sde", max_stage=1, noise_sampler=TableNoise(x.shape, 5))
    ref = ksampling.sample(toy, x.clone(), sigmas, "ddpm", variance="small", noise_sampler=TableNoise(x.shape, 5))
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


def test_heun3_and_ralston3_take_their_tableau_step():
    # one step of dx/dσ = (x − D)/σ written out from Heun's and Ralston's third-order tableaus
    x, sigma, sigma_next = start(1, 2), 2.0, 0.5
    def f(x, s):
        return (x - toy(x, torch.tensor([s], dtype=F64))) / s
    dt = sigma_next - sigma
    k1 = f(x, sigma)
    k2 = f(x + dt / 3 * k1, sigma + dt / 3)
    k3 = f(x + 2 * dt / 3 * k2, sigma + 2 * dt / 3)
    heun3 = x + dt * (k1 / 4 + 3 * k3 / 4)
    k2 = f(x + dt / 2 * k1, sigma + dt / 2)
    k3 = f(x + 3 * dt / 4 * k2, sigma + 3 * dt / 4)
    ralston3 = x + dt * (2 * k1 / 9 + k2 / 3 + 4 * k3 / 9)
    grid = torch.tensor([sigma, sigma_next], dtype=F64)
    torch.testing.assert_close(ksampling.sample(toy, x.clone(), grid, "heun3"), heun3, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(ksampling.sample(toy, x.clone(), grid, "ralston3"), ralston3, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("grid", list(GRIDS))
def test_gradient_estimation_at_gamma_3_2_is_fixed_step_adams_bashforth_2(grid):
    # d̄ = 3/2 d_i − 1/2 d_{i−1}: ipndm with max_order=2, except that ipndm's step to 0 is Euler
    sigmas, x = GRIDS[grid](), start()
    ours = ksampling.sample(toy, x.clone(), sigmas, "gradient_estimation", ge_gamma=1.5)
    ref = ksampling.sample(toy, x.clone(), sigmas, "ipndm", max_order=2)
    if grid == "to_zero":
        assert (ours - ref).abs().max() > 1e-6
        sigmas = sigmas[:-1]
        ours = ksampling.sample(toy, x.clone(), sigmas, "gradient_estimation", ge_gamma=1.5)
        ref = ksampling.sample(toy, x.clone(), sigmas, "ipndm", max_order=2)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


def test_unipc_corrector_options():
    sigmas, x = karras_grid(6, 0.05, 20.0, append_zero=False), start()
    plain, info_plain = ksampling.sample(toy, x.clone(), sigmas, "unipc", return_info=True)
    final, info_final = ksampling.sample(toy, x.clone(), sigmas, "unipc", final_corrector=True, return_info=True)
    unip = ksampling.sample(toy, x.clone(), sigmas, "unipc", use_corrector=False)
    assert info_final.nfe == info_plain.nfe + 1 == len(sigmas)
    assert (final - plain).abs().max() > 0 and (unip - plain).abs().max() > 0


# -- contract -----------------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [1, 2, 3])
@pytest.mark.parametrize("to_zero", [True, False])
@pytest.mark.parametrize("config", range(len(CONFIGS)), ids=IDS)
def test_short_grids(config, steps, to_zero):
    name, options = CONFIGS[config]
    grid = karras_grid(steps, 0.1, 10.0) if to_zero else karras_grid(steps + 1, 0.1, 10.0, append_zero=False)
    x = start()
    out, run = ksampling.sample(
        SmoothToy(), x, grid, name, generator=torch.Generator().manual_seed(1), return_info=True, **options
    )
    assert out.shape == x.shape and out.dtype == x.dtype and torch.isfinite(out).all()
    assert 1 <= run.nfe <= steps * get(name).nfe_per_step + 1


@pytest.mark.parametrize("config", range(len(CONFIGS)), ids=IDS)
def test_no_host_sync_inside_the_loop(config):
    """Tensor-to-host conversions do not grow with the number of steps (the one transfer of
    the sigmas and the one finiteness check happen outside the loop)."""
    name, options = CONFIGS[config]
    counts = []
    for n in (4, 12):
        with HostSyncCounter() as counter:
            ksampling.sample(
                SmoothToy(), start(), karras_grid(n, 0.05, 10.0), name, generator=torch.Generator().manual_seed(1), **options
            )
        counts.append((counter.count, counter.names))
    assert counts[0][0] == counts[1][0], f"per-step host conversions: {counts[1][1]}"


@pytest.mark.parametrize("config", range(len(CONFIGS)), ids=IDS)
def test_float32_state_stays_float32(config):
    name, options = CONFIGS[config]
    x = start().to(torch.float32)
    out = ksampling.sample(toy, x, karras_grid(5, 0.1, 10.0), name, generator=torch.Generator().manual_seed(0), **options)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


BAD_OPTIONS = [
    ("dpm_solver", dict(order=4), ValueError, "order"),
    ("dpm_solver", dict(order=2.0), TypeError, "order"),
    ("dpm_solver", dict(algorithm="eps"), ValueError, "algorithm"),
    ("dpm_solver", dict(r1=1.5), ValueError, "r1"),
    ("dpm_solver", dict(r2=0.0), ValueError, "r2"),
    ("dpm_solver", dict(order=3, r1=0.7), ValueError, "r1"),
    ("dpm_solver", dict(order=3, r2=0.8), ValueError, "r2"),
    ("dpmpp_3m", dict(lower_order_final="yes"), TypeError, "lower_order_final"),
    ("dpmpp_3m", dict(lower_order_final_below=0), ValueError, "lower_order_final_below"),
    ("dpmpp_3m", dict(solver_type="rk"), ValueError, "solver_type"),
    ("dpmpp_3m", dict(official_coefficients=1), TypeError, "official_coefficients"),
    ("unipc", dict(order=0), ValueError, "order"),
    ("unipc", dict(variant="bh3"), ValueError, "variant"),
    ("unipc", dict(use_corrector=None), TypeError, "use_corrector"),
    ("unipc", dict(final_corrector="no"), TypeError, "final_corrector"),
    ("deis", dict(order=4), ValueError, "order"),
    ("deis", dict(variable="t"), ValueError, "variable"),
    ("deis", dict(prediction="v"), ValueError, "prediction"),
    ("deis", dict(prediction="data", variable="rho"), ValueError, "prediction"),
    ("ipndm", dict(max_order=5), ValueError, "max_order"),
    ("ipndm_v", dict(max_order=0), ValueError, "max_order"),
    ("gradient_estimation", dict(ge_gamma=-1.0), ValueError, "ge_gamma"),
    ("er_sde", dict(noise_scale="vp"), ValueError, "noise_scale"),
    ("er_sde", dict(noise_scale=3.0), TypeError, "noise_scale"),
    ("er_sde", dict(max_stage=4), ValueError, "max_stage"),
    ("er_sde", dict(s_noise=-1.0), ValueError, "s_noise"),
    ("heun3", dict(order=2), TypeError, "order"),
]


@pytest.mark.parametrize("name,options,error,word", BAD_OPTIONS)
def test_bad_options_name_the_option(name, options, error, word):
    with pytest.raises(error, match=word):
        ksampling.sample(toy, start(), karras_grid(3, 0.1, 10.0), name, **options)


@pytest.mark.parametrize("grid", list(GRIDS))
def test_er_sde_matches_the_algorithm_written_out(grid):
    """ER-SDE-Solver-3 written out from Cui et al. 2023 (VE, as ComfyUI's sample_er_sde) with
    scipy quadrature for the step integrals, on the same noise."""
    scipy_integrate = pytest.importorskip("scipy.integrate")
    sigmas, x = GRIDS[grid](), start()
    s = sigmas.tolist()

    def scale(v):
        return v * (math.exp(v**0.3) + 10.0)

    noise = TableNoise(x.shape, 5)
    ref, old_denoised, old_d = x.clone(), None, None
    for i in range(len(s) - 1):
        denoised = toy(ref, sigmas[i].expand(x.shape[0]))
        if s[i + 1] == 0:
            ref = denoised
            break
        stage = min(3, i + 1)
        r = scale(s[i + 1]) / scale(s[i])
        dt = s[i + 1] - s[i]
        ref = r * ref + (1 - r) * denoised
        if stage >= 2:
            s1 = scipy_integrate.quad(lambda v: 1 / scale(v), s[i + 1], s[i], epsabs=0, epsrel=1e-13)[0]
            d = (denoised - old_denoised) / (s[i] - s[i - 1])
            ref = ref + (dt + s1 * scale(s[i + 1])) * d
            if stage >= 3:
                s2 = scipy_integrate.quad(lambda v: (v - s[i]) / scale(v), s[i + 1], s[i], epsabs=0, epsrel=1e-13)[0]
                u = (d - old_d) / ((s[i] - s[i - 2]) / 2)
                ref = ref + (dt**2 / 2 + s2 * scale(s[i + 1])) * u
            old_d = d
        ref = ref + noise(s[i], s[i + 1]) * math.sqrt(s[i + 1] ** 2 - s[i] ** 2 * r**2)
        old_denoised = denoised
    ours = ksampling.sample(toy, x.clone(), sigmas, "er_sde", noise_sampler=TableNoise(x.shape, 5))
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


def test_er_sde_rejects_a_bad_noise_scale_function():
    with pytest.raises(ValueError, match="noise_scale"):
        ksampling.sample(toy, start(), karras_grid(3, 0.1, 10.0), "er_sde", noise_scale=lambda s: -s)


def test_er_sde_is_reproducible_and_its_noise_matters():
    sigmas, x = karras_grid(8, 0.05, 20.0), start()
    a = ksampling.sample(toy, x.clone(), sigmas, "er_sde", generator=torch.Generator().manual_seed(7))
    b = ksampling.sample(toy, x.clone(), sigmas, "er_sde", generator=torch.Generator().manual_seed(7))
    c = ksampling.sample(toy, x.clone(), sigmas, "er_sde", generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().max() > 1e-3
    # without noise nothing is drawn (the loop raises if a deterministic solver draws)
    ksampling.sample(toy, x.clone(), sigmas, "er_sde", s_noise=0.0)
