"""ksampling.kdiffusion against the real k-diffusion 0.1.1 (loaded by tests/reference.py).

Every sampler runs on the same float64 inputs with the same noise (an explicit, deterministic
noise sampler: a Brownian tree cannot be seeded identically across the two implementations)
and must give the same sample to 1e-8 relative and the same callback dicts.
"""

from __future__ import annotations

import math
import zlib

import pytest
import torch

import ksampling
import ksampling.kdiffusion as KS
from reference import k_diffusion

RTOL = 1e-8

# k-diffusion's sample_dpm_fast/adaptive call torch.tensor() on the tensors they are given
pytestmark = pytest.mark.filterwarnings("ignore:To copy construct from a tensor:UserWarning")


class ToyDenoiser(torch.nn.Module):
    """A smooth nonlinear D(x; σ) that mixes pixels (not the posterior mean of any data:
    any fixed function tests that two implementations do the same arithmetic)."""

    def forward(self, x, sigma, scale=1.0):
        s = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        mixed = x + 0.1 * x.roll(1, dims=-1) - 0.05 * x.flip(-2)
        return scale * torch.tanh(mixed / (1 + s)) / (1 + 0.1 * s)


def keyed_noise(x):
    """N(0, I) noise that depends only on the (rounded) values of sigma and sigma_next, so that
    two implementations that ask for the same steps get the same numbers."""

    def sampler(sigma, sigma_next):
        key = f"{float(sigma):.9e}/{float(sigma_next):.9e}"
        g = torch.Generator().manual_seed(zlib.crc32(key.encode()))  # stable across runs, unlike hash()
        return torch.randn(x.shape, generator=g, dtype=x.dtype)

    return sampler


def rel_err(a, b):
    return float((a - b).norm() / b.norm())


def grid(n=8, sigma_min=0.05, sigma_max=10.0):
    return KS.append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64).exp())


def start(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64) * 10.0


# name -> extra kwargs; "noise" marks the ones that take a noise_sampler
SAMPLERS = {
    "euler": {},
    "euler_ancestral": {"noise": True},
    "heun": {},
    "dpm_2": {},
    "dpm_2_ancestral": {"noise": True},
    "lms": {},
    "dpmpp_2s_ancestral": {"noise": True},
    "dpmpp_sde": {"noise": True},
    "dpmpp_2m": {},
    "dpmpp_2m_sde": {"noise": True},
    "dpmpp_3m_sde": {"noise": True},
}
OPTIONS = {
    "euler": [{}, {"s_churn": 1.0, "s_noise": 1.003}],
    "heun": [{}, {"s_churn": 2.0}],
    "dpm_2": [{}, {"s_churn": 2.0}],
    "euler_ancestral": [{}, {"eta": 0.5, "s_noise": 0.9}],
    "dpm_2_ancestral": [{}, {"eta": 0.7}],
    "lms": [{}, {"order": 2}],
    "dpmpp_2s_ancestral": [{}, {"eta": 0.0}],
    "dpmpp_sde": [{}, {"eta": 0.5, "r": 0.3}],
    "dpmpp_2m": [{}],
    "dpmpp_2m_sde": [{}, {"solver_type": "heun", "eta": 0.6}],
    "dpmpp_3m_sde": [{}, {"eta": 0.0}],
}


def _needs(solver):
    if solver not in ksampling.available():
        pytest.skip(f"solver {solver!r} is not registered yet")


def _record(store):
    def callback(d):
        store.append({k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in d.items()})

    return callback


def _compare_callbacks(ours, theirs):
    assert len(ours) == len(theirs) > 0
    for a, b in zip(ours, theirs):
        assert set(a) == set(b) == {"x", "i", "sigma", "sigma_hat", "denoised"}
        assert a["i"] == b["i"]
        for key in ("sigma", "sigma_hat"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-12)
        for key in ("x", "denoised"):
            assert rel_err(a[key], b[key]) < RTOL, key


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_samplers_match_k_diffusion(name):
    _needs(name)
    K = k_diffusion()
    model = ToyDenoiser()
    sigmas = grid()
    for options in OPTIONS[name]:
        x = start()
        kwargs = dict(options)
        theirs_cb, ours_cb = [], []
        if SAMPLERS[name].get("noise"):
            kwargs["noise_sampler"] = keyed_noise(x)
        churn = options.get("s_churn", 0) > 0
        # euler/heun/dpm_2 draw their churn noise with torch.randn_like from the global RNG,
        # in k-diffusion and (deliberately, for drop-in behaviour) in the mirror alike.
        torch.manual_seed(123)
        theirs = getattr(K.sampling, f"sample_{name}")(
            model, x, sigmas, extra_args={"scale": 0.9}, callback=_record(theirs_cb), disable=True, **kwargs
        )
        torch.manual_seed(123)
        ours = getattr(KS, f"sample_{name}")(
            model, x, sigmas, extra_args={"scale": 0.9}, callback=_record(ours_cb), disable=True, **kwargs
        )
        assert ours.dtype == theirs.dtype == torch.float64
        assert rel_err(ours, theirs) < RTOL, (name, options, rel_err(ours, theirs))
        _compare_callbacks(ours_cb, theirs_cb)
        if churn:
            # and the churn really drew noise: another global seed gives another sample
            torch.manual_seed(7)
            other = getattr(KS, f"sample_{name}")(model, x, sigmas, extra_args={"scale": 0.9}, disable=True, **kwargs)
            assert rel_err(other, ours) > 1e-6


@pytest.mark.parametrize("name", ["euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral"])
def test_default_noise_is_k_diffusions_global_rng(name):
    """Without a noise_sampler both draw torch.randn_like(x) from the global RNG, in the same
    order: the same global seed gives the same sample."""
    _needs(name)
    K = k_diffusion()
    model, sigmas, x = ToyDenoiser(), grid(6), start(3)
    torch.manual_seed(2024)
    theirs = getattr(K.sampling, f"sample_{name}")(model, x, sigmas, disable=True)
    torch.manual_seed(2024)
    ours = getattr(KS, f"sample_{name}")(model, x, sigmas, disable=True)
    assert rel_err(ours, theirs) < RTOL


@pytest.mark.parametrize("name", ["dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde"])
def test_sde_default_noise_is_a_seeded_brownian_tree(name):
    """The SDE samplers seed their Brownian tree from the global RNG (k-diffusion's contract):
    same global seed, same sample; another seed, another sample."""
    _needs(name)
    model, sigmas, x = ToyDenoiser(), grid(6), start(4)
    torch.manual_seed(11)
    a = getattr(KS, f"sample_{name}")(model, x, sigmas, disable=True)
    torch.manual_seed(11)
    b = getattr(KS, f"sample_{name}")(model, x, sigmas, disable=True)
    torch.manual_seed(12)
    c = getattr(KS, f"sample_{name}")(model, x, sigmas, disable=True)
    assert torch.equal(a, b)
    assert rel_err(a, c) > 1e-3


def test_one_step_grid_does_not_crash():
    """k-diffusion's dpmpp_3m_sde / dpmpp_2m_sde read h before assigning it on a one-step grid
    ending in 0; the mirror takes the one step, which is x <- D(x; σ_0)."""
    K = k_diffusion()
    model, x = ToyDenoiser(), start(5)
    sigmas = torch.tensor([5.0, 0.0], dtype=torch.float64)
    for name in ("dpmpp_3m_sde", "dpmpp_2m_sde"):
        _needs(name)
        with pytest.raises(UnboundLocalError):
            getattr(K.sampling, f"sample_{name}")(model, x, sigmas, disable=True)
        out = getattr(KS, f"sample_{name}")(model, x, sigmas, disable=True)
        assert rel_err(out, model(x, sigmas[:1].expand(2))) < 1e-12


def test_schedules_and_helpers_match():
    K = k_diffusion()
    cases = [
        ("get_sigmas_karras", (10, 0.03, 14.6), {"rho": 7.0}),
        ("get_sigmas_exponential", (10, 0.03, 14.6), {}),
        ("get_sigmas_polyexponential", (10, 0.03, 14.6), {"rho": 2.0}),
        ("get_sigmas_vp", (10,), {}),
    ]
    for name, args, kwargs in cases:
        theirs, ours = getattr(K.sampling, name)(*args, **kwargs), getattr(KS, name)(*args, **kwargs)
        assert ours.dtype == theirs.dtype == torch.float32 and ours.shape == theirs.shape, name
        assert ours[-1] == 0
        # k-diffusion's float32 arithmetic loses up to 2e-4 in get_sigmas_vp's exp(.) - 1 at
        # small t; the mirror computes in float64 and rounds once. Compare with k-diffusion
        # run in float64.
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            exact = getattr(K.sampling, name)(*args, **kwargs)
        finally:
            torch.set_default_dtype(previous)
        torch.testing.assert_close(ours, exact.float(), rtol=1e-7, atol=0)
        torch.testing.assert_close(ours, theirs, rtol=5e-4, atol=0)
    x = start()
    sigma = torch.tensor([2.0, 3.0], dtype=torch.float64)
    denoised = ToyDenoiser()(x, sigma)
    torch.testing.assert_close(KS.to_d(x, sigma, denoised), K.sampling.to_d(x, sigma, denoised), rtol=1e-15, atol=0)
    torch.testing.assert_close(KS.append_zero(sigma), K.sampling.append_zero(sigma))
    for args in [(3.0, 1.5), (3.0, 1.5, 0.5), (3.0, 0.0), (3.0, 1.5, 0.0)]:
        assert KS.get_ancestral_step(*args) == pytest.approx(K.sampling.get_ancestral_step(*args), rel=1e-14)
    down, up = KS.get_ancestral_step(torch.tensor(3.0), torch.tensor(1.5))
    kdown, kup = K.sampling.get_ancestral_step(torch.tensor(3.0), torch.tensor(1.5))
    assert isinstance(down, torch.Tensor) and float(down) == pytest.approx(float(kdown)) and float(up) == pytest.approx(float(kup))


def test_noise_samplers_have_k_diffusions_interface():
    x = start()
    torch.manual_seed(5)
    a = KS.default_noise_sampler(x)(1.0, 0.5)
    torch.manual_seed(5)
    assert torch.equal(a, torch.randn_like(x))
    ns = KS.BrownianTreeNoiseSampler(x, 0.1, 10.0, seed=3)
    n1 = ns(torch.tensor(5.0), torch.tensor(2.0))
    assert n1.shape == x.shape and n1.dtype == x.dtype
    assert torch.equal(n1, KS.BrownianTreeNoiseSampler(x, 0.1, 10.0, seed=3)(5.0, 2.0))
    # seed=None takes the seed from the global RNG, as k-diffusion does
    torch.manual_seed(9)
    b = KS.BrownianTreeNoiseSampler(x, 0.1, 10.0)(5.0, 2.0)
    torch.manual_seed(9)
    assert torch.equal(b, KS.BrownianTreeNoiseSampler(x, 0.1, 10.0)(5.0, 2.0))
    tree = KS.BatchedBrownianTree(x, 0.0, 1.0, seed=[1, 2])
    w = tree(0.2, 0.7)
    assert w.shape == x.shape
    # increments add up: W(0.7) − W(0.2) = (W(0.5) − W(0.2)) + (W(0.7) − W(0.5))
    torch.testing.assert_close(w, tree(0.2, 0.5) + tree(0.5, 0.7))
    # with torchsde installed the tree is k-diffusion's: the same seed gives the same numbers
    K = k_diffusion()
    theirs = K.sampling.BrownianTreeNoiseSampler(x, 0.1, 10.0, seed=3)(torch.tensor(5.0), torch.tensor(2.0))
    assert torch.equal(n1, theirs)


def test_bad_input_is_a_clear_error():
    model, x = ToyDenoiser(), start()
    with pytest.raises(ValueError, match="descending"):
        KS.sample_euler(model, x, torch.tensor([1.0, 2.0, 0.0], dtype=torch.float64), disable=True)
    if "dpmpp_2m_sde" in ksampling.available():
        with pytest.raises(ValueError, match="solver_type"):
            KS.sample_dpmpp_2m_sde(model, x, grid(), solver_type="rk4", disable=True)

    def nan_model(x, sigma):
        return x * float("nan")

    with pytest.raises(ValueError, match="non-finite"):
        KS.sample_euler(nan_model, x, grid(), disable=True)


class float64_default:
    """k-diffusion's DPMSolver builds its λ grid with torch.linspace in the *default* dtype
    (float32), whatever the dtype of x and of the sigmas: run it with float64 as the default
    so that the reference is float64 throughout."""

    def __enter__(self):
        self.previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)

    def __exit__(self, *exc):
        torch.set_default_dtype(self.previous)


def _dpm_callback_compare(ours, theirs, keys):
    assert len(ours) == len(theirs) > 0
    for a, b in zip(ours, theirs):
        assert keys <= set(b) and set(a) <= set(b)
        assert set(a) == keys
        for key in keys:
            if isinstance(b[key], torch.Tensor) and b[key].numel() > 1:
                assert rel_err(a[key], b[key]) < RTOL, key
            else:
                # the error estimate is a difference of two nearly equal solutions: round-off
                # of the two implementations shows in its 8th digit
                rel = 1e-6 if key in ("error", "h") else 1e-10
                assert float(a[key]) == pytest.approx(float(b[key]), rel=rel, abs=1e-12), key


@pytest.mark.parametrize("options", [{}, {"eta": 0.5}])
def test_dpm_fast_matches_k_diffusion(options):
    _needs("dpm_fast")
    K = k_diffusion()
    model, x = ToyDenoiser(), start(6)
    smin, smax = torch.tensor(0.05, dtype=torch.float64), torch.tensor(10.0, dtype=torch.float64)
    for n in (7, 9, 10):
        kwargs = dict(options, noise_sampler=keyed_noise(x))
        theirs_cb, ours_cb = [], []
        with float64_default():
            theirs = K.sampling.sample_dpm_fast(model, x, smin, smax, n, callback=_record(theirs_cb), disable=True, **kwargs)
        ours = KS.sample_dpm_fast(model, x, smin, smax, n, callback=_record(ours_cb), disable=True, **kwargs)
        assert rel_err(ours, theirs) < RTOL, (n, options)
        _dpm_callback_compare(ours_cb, theirs_cb, {"x", "i", "sigma", "sigma_hat", "t", "t_up", "denoised"})
    with pytest.raises(ValueError, match="sigma_min"):
        KS.sample_dpm_fast(model, x, 0.0, 10.0, 5, disable=True)


@pytest.mark.parametrize("options", [{}, {"order": 2, "rtol": 0.01}, {"eta": 0.5}])
def test_dpm_adaptive_matches_k_diffusion(options):
    _needs("dpm_adaptive")
    K = k_diffusion()
    model, x = ToyDenoiser(), start(7)
    smin, smax = torch.tensor(0.05, dtype=torch.float64), torch.tensor(10.0, dtype=torch.float64)
    kwargs = dict(options, noise_sampler=keyed_noise(x), return_info=True)
    theirs_cb, ours_cb = [], []
    with float64_default():
        theirs, theirs_info = K.sampling.sample_dpm_adaptive(model, x, smin, smax, callback=_record(theirs_cb), disable=True, **kwargs)
    ours, ours_info = KS.sample_dpm_adaptive(model, x, smin, smax, callback=_record(ours_cb), disable=True, **kwargs)
    assert rel_err(ours, theirs) < RTOL
    assert ours_info == theirs_info and theirs_info["n_reject"] >= 0 and theirs_info["steps"] > 3
    keys = {"x", "i", "sigma", "sigma_hat", "t", "t_up", "denoised", "error", "h", "steps", "nfe", "n_accept", "n_reject"}
    _dpm_callback_compare(ours_cb, theirs_cb, keys)
    plain = KS.sample_dpm_adaptive(model, x, 0.05, 10.0, disable=True, **dict(options, noise_sampler=keyed_noise(x)))
    assert rel_err(plain, theirs) < RTOL


def test_linear_multistep_coeff_matches():
    K = k_diffusion()
    t = grid(9).numpy()
    for order in (1, 2, 3, 4):
        for i in range(order - 1, 7):
            for j in range(order):
                # k-diffusion integrates with scipy's quad (epsrel 1e-4, exact for these
                # low-degree polynomials in practice); ksampling integrates exactly.
                assert KS.linear_multistep_coeff(order, t, i, j) == pytest.approx(
                    K.sampling.linear_multistep_coeff(order, t, i, j), rel=1e-9, abs=1e-12
                )
    with pytest.raises(ValueError, match="too high"):
        KS.linear_multistep_coeff(3, t, 1, 0)


def test_log_likelihood_matches():
    pytest.importorskip("torchdiffeq")
    K = k_diffusion()

    def model(x, sigma):  # the exact denoiser of N(0.3, 0.5² I) data
        s2 = sigma.reshape(-1, 1, 1, 1) ** 2
        return 0.3 + 0.25 / (0.25 + s2) * (x - 0.3)

    x = start(8)[:, :1, :2, :2] / 10
    torch.manual_seed(1)
    theirs, theirs_info = K.sampling.log_likelihood(model, x, 0.01, 20.0)
    torch.manual_seed(1)
    ours, ours_info = KS.log_likelihood(model, x, 0.01, 20.0)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
    assert ours_info == theirs_info
    # and it is the log-density of the data convolved with N(0, 0.01²): a closed form
    var = 0.25 + 0.01**2
    exact = torch.distributions.Normal(0.3, var**0.5).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(ours, exact, rtol=2e-2, atol=2e-2)


def _alphas_cumprod(n=1000):
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, n, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).float()


class EpsNet(torch.nn.Module):
    def forward(self, x, t, cond=None):
        out = torch.sin(x * 1.3 + t.reshape(-1, *([1] * (x.ndim - 1))) / 300)
        return out if cond is None else out + cond


class FakeCompVis:
    """What CompVisDenoiser needs of a LatentDiffusion model: alphas_cumprod and apply_model."""

    def __init__(self):
        self.alphas_cumprod = _alphas_cumprod()
        self.net = EpsNet()

    def apply_model(self, x, t, cond):
        return self.net(x, t.float(), cond)


def test_external_wrappers_match_k_diffusion():
    K = k_diffusion()
    ac = _alphas_cumprod()
    x = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0)) * 5
    sigma = torch.tensor([0.03, 1.7, 14.0])
    cond = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1)) * 0.1
    for quantize in (False, True):
        pairs = [
            (KS.external.DiscreteEpsDDPMDenoiser(EpsNet(), ac, quantize), K.external.DiscreteEpsDDPMDenoiser(EpsNet(), ac, quantize), {}),
            (KS.external.DiscreteVDDPMDenoiser(EpsNet(), ac, quantize), K.external.DiscreteVDDPMDenoiser(EpsNet(), ac, quantize), {}),
            (KS.external.CompVisDenoiser(FakeCompVis(), quantize), K.external.CompVisDenoiser(FakeCompVis(), quantize), {"cond": cond}),
            (KS.external.CompVisVDenoiser(FakeCompVis(), quantize), K.external.CompVisVDenoiser(FakeCompVis(), quantize), {"cond": cond}),
        ]
        for ours, theirs, kwargs in pairs:
            torch.testing.assert_close(ours(x, sigma, **kwargs), theirs(x, sigma, **kwargs), rtol=1e-5, atol=1e-5)
            t_ours, t_theirs = ours.sigma_to_t(sigma), theirs.sigma_to_t(sigma)
            assert t_ours.dtype == t_theirs.dtype
            torch.testing.assert_close(t_ours, t_theirs, rtol=1e-5, atol=1e-4)
            torch.testing.assert_close(ours.sigma_to_t(sigma, quantize=not quantize).double(),
                                       theirs.sigma_to_t(sigma, quantize=not quantize).double(), rtol=1e-5, atol=1e-4)
            t = torch.tensor([0.0, 10.5, 999.0])
            torch.testing.assert_close(ours.t_to_sigma(t), theirs.t_to_sigma(t), rtol=1e-5, atol=0)
            for n in (None, 7):
                torch.testing.assert_close(ours.get_sigmas(n), theirs.get_sigmas(n), rtol=1e-5, atol=0)
            torch.testing.assert_close(ours.sigma_min, theirs.sigma_min)
            torch.testing.assert_close(ours.sigma_max, theirs.sigma_max)
            noise = torch.randn_like(x)
            torch.testing.assert_close(ours.loss(x, noise, sigma, **kwargs), theirs.loss(x, noise, sigma, **kwargs), rtol=1e-4, atol=1e-5)
            for a, b in zip(ours.get_scalings(sigma), theirs.get_scalings(sigma)):
                torch.testing.assert_close(a, b)

    class Diffusion:
        alphas_cumprod = ac.double().numpy()

    class LearnedSigmaNet(torch.nn.Module):
        def forward(self, x, t):
            return torch.cat([EpsNet()(x, t), x * 0 + 7], dim=1)

    ours = KS.external.OpenAIDenoiser(LearnedSigmaNet(), Diffusion())
    theirs = K.external.OpenAIDenoiser(LearnedSigmaNet(), Diffusion())
    torch.testing.assert_close(ours(x, sigma), theirs(x, sigma), rtol=1e-5, atol=1e-5)

    class VNet(torch.nn.Module):
        def forward(self, x, t):
            return torch.cos(x + t.reshape(-1, 1, 1, 1))

    torch.testing.assert_close(KS.external.VDenoiser(VNet())(x, sigma), K.external.VDenoiser(VNet())(x, sigma), rtol=1e-5, atol=1e-5)
    noise = torch.randn_like(x)
    torch.testing.assert_close(KS.external.VDenoiser(VNet()).loss(x, noise, sigma), K.external.VDenoiser(VNet()).loss(x, noise, sigma))


def test_overridden_get_eps_and_sigma_to_t_are_used():
    """A1111-style subclasses override get_eps / sigma_to_t; the mirror must call them."""
    calls = []

    class Custom(KS.external.DiscreteEpsDDPMDenoiser):
        def get_eps(self, x, t, **kwargs):
            calls.append(t)
            return torch.zeros_like(x)

        def sigma_to_t(self, sigma, quantize=None):
            return sigma * 0 + 42.0

    model = Custom(EpsNet(), _alphas_cumprod(), False)
    x = torch.randn(2, 1, 2, 2)
    out = model(x, torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(out, x)  # ε = 0 -> D = x
    assert calls and torch.equal(calls[0], torch.tensor([42.0, 42.0]))


def k_diffusion_style_script(K, ldm, cond, uncond, steps=8, cfg_scale=5.0, seed=0):
    """A small A1111/ComfyUI-style function written against k-diffusion's API only."""

    class CFGDenoiser(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.inner_model = model

        def forward(self, x, sigma, cond, uncond, cond_scale):
            x_in = torch.cat([x] * 2)
            sigma_in = torch.cat([sigma] * 2)
            cond_in = torch.cat([uncond, cond])
            uncond_out, cond_out = self.inner_model(x_in, sigma_in, cond=cond_in).chunk(2)
            return uncond_out + (cond_out - uncond_out) * cond_scale

    model_wrap = K.external.CompVisDenoiser(ldm)
    sigma_min, sigma_max = float(model_wrap.sigmas[0]), float(model_wrap.sigmas[-1])
    sigmas = K.sampling.get_sigmas_karras(steps, sigma_min, sigma_max)
    torch.manual_seed(seed)
    x = torch.randn(2, 2, 4, 4) * sigmas[0]
    seen = []

    def callback(d):
        seen.append((d["i"], float(d["sigma"]), float(d["denoised"].abs().mean())))

    samples = K.sampling.sample_dpmpp_2m(
        CFGDenoiser(model_wrap), x, sigmas, extra_args={"cond": cond, "uncond": uncond, "cond_scale": cfg_scale},
        callback=callback, disable=True,
    )
    return samples, seen


def test_k_diffusion_script_runs_unchanged_after_swapping_the_import():
    K = k_diffusion()
    ldm = FakeCompVis()
    cond = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(3)) * 0.2
    uncond = torch.zeros_like(cond)
    theirs, theirs_seen = k_diffusion_style_script(K, ldm, cond, uncond)
    ours, ours_seen = k_diffusion_style_script(KS, ldm, cond, uncond)
    assert len(ours_seen) == len(theirs_seen) == 8
    assert [i for i, _, _ in ours_seen] == list(range(8))
    for (i, s, m), (j, t, n) in zip(ours_seen, theirs_seen):
        assert i == j and s == pytest.approx(t, rel=1e-5) and m == pytest.approx(n, rel=1e-4)
    # float32 model and schedule: agreement to float32 accuracy
    assert rel_err(ours, theirs) < 1e-4


def test_namespaces_import_like_k_diffusion():
    import importlib

    sampling = importlib.import_module("ksampling.kdiffusion.sampling")
    external = importlib.import_module("ksampling.kdiffusion.external")
    assert sampling.sample_euler is KS.sample_euler and external.CompVisDenoiser is KS.CompVisDenoiser
    utils = importlib.import_module("ksampling.kdiffusion.utils")
    assert utils.append_dims(torch.ones(2), 4).shape == (2, 1, 1, 1)
    K = k_diffusion()
    public = {n for n in dir(K.sampling) if not n.startswith("_") and callable(getattr(K.sampling, n))}
    imported = {"trange", "tqdm", "odeint", "integrate", "nn", "torch", "math", "torchsde", "utils"}
    missing = sorted(n for n in public - imported if not hasattr(sampling, n))
    assert missing == [], missing
    for name in ["VDenoiser", "DiscreteSchedule", "DiscreteEpsDDPMDenoiser", "OpenAIDenoiser", "CompVisDenoiser",
                 "DiscreteVDDPMDenoiser", "CompVisVDenoiser"]:
        assert hasattr(external, name)
    import inspect

    for name in [n for n in public - imported if n.startswith(("sample_", "get_"))] + ["DPMSolver", "log_likelihood"]:
        ours_sig = inspect.signature(getattr(sampling, name))
        theirs_sig = inspect.signature(getattr(K.sampling, name))
        assert list(ours_sig.parameters) == list(theirs_sig.parameters), name
        for p in theirs_sig.parameters.values():
            assert ours_sig.parameters[p.name].default == p.default, (name, p.name)


def test_dpm_solver_class_matches():
    K = k_diffusion()
    model, x = ToyDenoiser(), start(12)
    counts = {"ours": 0, "theirs": 0}
    ours = KS.DPMSolver(model, {"scale": 0.8}, eps_callback=lambda: counts.__setitem__("ours", counts["ours"] + 1))
    theirs = K.sampling.DPMSolver(model, {"scale": 0.8}, eps_callback=lambda: counts.__setitem__("theirs", counts["theirs"] + 1))
    t, t_next = torch.tensor(-2.0, dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64)
    for method, kwargs in [("dpm_solver_1_step", {}), ("dpm_solver_2_step", {"r1": 0.4}), ("dpm_solver_3_step", {})]:
        a, cache_a = getattr(ours, method)(x, t, t_next, **kwargs)
        b, cache_b = getattr(theirs, method)(x, t, t_next, **kwargs)
        assert rel_err(a, b) < RTOL and set(cache_a) == set(cache_b)
        for key in cache_b:
            assert rel_err(cache_a[key], cache_b[key]) < RTOL
        # a filled cache is used, not recomputed
        before = counts["ours"]
        again, _ = getattr(ours, method)(x, t, t_next, eps_cache=cache_a, **kwargs)
        assert counts["ours"] == before and torch.equal(again, a)
    assert counts["ours"] == counts["theirs"]
    infos_a, infos_b = [], []
    ours.info_callback, theirs.info_callback = _record(infos_a), _record(infos_b)
    with float64_default():
        b = theirs.dpm_solver_fast(x, t, t_next, 7, noise_sampler=keyed_noise(x))
        b_adaptive, b_info = theirs.dpm_solver_adaptive(x, t, t_next, noise_sampler=keyed_noise(x))
    a = ours.dpm_solver_fast(x, t, t_next, 7, noise_sampler=keyed_noise(x))
    a_adaptive, a_info = ours.dpm_solver_adaptive(x, t, t_next, noise_sampler=keyed_noise(x))
    assert rel_err(a, b) < RTOL and rel_err(a_adaptive, b_adaptive) < RTOL and a_info == b_info
    assert [d["i"] for d in infos_a] == [d["i"] for d in infos_b[: len(infos_a)]]
    assert set(infos_a[0]) == {"x", "i", "t", "t_up", "denoised"} <= set(infos_b[0])
    assert counts["ours"] == counts["theirs"]


@pytest.mark.parametrize("name", ["dpmpp_2m", "dpmpp_3m_sde", "euler_ancestral"])
def test_host_syncs_do_not_grow_with_the_step_count(name):
    """k-diffusion converts tensors to Python values inside every step; the mirror only
    before and after the loop, so the count is the same for 4 and 16 steps."""
    from helpers import HostSyncCounter

    K = k_diffusion()
    model, x = ToyDenoiser(), start(13)
    counts = {}
    for impl, module in (("ours", KS), ("theirs", K.sampling)):
        for n in (4, 16):
            sigmas = grid(n)
            kwargs = {"noise_sampler": keyed_noise(x)} if name != "dpmpp_2m" else {}
            with HostSyncCounter() as counter:
                getattr(module, f"sample_{name}")(model, x, sigmas, disable=True, **kwargs)
            counts[impl, n] = counter.count
    assert counts["ours", 4] == counts["ours", 16], counts
    assert counts["theirs", 16] > counts["theirs", 4], counts
