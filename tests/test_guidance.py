"""Classifier-free guidance: one batched call, the two-call formula, the σ interval per sample."""

from __future__ import annotations

import math

import pytest
import torch

import ksampling
from helpers import HostSyncCounter
from ksampling.denoisers import ClassifierFreeGuidance, LearnedVariance

F64 = torch.float64


class ConditionalGaussian:
    """x0 | c ~ N(c, var): D(x; σ, c) = c + var/(var + σ²)(x − c). Counts calls and batch sizes."""

    def __init__(self, var=0.3):
        self.var = var
        self.batches = []

    def __call__(self, x, sigma, cond, offset=0.0):
        self.batches.append(x.shape[0])
        assert sigma.shape == (x.shape[0],)
        mean = cond + offset
        return mean + self.var / (self.var + sigma[:, None] ** 2) * (x - mean)


class DictConditional(ConditionalGaussian):
    def __call__(self, x, sigma, cond):
        self.batches.append(x.shape[0])
        mean = cond["a"] + 2 * cond["b"]
        return mean + self.var / (self.var + sigma[:, None] ** 2) * (x - mean)


def _inputs(batch=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, generator=g, dtype=F64) * 2
    cond = torch.randn(batch, 3, generator=g, dtype=F64)
    uncond = torch.zeros(batch, 3, dtype=F64)
    sigma = torch.exp(torch.linspace(math.log(0.05), math.log(20.0), batch, dtype=F64))
    return x, sigma, cond, uncond


@pytest.mark.parametrize("scale", [0.0, 3.5, 7.5, -1.0])
def test_equals_the_two_call_formula_in_one_batched_call(scale):
    x, sigma, cond, uncond = _inputs()
    model = ConditionalGaussian()
    guided = ClassifierFreeGuidance(model, scale)(x, sigma, cond=cond, uncond=uncond, offset=0.25)
    assert model.batches == [2 * len(x)]
    reference = ConditionalGaussian()
    d_cond = reference(x, sigma, cond, offset=0.25)
    d_uncond = reference(x, sigma, uncond, offset=0.25)
    torch.testing.assert_close(guided, d_uncond + scale * (d_cond - d_uncond), rtol=1e-13, atol=1e-13)


def test_dict_conditioning_is_concatenated_per_key():
    x, sigma, cond, uncond = _inputs(seed=1)
    b = torch.randn(5, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    model = DictConditional()
    guided = ClassifierFreeGuidance(model, 4.0)(x, sigma, cond={"a": cond, "b": b}, uncond={"a": uncond, "b": 0 * b})
    assert model.batches == [10]
    d_cond = DictConditional()(x, sigma, {"a": cond, "b": b})
    d_uncond = DictConditional()(x, sigma, {"a": uncond, "b": 0 * b})
    torch.testing.assert_close(guided, d_uncond + 4.0 * (d_cond - d_uncond))


def test_a_batch_of_one_conditioning_is_broadcast():
    x, sigma, cond, _ = _inputs(seed=3)
    model = ConditionalGaussian()
    guided = ClassifierFreeGuidance(model, 2.5)(x, sigma, cond=cond[:1], uncond=torch.zeros(1, 3, dtype=F64))
    assert model.batches == [10]
    d_cond = ConditionalGaussian()(x, sigma, cond[:1].expand(5, 3))
    d_uncond = ConditionalGaussian()(x, sigma, torch.zeros(5, 3, dtype=F64))
    torch.testing.assert_close(guided, d_uncond + 2.5 * (d_cond - d_uncond))


def test_sigma_interval_is_decided_per_sample():
    x, sigma, cond, uncond = _inputs(batch=6)
    lo, hi = 0.3, 5.0
    inside = (sigma >= lo) & (sigma <= hi)
    assert 0 < int(inside.sum()) < 6  # the probe has samples on both sides
    guided = ClassifierFreeGuidance(ConditionalGaussian(), 6.0, sigma_interval=(lo, hi))(x, sigma, cond=cond, uncond=uncond)
    d_cond = ConditionalGaussian()(x, sigma, cond)
    d_uncond = ConditionalGaussian()(x, sigma, uncond)
    for i in range(6):
        weight = 6.0 if lo <= sigma[i].item() <= hi else 1.0
        torch.testing.assert_close(guided[i], d_uncond[i] + weight * (d_cond[i] - d_uncond[i]))
    # outside the interval it is the plain conditional denoiser
    torch.testing.assert_close(guided[~inside], d_cond[~inside], rtol=1e-14, atol=1e-14)
    # the endpoints are inside
    edge = torch.tensor([lo, hi], dtype=F64)
    guided_edge = ClassifierFreeGuidance(ConditionalGaussian(), 6.0, sigma_interval=(lo, hi))(
        x[:2], edge, cond=cond[:2], uncond=uncond[:2]
    )
    d_c, d_u = ConditionalGaussian()(x[:2], edge, cond[:2]), ConditionalGaussian()(x[:2], edge, uncond[:2])
    torch.testing.assert_close(guided_edge, d_u + 6.0 * (d_c - d_u))


def test_scale_one_is_the_conditional_denoiser_in_one_unbatched_call():
    x, sigma, cond, uncond = _inputs()
    model = ConditionalGaussian()
    out = ClassifierFreeGuidance(model, 1.0)(x, sigma, cond=cond, uncond=uncond)
    assert model.batches == [5]
    torch.testing.assert_close(out, ConditionalGaussian()(x, sigma, cond), rtol=0, atol=0)


def test_no_host_syncs_with_an_interval():
    x, sigma, cond, uncond = _inputs()
    cfg = ClassifierFreeGuidance(ConditionalGaussian(), 5.0, sigma_interval=(0.1, 3.0))
    with HostSyncCounter() as counter:
        cfg(x, sigma, cond=cond, uncond=uncond)
    assert counter.count == 0, counter.names


def test_learned_variance_comes_from_the_conditional_half():
    class WithVariance(ConditionalGaussian):
        def denoise_with_variance(self, x, sigma, cond):
            return self(x, sigma, cond), LearnedVariance("learned_range", cond.clone())

    x, sigma, cond, uncond = _inputs()
    cfg = ClassifierFreeGuidance(WithVariance(), 3.0)
    denoised, variance = cfg.denoise_with_variance(x, sigma, cond=cond, uncond=uncond)
    torch.testing.assert_close(denoised, cfg(x, sigma, cond=cond, uncond=uncond))
    assert variance.kind == "learned_range" and torch.equal(variance.value, cond)
    # without one, None
    assert ClassifierFreeGuidance(ConditionalGaussian(), 3.0).denoise_with_variance(x, sigma, cond=cond, uncond=uncond)[1] is None


def test_sampling_with_guidance_costs_one_call_per_step():
    x, _, cond, uncond = _inputs()
    model = ConditionalGaussian()
    sigmas = torch.tensor([10.0, 3.0, 1.0, 0.3, 0.0], dtype=F64)
    out, info = ksampling.sample(
        ClassifierFreeGuidance(model, 2.0), x * 10, sigmas, "euler", extra_args=dict(cond=cond, uncond=uncond), return_info=True
    )
    assert info.nfe == 4 and model.batches == [10] * 4
    # Gaussian data, guided: D_w has mean c_u + w (c − c_u) = 2 c and the same variance schedule,
    # so one Euler run on the guided denoiser equals one on N(2c, var)
    reference = ksampling.sample(lambda x, s: ConditionalGaussian()(x, s, 2 * cond), x * 10, sigmas, "euler")
    torch.testing.assert_close(out, reference)


@pytest.mark.parametrize(
    "kwargs, exc, name",
    [
        (dict(scale=float("inf")), ValueError, "scale"),
        (dict(scale=float("nan")), ValueError, "scale"),
        (dict(scale="7"), TypeError, "scale"),
        (dict(scale=7.0, sigma_interval=(5.0, 1.0)), ValueError, "sigma_interval"),
        (dict(scale=7.0, sigma_interval=(-1.0, 1.0)), ValueError, "sigma_interval"),
        (dict(scale=7.0, sigma_interval=(1.0,)), ValueError, "sigma_interval"),
        (dict(scale=7.0, sigma_interval=5.0), ValueError, "sigma_interval"),
        (dict(scale=7.0, cond_key="c", uncond_key="c"), ValueError, "cond_key"),
        (dict(scale=7.0, cond_key=""), TypeError, "cond_key"),
    ],
)
def test_bad_construction(kwargs, exc, name):
    with pytest.raises(exc, match=name):
        ClassifierFreeGuidance(ConditionalGaussian(), **kwargs)


@pytest.mark.parametrize(
    "call_kwargs, exc, name",
    [
        (dict(uncond=torch.zeros(5, 3, dtype=F64)), TypeError, "'cond'"),
        (dict(cond=torch.zeros(5, 3, dtype=F64)), TypeError, "'uncond'"),
        (dict(cond=torch.zeros(5, 3, dtype=F64), uncond=torch.zeros(5, 4, dtype=F64)), ValueError, "same shape"),
        (dict(cond={"a": torch.zeros(5, 3)}, uncond={"b": torch.zeros(5, 3)}), ValueError, "same keys"),
        (dict(cond=torch.zeros(5, 3, dtype=F64), uncond=None), TypeError, "uncond"),
        (dict(cond=torch.zeros(4, 3, dtype=F64), uncond=torch.zeros(4, 3, dtype=F64)), ValueError, "cond must have the batch"),
        (dict(cond={"a": torch.zeros(5, 3)}, uncond={"a": torch.zeros(2, 3)}), ValueError, r"uncond\['a'\] must have the batch"),
    ],
)
def test_bad_call(call_kwargs, exc, name):
    x, sigma, _, _ = _inputs()
    with pytest.raises(exc, match=name):
        ClassifierFreeGuidance(ConditionalGaussian(), 3.0)(x, sigma, **call_kwargs)
