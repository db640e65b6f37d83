"""Prediction types and EDM preconditioning: every parameterisation gives back the exact D."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import ksampling
from helpers import HostSyncCounter
from ksampling.denoisers import (
    PREDICTIONS,
    VE,
    EDMPrecond,
    Gaussian,
    GaussianMixture,
    LearnedVariance,
    NetworkDenoiser,
    RectifiedFlow,
    VPContinuous,
    VPDiscrete,
    edm_loss,
    edm_loss_weight,
    edm_scalings,
    edm_training_sigmas,
    eps_ddpm,
    present_as_edm_network,
    present_as_network,
    v_ddpm,
)
from ksampling.denoisers.base import sigmas_checked_by_caller
from reference import k_diffusion

F64 = torch.float64


# -- the analytic denoisers (ksampling.denoisers.analytic, tested there against closed forms) --


def _gaussian():
    g = torch.Generator().manual_seed(1)
    return Gaussian(torch.randn(4, generator=g, dtype=F64), var=0.2 + torch.rand(4, generator=g, dtype=F64))


def _gaussian_full():
    g = torch.Generator().manual_seed(3)
    root = torch.randn(4, 4, generator=g, dtype=F64)
    return Gaussian(torch.randn(4, generator=g, dtype=F64), cov=root @ root.T / 4 + 0.05 * torch.eye(4, dtype=F64))


def _mixture():
    g = torch.Generator().manual_seed(2)
    return GaussianMixture(
        torch.tensor([0.2, 0.5, 0.3], dtype=F64),
        2 * torch.randn(3, 4, generator=g, dtype=F64),
        var=0.05 + 0.3 * torch.rand(3, 4, generator=g, dtype=F64),
    )


DENOISERS = {"gaussian": _gaussian, "gaussian_full_cov": _gaussian_full, "mixture": _mixture}

PROCESSES = {
    "ve": lambda: VE(),
    "vp_discrete_interpolate": lambda: VPDiscrete(beta_schedule="scaled_linear"),
    "vp_discrete_round": lambda: VPDiscrete(beta_schedule="scaled_linear", time="round"),
    "vp_discrete_cosine": lambda: VPDiscrete(beta_schedule="squaredcos_cap_v2"),
    "vp_discrete_zero_snr": lambda: VPDiscrete(beta_schedule="scaled_linear", rescale_zero_terminal_snr=True),
    "vp_continuous_linear": lambda: VPContinuous("linear", t_scale=999),
    "vp_continuous_cosine": lambda: VPContinuous("cosine"),
    "rectified_flow": lambda: RectifiedFlow(t_scale=1000),
}


def _probe(process, n=9, seed=0):
    """σ across the process's range (training sigmas for a rounded discrete time) and x = x0 + σ n."""
    g = torch.Generator().manual_seed(seed)
    if getattr(process, "time", None) == "round":
        sigma = process.sigmas[torch.randint(0, len(process.sigmas), (n,), generator=g)]
    else:
        lo, hi = math.log(process.sigma_min), math.log(min(process.sigma_max, 1e3))
        sigma = torch.exp(torch.linspace(lo, hi, n, dtype=F64))
    x0 = torch.randn(n, 4, generator=g, dtype=F64)
    return x0 + sigma[:, None] * torch.randn(n, 4, generator=g, dtype=F64), sigma


def _close(actual, expected, tol=1e-10):
    # relative to the size of x: the reparameterisations multiply and divide by σ
    scale = 1 + expected.abs()
    assert actual.shape == expected.shape
    err = ((actual - expected).abs() / scale).max().item()
    assert err < tol, err


CASES = [
    (process, prediction)
    for process in PROCESSES
    for prediction in PREDICTIONS
    if prediction != "mean" or process.startswith("vp_discrete")
]


@pytest.mark.parametrize("denoiser_name", list(DENOISERS))
@pytest.mark.parametrize("process_name, prediction", CASES)
def test_every_parameterisation_returns_the_exact_denoiser(process_name, prediction, denoiser_name):
    process, denoiser = PROCESSES[process_name](), DENOISERS[denoiser_name]()
    network = present_as_network(denoiser, process, prediction)
    wrapped = NetworkDenoiser(network, process, prediction)
    x, sigma = _probe(process)
    _close(wrapped(x, sigma), denoiser(x, sigma))


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_image_shaped_data_and_as_network(prediction):
    # x of shape [B, C, H, W]; Denoiser.as_network is present_as_network
    g = torch.Generator().manual_seed(12)
    denoiser = GaussianMixture(
        torch.tensor([0.4, 0.6], dtype=F64), torch.randn(2, 2, 3, 3, generator=g, dtype=F64), var=torch.tensor([0.1, 0.5], dtype=F64)
    )
    process = VPDiscrete(beta_schedule="squaredcos_cap_v2")
    wrapped = NetworkDenoiser(denoiser.as_network(process, prediction), process, prediction)
    sigma = torch.tensor([0.01, 0.3, 2.0, 50.0], dtype=F64)
    x = torch.randn(4, 2, 3, 3, generator=g, dtype=F64) * sigma.reshape(-1, 1, 1, 1)
    _close(wrapped(x, sigma), denoiser(x, sigma))


def test_rounded_time_answers_for_the_nearest_training_sigma():
    # off the training grid a rounded-time network only knows σ_k: it reads its input
    # α(σ) x as α(σ_k) x0 + s(σ_k) n, so the wrapper returns D(x α(σ)/α(σ_k); σ_k)
    process = VPDiscrete(time="round")
    denoiser = _gaussian()
    wrapped = NetworkDenoiser(present_as_network(denoiser, process, "eps"), process, "eps")
    sigma = torch.tensor([0.0123, 0.77, 3.3, 60.0], dtype=F64)
    x = torch.randn(4, 4, generator=torch.Generator().manual_seed(5), dtype=F64) * sigma[:, None]
    nearest = process.sigmas[(sigma.log()[:, None] - process.sigmas.log()).abs().argmin(1)]
    x_seen = x * torch.sqrt((1 + nearest**2) / (1 + sigma**2))[:, None]
    eps = (x_seen - denoiser(x_seen, nearest)) / nearest[:, None]
    _close(wrapped(x, sigma), x - sigma[:, None] * eps)


# -- the networks written by hand, independently of present_as_network --------------------------


def _linear_vp_sigma(t, beta_min=0.1, beta_max=20.0):
    return torch.sqrt(torch.exp(beta_min * t + 0.5 * (beta_max - beta_min) * t**2) - 1)


def _hand_network(prediction, denoiser):
    """A VP-continuous-linear network (t_scale 1) predicting ``prediction`` by its textbook
    definition: x_vp = α x0 + s n, α² + s² = 1."""

    def network(x_vp, t):
        sigma = _linear_vp_sigma(t)
        alpha = (1 / torch.sqrt(1 + sigma**2))[:, None]
        s = alpha * sigma[:, None]
        x0_hat = denoiser(x_vp / alpha, sigma)
        eps_hat = (x_vp - alpha * x0_hat) / s  # E[n | x_vp]
        return {
            "eps": eps_hat,
            "x0": x0_hat,
            "v": alpha * eps_hat - s * x0_hat,  # Salimans & Ho 2022
            "score": -eps_hat / s,  # ∇ log p(x_vp) (Tweedie)
            "flow": eps_hat - x0_hat,  # d/dt of (1 − t) x0 + t n
        }[prediction]

    return network


@pytest.mark.parametrize("prediction", ["eps", "x0", "v", "score", "flow"])
def test_textbook_networks_wrap_to_the_exact_denoiser(prediction):
    denoiser = _mixture()
    process = VPContinuous("linear")
    wrapped = NetworkDenoiser(_hand_network(prediction, denoiser), process, prediction)
    x, sigma = _probe(process, seed=3)
    _close(wrapped(x, sigma), denoiser(x, sigma))


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_presented_network_outputs_the_textbook_target(prediction):
    denoiser = _gaussian()
    process = VPContinuous("linear")
    x, sigma = _probe(process, seed=4)
    t = process.sigma_to_t(sigma)
    alpha = (1 / torch.sqrt(1 + sigma**2))[:, None]
    x_vp = alpha * x
    output = present_as_network(denoiser, process, prediction)(x_vp, t)
    expected = _hand_network(prediction, denoiser)(x_vp, t)
    _close(output, expected)
    if prediction == "eps":  # and it is E[n | x] = (x − D)/σ in VE terms
        _close(output, (x - denoiser(x, sigma)) / sigma[:, None])


def test_flow_network_of_rectified_flow_by_hand():
    # x_t = (1 − t) x0 + t n; F = n − x0; the network gets 1000 t
    denoiser = _mixture()
    process = RectifiedFlow(t_scale=1000)

    def network(x_t, t_network):
        t = (t_network / 1000)[:, None]
        sigma = t / (1 - t)
        x0_hat = denoiser(x_t / (1 - t), sigma[:, 0])
        n_hat = (x_t - (1 - t) * x0_hat) / t
        return n_hat - x0_hat

    wrapped = NetworkDenoiser(network, process, "flow")
    x, sigma = _probe(process, seed=6)
    _close(wrapped(x, sigma), denoiser(x, sigma))


def test_mean_network_of_ddpm_by_hand():
    # μ_θ(x_t, t) = √ᾱ_{t−1} β_t/(1 − ᾱ_t) x̂0 + √α_t (1 − ᾱ_{t−1})/(1 − ᾱ_t) x_t (Ho et al. 2020, eq. 7)
    process = VPDiscrete(time="round")
    ac = process.alphas_cumprod
    denoiser = _gaussian()

    def network(x_t, t):
        k = t.long()
        ac_t = ac[k][:, None]
        ac_prev = torch.where(k > 0, ac[(k - 1).clamp(min=0)], torch.ones_like(ac[k]))[:, None]
        beta = 1 - ac_t / ac_prev
        x0_hat = denoiser(x_t / ac_t.sqrt(), torch.sqrt((1 - ac_t) / ac_t)[:, 0])
        return ac_prev.sqrt() * beta / (1 - ac_t) * x0_hat + (1 - beta).sqrt() * (1 - ac_prev) / (1 - ac_t) * x_t

    wrapped = NetworkDenoiser(network, process, "mean")
    x, sigma = _probe(process, n=12, seed=7)
    sigma[0] = process.sigmas[0]  # index 0: μ = x̂0
    _close(wrapped(x, sigma), denoiser(x, sigma))


def test_posterior_coefficients_and_variance_are_ddpm():
    process = VPDiscrete(beta_schedule="scaled_linear")
    ac = process.alphas_cumprod
    k = torch.tensor([1, 2, 10, 500, 999])
    c0, c1, log_var = process.posterior(k.double())
    beta = 1 - ac[k] / ac[k - 1]
    torch.testing.assert_close(c0, ac[k - 1].sqrt() * beta / (1 - ac[k]), rtol=1e-11, atol=0)
    torch.testing.assert_close(c1, (1 - beta).sqrt() * (1 - ac[k - 1]) / (1 - ac[k]), rtol=1e-11, atol=0)
    torch.testing.assert_close(log_var, torch.log(beta * (1 - ac[k - 1]) / (1 - ac[k])), rtol=1e-11, atol=0)
    # index 0: μ = x0, and log β̃ is clipped to its value at index 1 (improved DDPM)
    c0, c1, log_var = process.posterior(torch.tensor([0.0], dtype=F64))
    assert (c0.item(), c1.item()) == pytest.approx((1.0, 0.0), abs=1e-15)
    assert log_var.item() == pytest.approx(process.posterior(torch.tensor([1.0], dtype=F64))[2].item())


# -- k-diffusion parity ---------------------------------------------------------------------------


class SmallNetwork(torch.nn.Module):
    """A fixed random network of (x, t): channel mixing plus a time embedding."""

    def __init__(self, channels=3, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = torch.randn(channels, channels, generator=g, dtype=F64) / channels
        self.freq = torch.randn(channels, generator=g, dtype=F64)

    def forward(self, x, t):
        t = t.to(x.dtype).reshape(-1, 1, 1, 1)
        mixed = torch.einsum("oc,bchw->bohw", self.weight, x)
        return torch.tanh(mixed + torch.sin(t / 100 * self.freq.reshape(1, -1, 1, 1)))


@pytest.mark.parametrize("kind", ["eps", "v"])
@pytest.mark.parametrize("quantize", [False, True])
def test_matches_k_diffusion_discrete_ddpm_denoisers(kind, quantize):
    K = k_diffusion()
    process = VPDiscrete(beta_schedule="scaled_linear", time="round" if quantize else "interpolate")
    network = SmallNetwork()
    reference_class = K.external.DiscreteEpsDDPMDenoiser if kind == "eps" else K.external.DiscreteVDDPMDenoiser
    reference = reference_class(network, process.alphas_cumprod.clone(), quantize=quantize)
    ours = (eps_ddpm if kind == "eps" else v_ddpm)(network, process.alphas_cumprod, time="round" if quantize else "interpolate")
    g = torch.Generator().manual_seed(11)
    sigma = torch.cat(
        [
            torch.exp(torch.empty(6, dtype=F64).uniform_(math.log(0.03), math.log(14.0), generator=g)),
            process.sigmas[[0, 17, 998]],
        ]
    )
    x = torch.randn(len(sigma), 3, 5, 5, generator=g, dtype=F64) * sigma.reshape(-1, 1, 1, 1)
    expected = reference(x, sigma)
    torch.testing.assert_close(ours(x, sigma), expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(NetworkDenoiser(network, process, kind)(x, sigma), expected, rtol=1e-10, atol=1e-12)


# -- learned variances ------------------------------------------------------------------------------


def test_learned_variance_is_split_off_and_returned():
    process = VPDiscrete()
    denoiser = _gaussian()
    x, sigma = _probe(process)
    for kind in ("learned", "learned_range"):
        network = present_as_network(denoiser, process, "eps", learned_variance=kind)
        assert network(x * process.input_scale(sigma)[:, None], process.sigma_to_t(sigma)).shape == (9, 8)
        wrapped = NetworkDenoiser(network, process, "eps", learned_variance=kind)
        denoised, variance = wrapped.denoise_with_variance(x, sigma)
        _close(denoised, denoiser(x, sigma))
        _close(wrapped(x, sigma), denoised, tol=0.0 + 1e-300)
        assert isinstance(variance, LearnedVariance) and variance.kind == kind and variance.value.shape == x.shape
        if kind == "learned_range":
            assert bool((variance.value == -1).all())
        else:
            expected = process.posterior(process.sigma_to_t(sigma))[2]
            torch.testing.assert_close(variance.value, expected[:, None].expand_as(x))
    denoised, variance = NetworkDenoiser(present_as_network(denoiser, process, "x0"), process, "x0").denoise_with_variance(x, sigma)
    assert variance is None


def test_ddpm_sampler_uses_the_learned_variance():
    # v = −1 selects β̃ of each step, i.e. the DDPM sampler's "small" variance
    process = VPDiscrete()
    denoiser = _gaussian()
    wrapped = NetworkDenoiser(present_as_network(denoiser, process, "eps", "learned_range"), process, "eps", "learned_range")
    sigmas = torch.tensor([14.0, 5.0, 1.5, 0.4, 0.1, 0.0], dtype=F64)
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(0), dtype=F64) * sigmas[0]
    learned = ksampling.sample(wrapped, x, sigmas, "ddpm", generator=torch.Generator().manual_seed(9))
    small = ksampling.sample(lambda x, s: denoiser(x, s), x, sigmas, "ddpm", variance="small", generator=torch.Generator().manual_seed(9))
    large = ksampling.sample(lambda x, s: denoiser(x, s), x, sigmas, "ddpm", variance="large", generator=torch.Generator().manual_seed(9))
    _close(learned, small)
    assert (learned - large).abs().max().item() > 1e-3


def test_sampling_through_a_wrapped_network_equals_sampling_the_denoiser():
    process = VPDiscrete(beta_schedule="scaled_linear")
    denoiser = _mixture()
    wrapped = NetworkDenoiser(present_as_network(denoiser, process, "v"), process, "v")
    sigmas = torch.tensor([14.0, 6.0, 2.0, 0.7, 0.2, 0.05, 0.0], dtype=F64)
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(1), dtype=F64) * sigmas[0]
    _close(ksampling.sample(wrapped, x, sigmas, "heun"), ksampling.sample(lambda x, s: denoiser(x, s), x, sigmas, "heun"))


# -- EDM preconditioning ----------------------------------------------------------------------------


def test_edm_scalings_at_hand_computed_values():
    # σ_d = 0.5. σ = 0.5: c_skip = 1/2, c_out = 0.25/√0.5, c_in = 1/√0.5, c_noise = ln(0.5)/4
    sigma = torch.tensor([0.5, 2.0, 0.002, 80.0], dtype=F64)
    c_skip, c_out, c_in, c_noise = edm_scalings(sigma, 0.5)
    torch.testing.assert_close(c_skip, torch.tensor([0.5, 0.25 / 4.25, 0.25 / 0.250004, 0.25 / 6400.25], dtype=F64))
    torch.testing.assert_close(
        c_out, torch.tensor([0.25 / 0.5**0.5, 1.0 / 4.25**0.5, 0.001 / 0.250004**0.5, 40.0 / 6400.25**0.5], dtype=F64)
    )
    torch.testing.assert_close(c_in, torch.tensor([2**0.5, 1 / 4.25**0.5, 1 / 0.250004**0.5, 1 / 6400.25**0.5], dtype=F64))
    torch.testing.assert_close(c_noise, torch.tensor([math.log(0.5) / 4, math.log(2.0) / 4, math.log(0.002) / 4, math.log(80.0) / 4], dtype=F64))
    # λ(σ) = 1/c_out²: the network's target has unit weight
    torch.testing.assert_close(edm_loss_weight(sigma, 0.5), 1 / c_out**2)


@pytest.mark.parametrize("sigma_data", [0.5, 1.3])
def test_edm_precond_of_the_presented_network_is_exact(sigma_data):
    denoiser = _mixture()
    wrapped = EDMPrecond(present_as_edm_network(denoiser, sigma_data), sigma_data=sigma_data)
    x, sigma = _probe(VE(), seed=8)
    _close(wrapped(x, sigma), denoiser(x, sigma))


def test_edm_precond_calls_the_network_as_edm_does():
    calls = []

    def network(x_in, c_noise):
        calls.append((x_in, c_noise))
        return torch.full_like(x_in, 2.0)

    sigma = torch.tensor([0.5, 2.0], dtype=F64)
    x = torch.tensor([[1.0, -1.0], [4.0, 0.0]], dtype=F64)
    out = EDMPrecond(network)(x, sigma)
    x_in, c_noise = calls[0]
    torch.testing.assert_close(x_in, x / torch.sqrt(sigma**2 + 0.25)[:, None])
    torch.testing.assert_close(c_noise, sigma.log() / 4)
    expected = 0.25 / (sigma**2 + 0.25)[:, None] * x + 2.0 * (0.5 * sigma / torch.sqrt(sigma**2 + 0.25))[:, None]
    torch.testing.assert_close(out, expected)


def test_edm_loss_draws_from_the_generator_and_weights_by_lambda():
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 4, dtype=F64)
    global_state = torch.get_rng_state()
    precond = EDMPrecond(lambda x_in, c_noise: net(x_in), sigma_data=0.7)
    x0 = torch.randn(6, 4, generator=torch.Generator().manual_seed(3), dtype=F64)
    loss = edm_loss(precond, x0, torch.Generator().manual_seed(42))
    assert torch.equal(torch.get_rng_state(), global_state)
    assert loss.shape == (6,)
    # the same draws by hand: ln σ ~ N(−1.2, 1.2²) first, then n ~ N(0, I)
    g = torch.Generator().manual_seed(42)
    sigma = torch.exp(-1.2 + 1.2 * torch.randn(6, generator=g, dtype=F64))
    noise = torch.randn(6, 4, generator=g, dtype=F64)
    c_skip, c_out, c_in, _ = edm_scalings(sigma, 0.7)
    y = x0 + sigma[:, None] * noise
    denoised = c_skip[:, None] * y + c_out[:, None] * net(c_in[:, None] * y)
    expected = ((sigma**2 + 0.49) / (0.7 * sigma) ** 2) * ((denoised - x0) ** 2).mean(1)
    torch.testing.assert_close(loss, expected)
    loss.mean().backward()
    assert net.weight.grad is not None and bool(torch.isfinite(net.weight.grad).all())


def test_edm_training_sigmas_are_log_normal():
    sigma = edm_training_sigmas(200_000, torch.Generator().manual_seed(0), P_mean=-1.2, P_std=1.2, dtype=F64)
    log_sigma = sigma.log()
    assert abs(log_sigma.mean().item() + 1.2) < 4 * 1.2 / math.sqrt(200_000)
    assert abs(log_sigma.std().item() - 1.2) < 0.01


# -- no host syncs, bad input ---------------------------------------------------------------------


@pytest.mark.parametrize("process_name", list(PROCESSES))
def test_wrapper_makes_no_host_syncs(process_name):
    process = PROCESSES[process_name]()
    prediction = "mean" if process_name.startswith("vp_discrete") else "v"
    wrapped = NetworkDenoiser(present_as_network(_gaussian(), process, prediction), process, prediction)
    x, sigma = _probe(process)
    edm = EDMPrecond(present_as_edm_network(_gaussian()))
    wrapped(x, sigma)  # tables copied to the device once
    with HostSyncCounter() as counter, sigmas_checked_by_caller():
        wrapped(x, sigma)
        edm(x, sigma)
    assert counter.count == 0, counter.names
    # called directly, each checks its σ with one transfer
    with HostSyncCounter() as counter:
        wrapped(x, sigma)
        edm(x, sigma)
    assert counter.count == 2, counter.names


def test_sampling_through_a_wrapper_makes_no_host_sync_per_step():
    """The loop validates its grid once; the wrapper's per-call check of σ is skipped inside it."""
    process = VPDiscrete()
    wrapped = NetworkDenoiser(present_as_network(_gaussian(), process, "eps"), process, "eps")
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(3), dtype=F64) * 10
    counts = []
    for steps in (4, 16):
        with HostSyncCounter() as counter:
            ksampling.sample(wrapped, x, ksampling.schedules.karras(steps, 0.1, 10.0).to(F64), "heun")
        counts.append(counter.count)
    assert counts[0] == counts[1], counts


@pytest.mark.parametrize("sigma", [math.nan, -1.0, math.inf, [0.5, math.nan, 1.0], [0.5, -1e-3, 1.0], [1.0, math.inf, 1.0]],
                         ids=str)
@pytest.mark.parametrize("denoiser", ["network", "edm"])
def test_a_sigma_that_is_no_noise_level_is_an_error(sigma, denoiser):
    # before: NaN came back as NaN, and σ = −1 as finite garbage
    if denoiser == "network":
        model = NetworkDenoiser(present_as_network(_gaussian(), VPDiscrete(), "eps"), VPDiscrete(), "eps")
    else:
        model = EDMPrecond(present_as_edm_network(_gaussian()))
    x = torch.ones(3, 4, dtype=F64)
    sigma = torch.tensor(sigma, dtype=F64) if isinstance(sigma, list) else sigma
    with pytest.raises(ValueError, match="sigma.*finite number >= 0"):
        model(x, sigma)
    if isinstance(sigma, torch.Tensor):
        with pytest.raises(ValueError, match="sigma"):
            model(x, sigma.to(torch.float32))


def test_a_sigma_far_above_the_training_range_warns():
    process = VPDiscrete()
    wrapped = NetworkDenoiser(present_as_network(_gaussian(), process, "eps"), process, "eps")
    x = torch.ones(2, 4, dtype=F64)
    with pytest.warns(UserWarning, match=r"sigma = 10000 is above the network's training range \(sigma_max = 157.4"):
        wrapped(x, torch.tensor([1.0, 1e4]).to(F64))
    with pytest.warns(UserWarning, match="training range"):
        ksampling.sample(wrapped, x * 1e4, ksampling.schedules.karras(3, 0.1, 1e4).to(F64))
    guided = ksampling.denoisers.ClassifierFreeGuidance(wrapped, scale=2.0)  # passes the check through
    with pytest.warns(UserWarning, match="training range"):
        ksampling.plan(guided, ksampling.schedules.karras(3, 0.1, 1e4).to(F64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # within the tolerance (float32 rounding of σ_max) and below: no warning
        wrapped(x, torch.tensor([process.sigma_max * 1.001, 0.001]).to(F64))
        ksampling.sample(wrapped, x * process.sigma_max, ksampling.schedules.karras(3, 0.1, process.sigma_max).to(F64))


def test_the_loop_leaves_the_check_on_even_when_interrupted():
    process = VPDiscrete()
    wrapped = NetworkDenoiser(present_as_network(_gaussian(), process, "eps"), process, "eps")

    def interrupting(x, sigma):
        wrapped(x, sigma)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ksampling.sample(interrupting, torch.ones(2, 4, dtype=F64), ksampling.schedules.karras(3, 0.1, 10.0).to(F64))
    with pytest.raises(ValueError, match="NaN"):
        wrapped(torch.ones(2, 4, dtype=F64), torch.tensor([1.0, math.nan]).to(F64))


@pytest.mark.parametrize("process_name, prediction", [("vp_discrete_interpolate", "v"), ("vp_discrete_interpolate", "mean"),
                                                      ("vp_continuous_cosine", "score"), ("rectified_flow", "flow")])
def test_wrapper_is_differentiable_in_x_and_sigma(process_name, prediction):
    # guidance methods and distillation differentiate through D: gradients must be exact
    process = PROCESSES[process_name]()
    wrapped = NetworkDenoiser(present_as_network(_gaussian(), process, prediction), process, prediction)
    # inside the training range (below σ_min the discrete time is clamped and so is D)
    sigma = torch.tensor([0.1, 0.65, 14.6], dtype=F64, requires_grad=True)
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(9), dtype=F64).mul(3).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, s: wrapped(x, s), (x, sigma))


def test_sigma_may_be_a_number_or_one_element():
    process = VPContinuous()
    denoiser = _gaussian()
    wrapped = NetworkDenoiser(present_as_network(denoiser, process, "eps"), process, "eps")
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    expected = denoiser(x, torch.full((3,), 0.8, dtype=F64))
    _close(wrapped(x, 0.8), expected)
    _close(wrapped(x, torch.tensor(0.8, dtype=F64)), expected)
    assert wrapped.sigma_min == process.sigma_min and wrapped.sigma_max == process.sigma_max


@pytest.mark.parametrize(
    "make, exc, name",
    [
        (lambda: NetworkDenoiser(lambda x, t: x, VE(), "epsilon"), ValueError, "prediction.*'eps'.*'mean'"),
        (lambda: NetworkDenoiser(lambda x, t: x, VE(), "mean"), ValueError, "mean.*VPDiscrete"),
        (lambda: NetworkDenoiser(lambda x, t: x, VPContinuous(), "mean"), ValueError, "mean"),
        (lambda: NetworkDenoiser(lambda x, t: x, VE(), "eps", learned_variance="fixed"), ValueError, "learned_variance"),
        (lambda: NetworkDenoiser(lambda x, t: x, "vp", "eps"), TypeError, "process"),
        (lambda: NetworkDenoiser(None, VE(), "eps"), TypeError, "network"),
        (lambda: present_as_network(_gaussian(), VE(), "eps", learned_variance="learned"), ValueError, "learned"),
        (lambda: present_as_network(_gaussian(), VE(), "noise"), ValueError, "prediction"),
        (lambda: EDMPrecond(lambda x, t: x, sigma_data=0.0), ValueError, "sigma_data"),
        (lambda: EDMPrecond(lambda x, t: x, sigma_min=2.0, sigma_max=1.0), ValueError, "sigma_min"),
        (lambda: edm_scalings(torch.ones(2), sigma_data=float("nan")), ValueError, "sigma_data"),
        (lambda: edm_training_sigmas(4, None), TypeError, "generator"),
        (lambda: edm_training_sigmas(0, torch.Generator()), ValueError, "n"),
        (lambda: edm_training_sigmas(4, torch.Generator(), P_std=-1.0), ValueError, "P_std"),
        (lambda: edm_loss(lambda x, s: x, torch.zeros(2, 3), torch.Generator()), TypeError, "precond_denoiser"),
        (lambda: edm_loss(EDMPrecond(lambda x, t: x), torch.zeros(2, 3), 0), TypeError, "generator"),
    ],
)
def test_bad_construction(make, exc, name):
    with pytest.raises(exc, match=name):
        make()


@pytest.mark.parametrize(
    "network, sigma, exc, name",
    [
        (lambda x, t: x, torch.ones(5, dtype=F64), ValueError, "sigma"),
        (lambda x, t: x, torch.ones(3, 1, dtype=F64), ValueError, "sigma"),
        (lambda x, t: x, "1.0", TypeError, "sigma"),
        (lambda x, t: x[:, :2], torch.ones(3, dtype=F64), ValueError, "shape"),
        (lambda x, t: [x], torch.ones(3, dtype=F64), TypeError, "tensor"),
    ],
)
def test_bad_call(network, sigma, exc, name):
    with pytest.raises(exc, match=name):
        NetworkDenoiser(network, VE(), "eps")(torch.zeros(3, 4, dtype=F64), sigma)


def test_learned_variance_needs_twice_the_channels():
    wrapped = NetworkDenoiser(lambda x, t: x, VPDiscrete(), "eps", learned_variance="learned_range")
    with pytest.raises(ValueError, match="2 × 4 channels"):
        wrapped(torch.zeros(3, 4, dtype=F64), torch.ones(3, dtype=F64))


def test_x_must_be_floating_point():
    with pytest.raises(TypeError, match="x must be a floating-point"):
        NetworkDenoiser(lambda x, t: x, VE(), "eps")(torch.zeros(3, 4, dtype=torch.long), torch.ones(3))


def test_no_check_while_torch_compile_traces(monkeypatch):
    # a compiled graph must not read values back: the check is left to the caller there
    from ksampling.denoisers.base import sigma_check_due

    sigma = torch.tensor([1.0, math.nan], dtype=F64)
    assert sigma_check_due(sigma)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert not sigma_check_due(sigma)
    wrapped = NetworkDenoiser(lambda x, t: x, VE(), "eps")
    with HostSyncCounter() as counter:
        wrapped(torch.ones(2, 3, dtype=F64), sigma)
    assert counter.count == 0
