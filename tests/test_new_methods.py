"""The solvers added for ComfyUI fidelity (issue 11): CFG++, res_multistep_ancestral, heunpp2,
lcm, the published ipndm_v, SEEDS, SA-Solver and Restart.

Each ``comfy_*`` function below is a short transcription, written for these tests from the
formulas of ComfyUI's ``comfy/k_diffusion/sampling.py`` (VE / ε-model branch, where α = 1),
run on the same model and the same noise as ksampling: parity to 1e-6 relative in float64
(the numbers come out at ~1e-15).
"""

from __future__ import annotations

import math

import pytest
import torch

import ksampling
from helpers import TableNoise as ListNoise, karras_grid, start  # shared start and pre-drawn noise
from test_high_order import toy  # the toy denoiser of the solver tests
from ksampling.denoisers import ClassifierFreeGuidance

F64 = torch.float64
PARITY = dict(rtol=1e-6, atol=1e-9)


# -- shared test tools ---------------------------------------------------------------------------
def conditional_toy(x, sigma, cond):
    """A smooth conditional denoiser: the condition shifts and scales its output."""
    s = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
    c = cond.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
    return torch.tanh((x + c) / (1 + s)) * (1 / (1 + 0.1 * s)) + 0.3 * c * torch.sin(x) / (1 + s)


def guided_model(scale=0.7):
    return ClassifierFreeGuidance(conditional_toy, scale=scale)


def extra(batch=2):
    return dict(cond=torch.full((batch,), 0.8, dtype=F64), uncond=torch.zeros(batch, dtype=F64))


GRIDS = {
    "to_zero": lambda: karras_grid(10, 0.03, 14.6),
    "no_zero": lambda: karras_grid(9, 0.05, 14.6, append_zero=False),
}


def ancestral(sigma, sigma_next, eta):
    if not eta:
        return sigma_next, 0.0
    up = min(sigma_next, eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5)
    return (sigma_next**2 - up**2) ** 0.5, up


def both(model, x, sigma, extra_args):
    return model.denoise_with_uncond(x, torch.full((x.shape[0],), sigma, dtype=F64), **extra_args)


# -- ComfyUI transcriptions (VE branch) ------------------------------------------------------------
def comfy_euler_ancestral_cfg_pp(model, x, sigmas, extra_args, noise, eta=1.0, s_noise=1.0):
    sig = sigmas.tolist()
    for i in range(len(sig) - 1):
        denoised, uncond = both(model, x, sig[i], extra_args)
        if sig[i + 1] == 0:
            x = denoised
            continue
        d = (x - uncond) / sig[i]
        sigma_down, sigma_up = ancestral(sig[i], sig[i + 1], eta)
        x = denoised + sigma_down * d
        if eta > 0 and s_noise > 0:
            x = x + noise(sig[i], sig[i + 1]) * s_noise * sigma_up
    return x


def comfy_dpmpp_2s_ancestral_cfg_pp(model, x, sigmas, extra_args, noise, eta=1.0, s_noise=1.0):
    sig = sigmas.tolist()
    for i in range(len(sig) - 1):
        denoised, uncond = both(model, x, sig[i], extra_args)
        guidance = denoised - uncond
        sigma_down, sigma_up = ancestral(sig[i], sig[i + 1], eta)
        if sigma_down == 0:
            x = x + (x - uncond) / sig[i] * (sigma_down - sig[i])
        else:
            t, t_next = -math.log(sig[i]), -math.log(sigma_down)
            h = t_next - t
            s = t + h / 2
            x_2 = (math.exp(-s) / math.exp(-t)) * x - math.expm1(-h / 2) * uncond
            _, uncond_2 = both(model, x_2, math.exp(-s), extra_args)
            x = (math.exp(-t_next) / math.exp(-t)) * x - math.expm1(-h) * uncond_2
        if sig[i + 1] > 0:
            x = x + noise(sig[i], sig[i + 1]) * s_noise * sigma_up
        x = x + guidance
    return x


def comfy_dpmpp_2m_cfg_pp(model, x, sigmas, extra_args):
    sig = sigmas.tolist()
    old_uncond = None
    for i in range(len(sig) - 1):
        denoised, uncond = both(model, x, sig[i], extra_args)
        t = -math.log(sig[i])
        h = math.inf if sig[i + 1] == 0 else -math.log(sig[i + 1]) - t
        if old_uncond is None or sig[i + 1] == 0:
            mix = -math.exp(-h) * uncond
        else:
            r = (t + math.log(sig[i - 1])) / h
            mix = -math.exp(-h) * uncond - math.expm1(-h) * (1 / (2 * r)) * (denoised - old_uncond)
        x = denoised + mix + math.exp(-h) * x
        old_uncond = uncond
    return x


def comfy_res_multistep(model, x, sigmas, extra_args, noise, eta=0.0, s_noise=1.0, cfg_pp=False):
    sig = sigmas.tolist()
    phi1 = lambda t: math.expm1(t) / t  # noqa: E731
    phi2 = lambda t: (phi1(t) - 1.0) / t  # noqa: E731
    lam = lambda s: -math.log(s)  # noqa: E731
    old_sigma_down = old_denoised = None
    for i in range(len(sig) - 1):
        if cfg_pp:
            denoised, uncond = both(model, x, sig[i], extra_args)
        else:
            denoised = model(x, torch.full((x.shape[0],), sig[i], dtype=F64), **extra_args)
        sigma_down, sigma_up = ancestral(sig[i], sig[i + 1], eta)
        if sigma_down == 0 or old_denoised is None:
            if cfg_pp:
                x = denoised + (x - uncond) / sig[i] * sigma_down
            else:
                x = x + (x - denoised) / sig[i] * (sigma_down - sig[i])
        else:
            h = lam(sigma_down) - lam(sig[i])
            c2 = (lam(sig[i - 1]) - lam(old_sigma_down)) / h
            b1, b2 = phi1(-h) - phi2(-h) / c2, phi2(-h) / c2
            if cfg_pp:
                x = x + (denoised - uncond)
                x = math.exp(-h) * x + h * (b1 * uncond + b2 * old_denoised)
            else:
                x = math.exp(-h) * x + h * (b1 * denoised + b2 * old_denoised)
        if sig[i + 1] > 0 and sigma_up > 0:  # ComfyUI draws (and multiplies by 0) when sigma_up = 0
            x = x + noise(sig[i], sig[i + 1]) * s_noise * sigma_up
        old_denoised = uncond if cfg_pp else denoised
        old_sigma_down = sigma_down
    return x


def comfy_gradient_estimation_cfg_pp(model, x, sigmas, extra_args, ge_gamma=2.0):
    sig = sigmas.tolist()
    old_d = None
    for i in range(len(sig) - 1):
        denoised, uncond = both(model, x, sig[i], extra_args)
        d = (x - uncond) / sig[i]
        dt = sig[i + 1] - sig[i]
        if sig[i + 1] == 0:
            x = denoised
        else:
            x = denoised + d * sig[i + 1]
            if i >= 1:
                x = x + (ge_gamma - 1) * (d - old_d) * dt
        old_d = d
    return x


# -- CFG++ -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("grid", list(GRIDS))
@pytest.mark.parametrize(
    "name, options",
    [
        ("euler_cfg_pp", {}),
        ("euler_ancestral_cfg_pp", {}),
        ("euler_ancestral_cfg_pp", dict(eta=0.6, s_noise=0.9)),
        ("dpmpp_2s_ancestral_cfg_pp", {}),
        ("dpmpp_2s_ancestral_cfg_pp", dict(eta=0.0)),
        ("dpmpp_2m_cfg_pp", {}),
        ("res_multistep_cfg_pp", {}),
        ("res_multistep_ancestral_cfg_pp", {}),
        ("res_multistep_ancestral_cfg_pp", dict(eta=0.5, s_noise=1.1)),
        ("gradient_estimation_cfg_pp", {}),
        ("gradient_estimation_cfg_pp", dict(ge_gamma=1.5)),
    ],
)
def test_cfg_pp_matches_comfyui(name, options, grid):
    sigmas, x, model, args = GRIDS[grid](), start(), guided_model(), extra()
    ours, info = ksampling.sample(
        model, x.clone(), sigmas, name, extra_args=args, noise_sampler=ListNoise(x.shape), return_info=True, **options
    )
    noise = ListNoise(x.shape)
    if name == "euler_cfg_pp":
        ref = comfy_euler_ancestral_cfg_pp(model, x.clone(), sigmas, args, noise, eta=0.0, s_noise=0.0)
    elif name == "euler_ancestral_cfg_pp":
        ref = comfy_euler_ancestral_cfg_pp(model, x.clone(), sigmas, args, noise, **options)
    elif name == "dpmpp_2s_ancestral_cfg_pp":
        ref = comfy_dpmpp_2s_ancestral_cfg_pp(model, x.clone(), sigmas, args, noise, **options)
    elif name == "dpmpp_2m_cfg_pp":
        ref = comfy_dpmpp_2m_cfg_pp(model, x.clone(), sigmas, args)
    elif name == "res_multistep_cfg_pp":
        ref = comfy_res_multistep(model, x.clone(), sigmas, args, noise, eta=0.0, cfg_pp=True)
    elif name == "res_multistep_ancestral_cfg_pp":
        ref = comfy_res_multistep(model, x.clone(), sigmas, args, noise, cfg_pp=True, **{"eta": 1.0, **options})
    else:
        ref = comfy_gradient_estimation_cfg_pp(model, x.clone(), sigmas, args, **options)
    torch.testing.assert_close(ours, ref, **PARITY)
    # guidance changes the result, and one call gives both outputs: NFE as the base solver
    plain = ksampling.sample(model, x.clone(), sigmas, name.replace("_cfg_pp", ""), extra_args=args,
                             noise_sampler=ListNoise(x.shape), **options)
    assert (plain - ours).abs().max() > 1e-3
    steps = len(sigmas) - 1
    per_step = ksampling.samplers.info(name)["nfe_per_step"]
    assert info.nfe <= steps * per_step


class SameOutputs:
    """A model whose unconditional output is its guided one (guidance switched off)."""

    def __call__(self, x, sigma):
        return toy(x, sigma)

    def denoise_with_uncond(self, x, sigma):
        out = toy(x, sigma)
        return out, out


@pytest.mark.parametrize("name", ["euler", "euler_ancestral", "dpmpp_2s_ancestral", "dpmpp_2m", "res_multistep",
                                  "res_multistep_ancestral", "gradient_estimation"])
def test_cfg_pp_without_guidance_is_its_base_solver(name):
    sigmas, x = karras_grid(8, 0.05, 14.6, append_zero=False), start()
    base = ksampling.sample(toy, x.clone(), sigmas, name, noise_sampler=ListNoise(x.shape))
    cfg_pp = ksampling.sample(SameOutputs(), x.clone(), sigmas, name + "_cfg_pp", noise_sampler=ListNoise(x.shape))
    torch.testing.assert_close(cfg_pp, base, rtol=1e-12, atol=1e-12)


def test_cfg_pp_euler_is_cfg_euler_at_the_equivalent_scale():
    """CFG++ DDIM with λ equals CFG Euler with ω_i = λ σ_i/(σ_i − σ_{i+1}) (one step, exact)."""
    x, sigma, sigma_next, lam = start(), 3.0, 1.2, 0.6
    grid = torch.tensor([sigma, sigma_next], dtype=F64)
    ours = ksampling.sample(guided_model(lam), x.clone(), grid, "euler_cfg_pp", extra_args=extra())
    omega = lam * sigma / (sigma - sigma_next)
    cfg = ksampling.sample(guided_model(omega), x.clone(), grid, "euler", extra_args=extra())
    torch.testing.assert_close(ours, cfg, rtol=1e-12, atol=1e-12)


def test_cfg_pp_needs_a_guidance_model():
    with pytest.raises(TypeError, match="guidance"):
        ksampling.sample(toy, start(), karras_grid(3, 0.1, 10.0), "euler_cfg_pp")
    assert ksampling.samplers.info("euler_cfg_pp")["needs_uncond"]
    assert not ksampling.samplers.info("euler")["needs_uncond"]


def test_guidance_wrapper_exposes_the_unconditional_output():
    x, sigma = start(), torch.full((2,), 1.5, dtype=F64)
    args = extra()
    for scale in (1.0, 0.4):
        guided, uncond = guided_model(scale).denoise_with_uncond(x, sigma, **args)
        cond_out = conditional_toy(x, sigma, args["cond"])
        uncond_out = conditional_toy(x, sigma, args["uncond"])
        torch.testing.assert_close(uncond, uncond_out, rtol=1e-14, atol=1e-14)
        torch.testing.assert_close(guided, uncond_out + scale * (cond_out - uncond_out), rtol=1e-14, atol=1e-14)
        torch.testing.assert_close(guided, guided_model(scale)(x, sigma, **args), rtol=1e-14, atol=1e-14)


def test_cfg_pp_callback_gets_the_guided_output():
    seen = []
    model, x, args = guided_model(), start(), extra()
    sigmas = karras_grid(3, 0.1, 10.0)
    ksampling.sample(model, x.clone(), sigmas, "euler_cfg_pp", extra_args=args, callback=seen.append)
    assert len(seen) == 3
    expected = model(x, torch.full((2,), float(sigmas[0]), dtype=F64), **args)
    torch.testing.assert_close(seen[0]["denoised"], expected, rtol=1e-14, atol=1e-14)


# -- res_multistep_ancestral ----------------------------------------------------------------------
@pytest.mark.parametrize("grid", list(GRIDS))
@pytest.mark.parametrize("options", [{}, dict(eta=0.5, s_noise=0.8), dict(eta=0.0)])
def test_res_multistep_ancestral_matches_comfyui(options, grid):
    sigmas, x = GRIDS[grid](), start()
    ours = ksampling.sample(toy, x.clone(), sigmas, "res_multistep_ancestral", noise_sampler=ListNoise(x.shape), **options)
    ref = comfy_res_multistep(toy, x.clone(), sigmas, {}, ListNoise(x.shape), **{"eta": 1.0, **options})
    torch.testing.assert_close(ours, ref, **PARITY)


def test_res_multistep_is_comfyui_res_multistep():
    sigmas, x = GRIDS["to_zero"](), start()
    ours = ksampling.sample(toy, x.clone(), sigmas, "res_multistep")
    torch.testing.assert_close(ours, comfy_res_multistep(toy, x.clone(), sigmas, {}, None), **PARITY)
    eta0 = ksampling.sample(toy, x.clone(), sigmas, "res_multistep_ancestral", eta=0.0)
    torch.testing.assert_close(eta0, ours, rtol=1e-14, atol=1e-14)


# -- ipndm_v: the published variable-step iPNDM ---------------------------------------------------
def comfy_ipndm_v(model, x, sigmas, max_order=4):
    t = sigmas.tolist()
    buffer = []
    for i in range(len(t) - 1):
        denoised = model(x, torch.full((x.shape[0],), t[i], dtype=F64))
        d = (x - denoised) / t[i]
        order = min(max_order, i + 1)
        h = t[i + 1] - t[i]
        if t[i + 1] == 0:
            x_next = denoised
        elif order == 1:
            x_next = x + h * d
        else:
            h1 = t[i] - t[i - 1]
            c1, c2 = (2 + h / h1) / 2, -(h / h1) / 2
            c3 = c4 = 0.0
            if order >= 3:
                h2 = t[i - 1] - t[i - 2]
                temp1 = (1 - h / (3 * (h + h1)) * (h * (h + h1)) / (h1 * (h1 + h2))) / 2
                c1, c2, c3 = c1 + temp1, c2 - (1 + h1 / h2) * temp1, temp1 * h1 / h2
            if order == 4:
                h3 = t[i - 2] - t[i - 3]
                temp2 = ((1 - h / (3 * (h + h1))) / 2 + (1 - h / (2 * (h + h1))) * h / (6 * (h + h1 + h2))) * (
                    h * (h + h1) * (h + h1 + h2)) / (h1 * (h1 + h2) * (h1 + h2 + h3))
                q = h1 * (h1 + h2) / (h2 * (h2 + h3))
                c1 += temp2
                c2 -= (1 + h1 / h2 + q) * temp2
                c3 += (h1 / h2 + q * (1 + h2 / h3)) * temp2
                c4 = -temp2 * q * h1 / h2
            x_next = x + h * (c1 * d + c2 * buffer[-1] + (c3 * buffer[-2] if c3 else 0) + (c4 * buffer[-3] if c4 else 0))
        buffer = (buffer + [d])[-(max_order - 1):] if max_order > 1 else []
        x = x_next
    return x


@pytest.mark.parametrize("grid", list(GRIDS))
@pytest.mark.parametrize("max_order", [4, 3, 2])
def test_ipndm_v_matches_comfyui(grid, max_order):
    sigmas, x = GRIDS[grid](), start()
    ours = ksampling.sample(toy, x.clone(), sigmas, "ipndm_v", max_order=max_order)
    torch.testing.assert_close(ours, comfy_ipndm_v(toy, x.clone(), sigmas, max_order), **PARITY)


def test_ipndm_v_is_not_lms_and_ipndm_v_2_is_exact_adams_bashforth_2():
    sigmas, x = karras_grid(10, 0.03, 14.6), start()
    ipndm_v = ksampling.sample(toy, x.clone(), sigmas, "ipndm_v")
    lms = ksampling.sample(toy, x.clone(), sigmas, "lms")
    assert (ipndm_v - lms).abs().max() > 1e-3
    # order 2 is the exact variable-step AB2 (lms order 2) up to the last step, which denoises
    no_zero = karras_grid(10, 0.03, 14.6, append_zero=False)
    torch.testing.assert_close(ksampling.sample(toy, x.clone(), no_zero, "ipndm_v", max_order=2),
                               ksampling.sample(toy, x.clone(), no_zero, "lms", order=2), rtol=1e-10, atol=1e-10)


def test_ipndm_v_measured_order():
    """On Gaussian data from σ = 80 to 1e-3 (Karras grid, N = 1024 … 4096, where both are
    asymptotic): order 2 for the published fourth-order form, order 3 for max_order = 3
    (2.64 over N = 64 … 256, still pre-asymptotic there)."""
    from benchmarks import convergence_orders as co

    problem = co.gaussian_problem()
    steps = (1024, 2048, 4096)
    order4 = co.fitted_order(steps, co.errors_for("ipndm_v", problem, steps))
    order3 = co.fitted_order(steps, co.errors_for("ipndm_v", problem, steps, max_order=3))
    assert abs(order4 - 2) < 0.15, order4
    assert abs(order3 - 3) < 0.15, order3


# -- heunpp2 -------------------------------------------------------------------------------------
def comfy_heunpp2(model, x, sigmas, noise, s_churn=0.0, s_tmin=0.0, s_tmax=math.inf, s_noise=1.0):
    sig = sigmas.tolist()
    s_end = sig[-1]
    d_of = lambda x, s: (x - model(x, torch.full((x.shape[0],), s, dtype=F64))) / s  # noqa: E731
    for i in range(len(sig) - 1):
        gamma = min(s_churn / (len(sig) - 1), 2**0.5 - 1) if s_tmin <= sig[i] <= s_tmax else 0.0
        sigma_hat = sig[i] * (gamma + 1)
        if gamma > 0:
            x = x + noise(sig[i], sig[i + 1]) * s_noise * (sigma_hat**2 - sig[i] ** 2) ** 0.5
        d = d_of(x, sigma_hat)
        dt = sig[i + 1] - sigma_hat
        if sig[i + 1] == s_end:
            x = x + d * dt
        elif sig[i + 2] == s_end:
            x_2 = x + d * dt
            d_2 = d_of(x_2, sig[i + 1])
            w2 = sig[i + 1] / (2 * sig[0])
            x = x + (d * (1 - w2) + d_2 * w2) * dt
        else:
            x_2 = x + d * dt
            d_2 = d_of(x_2, sig[i + 1])
            x_3 = x_2 + d_2 * (sig[i + 2] - sig[i + 1])
            d_3 = d_of(x_3, sig[i + 2])
            w2, w3 = sig[i + 1] / (3 * sig[0]), sig[i + 2] / (3 * sig[0])
            x = x + ((1 - w2 - w3) * d + w2 * d_2 + w3 * d_3) * dt
    return x


@pytest.mark.parametrize("grid", list(GRIDS))
@pytest.mark.parametrize("options", [{}, dict(s_churn=2.0, s_tmin=0.1, s_tmax=8.0, s_noise=1.01)])
def test_heunpp2_matches_comfyui(grid, options):
    sigmas, x = GRIDS[grid](), start()
    ours, info = ksampling.sample(toy, x.clone(), sigmas, "heunpp2", noise_sampler=ListNoise(x.shape),
                                  return_info=True, **options)
    torch.testing.assert_close(ours, comfy_heunpp2(toy, x.clone(), sigmas, ListNoise(x.shape), **options), **PARITY)
    n = len(sigmas) - 1
    assert info.nfe == 3 * (n - 2) + 2 + 1


# -- lcm -----------------------------------------------------------------------------------------
def comfy_lcm(model, x, sigmas, noise, s_noise=1.0, s_noise_end=None, noise_clip_std=0.0):
    sig = sigmas.tolist()
    n_steps = max(1, len(sig) - 1)
    s_end = s_noise if s_noise_end is None else s_noise_end
    for i in range(n_steps):
        x = model(x, torch.full((x.shape[0],), sig[i], dtype=F64))
        if sig[i + 1] > 0:
            z = noise(sig[i], sig[i + 1])
            if noise_clip_std > 0:
                clip = noise_clip_std * z.std()
                z = z.clamp(min=-clip, max=clip)
            t = i / (n_steps - 1) if n_steps > 1 else 0.0
            s_i = s_noise + (s_end - s_noise) * t
            if s_i != 1.0:
                z = z * s_i
            x = x + z * sig[i + 1]
    return x


@pytest.mark.parametrize("grid", list(GRIDS))
@pytest.mark.parametrize("options", [{}, dict(s_noise=1.2, s_noise_end=0.5, noise_clip_std=1.0)])
def test_lcm_matches_comfyui(grid, options):
    sigmas, x = GRIDS[grid](), start()
    ours = ksampling.sample(toy, x.clone(), sigmas, "lcm", noise_sampler=ListNoise(x.shape), **options)
    torch.testing.assert_close(ours, comfy_lcm(toy, x.clone(), sigmas, ListNoise(x.shape), **options), **PARITY)


def test_lcm_one_step_on_a_single_data_point_is_exact():
    # data = one point μ: D ≡ μ, so every lcm step lands on μ plus the next level's noise
    mu = torch.tensor([0.3, -1.2, 2.0], dtype=F64)
    model = lambda x, sigma: mu.expand_as(x)  # noqa: E731
    out = ksampling.sample(model, start(), karras_grid(4, 0.1, 10.0), "lcm", generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, mu.expand(2, 3), rtol=0, atol=0)


# -- SEEDS ---------------------------------------------------------------------------------------
def comfy_seeds_2(model, x, sigmas, noise, eta=1.0, s_noise=1.0, r=0.5, solver_type="phi_1"):
    sig = sigmas.tolist()
    e1 = math.expm1
    e2 = lambda z: (math.expm1(z) - z) / z  # noqa: E731
    inject = eta > 0 and s_noise > 0
    for i in range(len(sig) - 1):
        denoised = model(x, torch.full((x.shape[0],), sig[i], dtype=F64))
        if sig[i + 1] == 0:
            x = denoised
            continue
        lambda_s, lambda_t = -math.log(sig[i]), -math.log(sig[i + 1])
        h = lambda_t - lambda_s
        h_eta = h * (eta + 1)
        sigma_s_1 = math.exp(-(lambda_s + r * h))
        x_2 = sigma_s_1 / sig[i] * math.exp(-r * h * eta) * x - e1(-r * h_eta) * denoised
        if inject:
            sde_noise = math.sqrt(-math.expm1(-2 * r * h * eta)) * noise(sig[i], sigma_s_1)
            x_2 = x_2 + sde_noise * sigma_s_1 * s_noise
        denoised_2 = model(x_2, torch.full((x.shape[0],), sigma_s_1, dtype=F64))
        if solver_type == "phi_1":
            denoised_d = torch.lerp(denoised, denoised_2, 1 / (2 * r))
            x = sig[i + 1] / sig[i] * math.exp(-h * eta) * x - e1(-h_eta) * denoised_d
        else:
            b2 = e2(-h_eta) / r
            b1 = e1(-h_eta) - b2
            x = sig[i + 1] / sig[i] * math.exp(-h * eta) * x - (b1 * denoised + b2 * denoised_2)
        if inject:
            segment = (r - 1) * h * eta
            sde_noise = sde_noise * math.exp(segment) + math.sqrt(-math.expm1(2 * segment)) * noise(sigma_s_1, sig[i + 1])
            x = x + sde_noise * sig[i + 1] * s_noise
    return x


def comfy_seeds_3(model, x, sigmas, noise, eta=1.0, s_noise=1.0, r_1=1 / 3, r_2=2 / 3):
    sig = sigmas.tolist()
    e1 = math.expm1
    e2 = lambda z: (math.expm1(z) - z) / z  # noqa: E731
    at = lambda s: torch.full((x.shape[0],), s, dtype=F64)  # noqa: E731
    inject = eta > 0 and s_noise > 0
    for i in range(len(sig) - 1):
        denoised = model(x, at(sig[i]))
        if sig[i + 1] == 0:
            x = denoised
            continue
        lambda_s, lambda_t = -math.log(sig[i]), -math.log(sig[i + 1])
        h = lambda_t - lambda_s
        h_eta = h * (eta + 1)
        sigma_1, sigma_2 = math.exp(-(lambda_s + r_1 * h)), math.exp(-(lambda_s + r_2 * h))
        x_2 = sigma_1 / sig[i] * math.exp(-r_1 * h * eta) * x - e1(-r_1 * h_eta) * denoised
        if inject:
            sde_noise = math.sqrt(-math.expm1(-2 * r_1 * h * eta)) * noise(sig[i], sigma_1)
            x_2 = x_2 + sde_noise * sigma_1 * s_noise
        denoised_2 = model(x_2, at(sigma_1))
        a3_2 = r_2 / r_1 * e2(-r_2 * h_eta)
        a3_1 = e1(-r_2 * h_eta) - a3_2
        x_3 = sigma_2 / sig[i] * math.exp(-r_2 * h * eta) * x - (a3_1 * denoised + a3_2 * denoised_2)
        if inject:
            segment = (r_1 - r_2) * h * eta
            sde_noise = sde_noise * math.exp(segment) + math.sqrt(-math.expm1(2 * segment)) * noise(sigma_1, sigma_2)
            x_3 = x_3 + sde_noise * sigma_2 * s_noise
        denoised_3 = model(x_3, at(sigma_2))
        b3 = e2(-h_eta) / r_2
        b1 = e1(-h_eta) - b3
        x = sig[i + 1] / sig[i] * math.exp(-h * eta) * x - (b1 * denoised + b3 * denoised_3)
        if inject:
            segment = (r_2 - 1) * h * eta
            sde_noise = sde_noise * math.exp(segment) + math.sqrt(-math.expm1(2 * segment)) * noise(sigma_2, sig[i + 1])
            x = x + sde_noise * sig[i + 1] * s_noise
    return x


@pytest.mark.parametrize("grid", list(GRIDS))
@pytest.mark.parametrize(
    "name, options",
    [
        ("seeds_2", {}),
        ("seeds_2", dict(solver_type="phi_2", eta=0.7, s_noise=0.9)),
        ("seeds_2", dict(r=1.0, solver_type="phi_2")),
        ("seeds_2", dict(eta=0.0)),
        ("seeds_3", {}),
        ("seeds_3", dict(eta=0.5, r_1=0.25, r_2=0.6)),
        ("seeds_3", dict(eta=0.0)),
    ],
)
def test_seeds_matches_comfyui(name, options, grid):
    sigmas, x = GRIDS[grid](), start()
    ours = ksampling.sample(toy, x.clone(), sigmas, name, noise_sampler=ListNoise(x.shape), **options)
    reference = comfy_seeds_2 if name == "seeds_2" else comfy_seeds_3
    torch.testing.assert_close(ours, reference(toy, x.clone(), sigmas, ListNoise(x.shape), **options), **PARITY)


def test_seeds_without_noise_are_the_exponential_integrators():
    sigmas, x = GRIDS["to_zero"](), start()
    seeds2 = ksampling.sample(toy, x.clone(), sigmas, "seeds_2", eta=0.0)
    dpmpp_2s = ksampling.sample(toy, x.clone(), sigmas, "dpmpp_2s_ancestral", eta=0.0)
    torch.testing.assert_close(seeds2, dpmpp_2s, rtol=1e-12, atol=1e-12)
    seeds3 = ksampling.sample(toy, x.clone(), sigmas, "seeds_3", eta=0.0)
    dpm3 = ksampling.sample(toy, x.clone(), sigmas, "dpm_solver", order=3)
    torch.testing.assert_close(seeds3, dpm3, rtol=1e-10, atol=1e-10)


# -- SA-Solver -----------------------------------------------------------------------------------
def comfy_sa_coeffs(sigma_next, curr_lambdas, lambda_s, lambda_t, tau, simple_order_2, corrector):
    """compute_stochastic_adams_b_coeffs, written out: the recursive integral of λ^p times
    e^{(1+τ²)(λ−λ_t)}, then the transposed Vandermonde system."""
    n = len(curr_lambdas)
    a = 1 + tau**2
    h = lambda_t - lambda_s
    alpha_t = sigma_next * math.exp(lambda_t)
    if simple_order_2 and n == 2:
        if corrector:
            b_1 = alpha_t * 0.5 * a * h
            return [alpha_t * -math.expm1(-h * a) - b_1, b_1]
        b_2 = alpha_t * 0.5 * a * h**2 / (curr_lambdas[-2] - lambda_s)
        return [b_2, alpha_t * -math.expm1(-h * a) - b_2]
    product = torch.tensor([lambda_t**p - lambda_s**p * math.exp(-a * h) for p in range(n)], dtype=F64)
    matrix = torch.zeros(n, n, dtype=F64)
    for p in range(n):
        for q in range(p + 1):
            matrix[p, q] = math.factorial(p) / math.factorial(q) / a ** (p - q) * (-1) ** (p - q)
    moments = matrix @ product
    vander = torch.tensor([[lam**p for lam in curr_lambdas] for p in range(n)], dtype=F64)
    return (alpha_t * torch.linalg.solve(vander, moments)).tolist()


def comfy_sa_solver(model, x, sigmas, noise, eta=1.0, s_noise=1.0, sde_sigma_min=0.5711888666, sde_sigma_max=5.0924075907,
                    predictor_order=3, corrector_order=4, use_pece=False, simple_order_2=False):
    sig = sigmas.tolist()
    lambdas = [-math.log(s) if s > 0 else math.inf for s in sig]
    tau_func = lambda s: eta if sde_sigma_max >= s >= sde_sigma_min else 0.0  # noqa: E731
    max_used = max(predictor_order, corrector_order)
    at = lambda s: torch.full((x.shape[0],), s, dtype=F64)  # noqa: E731
    x_pred, h, tau_t, sde = x, 0.0, 0.0, 0.0
    preds = []
    lower_to_end = sig[-1] == 0
    for i in range(len(sig) - 1):
        denoised = model(x_pred, at(sig[i]))
        preds = (preds + [denoised])[-max_used:]
        p_used = min(predictor_order, len(preds))
        c_used = 0 if i == 0 or (sig[i + 1] == 0 and not use_pece) else min(corrector_order, len(preds))
        if lower_to_end:
            p_used = min(p_used, len(sig) - 2 - i)
            c_used = min(c_used, len(sig) - 1 - i)
        if c_used == 0:
            x = x_pred
        else:
            b = comfy_sa_coeffs(sig[i], lambdas[i - c_used + 1 : i + 1], lambdas[i - 1], lambdas[i], tau_t, simple_order_2, True)
            x = sig[i] / sig[i - 1] * math.exp(-(tau_t**2) * h) * x + sum(w * d for w, d in zip(b, preds[-c_used:]))
            if tau_t > 0 and s_noise > 0:
                x = x + sde
            if use_pece:
                denoised = model(x, at(sig[i]))
                preds[-1] = denoised
        if sig[i + 1] == 0:
            x_pred = denoised
        else:
            tau_t = tau_func(sig[i + 1])
            b = comfy_sa_coeffs(sig[i + 1], lambdas[i - p_used + 1 : i + 1], lambdas[i], lambdas[i + 1], tau_t, simple_order_2, False)
            h = lambdas[i + 1] - lambdas[i]
            x_pred = sig[i + 1] / sig[i] * math.exp(-(tau_t**2) * h) * x + sum(w * d for w, d in zip(b, preds[-p_used:]))
            if tau_t > 0 and s_noise > 0:
                sde = noise(sig[i], sig[i + 1]) * sig[i + 1] * math.sqrt(-math.expm1(-2 * tau_t**2 * h)) * s_noise
                x_pred = x_pred + sde
    return x_pred


def test_sa_solver_tau_func_replaces_eta_and_the_interval():
    sigmas, x = GRIDS["to_zero"](), start()
    by_tau = ksampling.sample(toy, x.clone(), sigmas, "sa_solver", tau_func=lambda s: 0.7 if 1.0 <= s <= 8.0 else 0.0,
                              noise_sampler=ListNoise(x.shape))
    by_interval = ksampling.sample(toy, x.clone(), sigmas, "sa_solver", eta=0.7, sde_sigma_min=1.0, sde_sigma_max=8.0,
                                   noise_sampler=ListNoise(x.shape))
    torch.testing.assert_close(by_tau, by_interval, rtol=0, atol=0)
    with pytest.raises(ValueError, match="tau_func"):
        ksampling.sample(toy, x.clone(), sigmas, "sa_solver", tau_func=lambda s: -1.0)


@pytest.mark.parametrize("grid", list(GRIDS))
@pytest.mark.parametrize(
    "name, options",
    [
        ("sa_solver", {}),
        ("sa_solver", dict(eta=0.0)),
        ("sa_solver", dict(predictor_order=2, corrector_order=2, simple_order_2=True, eta=0.8)),
        ("sa_solver", dict(predictor_order=4, corrector_order=0, sde_sigma_min=0.1, sde_sigma_max=20.0)),
        ("sa_solver_pece", {}),
        ("sa_solver_pece", dict(predictor_order=1, corrector_order=3, s_noise=1.2)),
    ],
)
def test_sa_solver_matches_comfyui(name, options, grid):
    sigmas, x = GRIDS[grid](), start()
    ours, info = ksampling.sample(toy, x.clone(), sigmas, name, noise_sampler=ListNoise(x.shape), return_info=True, **options)
    ref = comfy_sa_solver(toy, x.clone(), sigmas, ListNoise(x.shape), use_pece=name == "sa_solver_pece", **options)
    torch.testing.assert_close(ours, ref, **PARITY)
    assert (ours - start()).abs().max() > 1e-3


# -- measured orders of the new deterministic methods (Gaussian data, σ 80 → 1e-3, Karras) ------
@pytest.mark.parametrize(
    "name, options, order",
    [
        ("seeds_2", dict(eta=0.0), 2),
        ("seeds_2", dict(eta=0.0, solver_type="phi_2", r=1.0), 2),
        ("seeds_3", dict(eta=0.0), 3),
        ("sa_solver", dict(eta=0.0), 4),
        ("sa_solver", dict(eta=0.0, predictor_order=2, corrector_order=2, simple_order_2=True), 2),
        ("sa_solver_pece", dict(eta=0.0), 4),
        ("heunpp2", {}, 1),
        ("res_multistep_ancestral", dict(eta=0.0), 2),
    ],
)
def test_measured_orders_of_the_new_methods(name, options, order):
    from benchmarks import convergence_orders as co

    measured = co.measure(name, co.gaussian_problem(), **options)
    assert abs(measured.order - order) <= 0.3, (name, options, measured.order, measured.errors)


# -- Restart sampling ----------------------------------------------------------------------------
class Gaussian1:
    """Data N(μ, diag(c²)): D and the closed-form ODE solution
    x(σ) = μ + (x(σ') − μ) √((σ² + c²)/(σ'² + c²))."""

    mean = torch.tensor([0.5, -1.0, 0.2], dtype=F64)
    var = torch.tensor([0.04, 0.25, 1.0], dtype=F64)

    def __call__(self, x, sigma):
        s2 = sigma.reshape(-1, 1).to(x.dtype) ** 2
        return self.mean + self.var / (self.var + s2) * (x - self.mean)

    def flow(self, x, sigma_from, sigma_to):
        return self.mean + (x - self.mean) * torch.sqrt((sigma_to**2 + self.var) / (sigma_from**2 + self.var))


def test_restart_without_restarts_is_its_base_solver():
    sigmas, x = GRIDS["to_zero"](), start()
    for base in ("heun", "euler", "dpm_2"):
        ours = ksampling.sample(toy, x.clone(), sigmas, "restart", base=base, restarts=())
        torch.testing.assert_close(ours, ksampling.sample(toy, x.clone(), sigmas, base), rtol=0, atol=0)
    zero_repeats = ksampling.sample(toy, x.clone(), sigmas, "restart", restarts=[(0.1, 2.0, 5, 0)],
                                    noise_sampler=lambda s, t: pytest.fail("drew noise"))
    torch.testing.assert_close(zero_repeats, ksampling.sample(toy, x.clone(), sigmas, "heun"), rtol=0, atol=0)


def test_restart_is_the_papers_algorithm_on_gaussian_data():
    """With many Heun steps the ODE parts are exact to ~1e-5 on Gaussian data (the jumps
    are of size ~3), so the result must be the closed-form chain: flow to the grid level nearest σ_min, jump to σ_max with
    the drawn noise, flow back to σ_min, twice, then flow to the end."""
    data, x = Gaussian1(), start(4, 3)
    sigmas = karras_grid(400, 0.05, 10.0, append_zero=False)
    sig = sigmas.tolist()
    j = min(range(1, len(sig)), key=lambda k: abs(sig[k] - 0.3))
    noise = ListNoise(x.shape)
    ours, info = ksampling.sample(data, x.clone(), sigmas, "restart", restarts=[(0.3, 3.0, 300, 2)],
                                  noise_sampler=noise, return_info=True)
    assert noise.calls == 2
    exact = data.flow(x, sig[0], sig[j])
    for draw in noise.table[:2]:
        jumped = exact + math.sqrt(3.0**2 - sig[j] ** 2) * draw
        exact = data.flow(jumped, 3.0, sig[j])
    exact = data.flow(exact, sig[j], sig[-1])
    torch.testing.assert_close(ours, exact, rtol=1e-4, atol=1e-4)
    assert info.nfe == 2 * (len(sig) - 1) + 2 * 2 * 300


def test_restart_keeps_gaussian_data_distributed_as_the_data():
    """Restart cycles preserve the marginal: from exact samples at σ_max, the output's mean
    and variance are the data's (4000 samples, 4 standard errors)."""
    data = Gaussian1()
    generator = torch.Generator().manual_seed(0)
    n, sigma_max = 4000, 20.0
    x = data.mean + torch.randn(n, 3, dtype=F64, generator=generator) * torch.sqrt(data.var + sigma_max**2)
    sigmas = karras_grid(40, 0.002, sigma_max)
    out = ksampling.sample(data, x, sigmas, "restart", restarts=[(0.2, 5.0, 20, 3)], generator=generator)
    se_mean = torch.sqrt(data.var / n)
    assert ((out.mean(0) - data.mean).abs() < 4 * se_mean).all()
    assert ((out.var(0) / data.var - 1).abs() < 4 * math.sqrt(2 / n)).all()


@pytest.mark.parametrize(
    "options, error",
    [
        (dict(base="dpmpp_2m"), ValueError),
        (dict(base="euler_ancestral"), ValueError),
        (dict(restarts=[(2.0, 1.0, 5, 1)]), ValueError),
        (dict(restarts=[(0.1, 2.0, 0, 1)]), ValueError),
        (dict(restarts=[(0.1, 2.0, 5)]), ValueError),
        (dict(restarts=5), TypeError),
    ],
)
def test_restart_bad_options(options, error):
    with pytest.raises(error):
        ksampling.sample(toy, start(), karras_grid(5, 0.1, 10.0), "restart", **options)
