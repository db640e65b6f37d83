"""The seeded Brownian tree: a deterministic W(t) whose increments add, are Gaussian with
variance Δt, do not depend on the order of the queries or on the batch, cost no host syncs,
and make an SDE solver converge pathwise as the step count grows."""

from __future__ import annotations

import math
import random
import warnings

import pytest
import torch

import ksampling
from helpers import HostSyncCounter, SmoothToy, karras_grid
from ksampling.samplers.brownian import BatchedBrownianTree, BrownianTreeNoiseSampler

F64 = torch.float64


def zeros(*shape):
    return torch.zeros(*shape, dtype=F64)


def test_increments_add_exactly():
    tree = BatchedBrownianTree(zeros(3, 50), 0.02, 20.0, seed=[1, 2, 3])
    points = [0.02, 0.031, 0.5, 0.5000001, 1.7, 7.3, 19.99, 20.0]
    for a, b, c in [(0.031, 1.7, 19.99), (0.02, 0.5, 20.0), (0.5, 0.5000001, 7.3), (7.3, 1.7, 0.031)]:
        assert (tree(a, c) - tree(a, b) - tree(b, c)).abs().max() < 1e-6
    # a telescoping sum over a whole grid
    total = sum(tree(points[k], points[k + 1]) for k in range(len(points) - 1))
    assert (total - tree(points[0], points[-1])).abs().max() < 1e-6
    # and through the normalised noise sampler: √Δ_ac n(a, c) = √Δ_ab n(a, b) + √Δ_bc n(b, c)
    sampler = BrownianTreeNoiseSampler(zeros(2, 40), 0.02, 20.0, seed=9)
    a, b, c = 10.0, 2.5, 0.4
    lhs = math.sqrt(a - c) * sampler(a, c)
    rhs = math.sqrt(a - b) * sampler(a, b) + math.sqrt(b - c) * sampler(b, c)
    assert (lhs - rhs).abs().max() < 1e-6


def test_increments_are_gaussian_with_variance_dt():
    n = 20_000
    tree = BatchedBrownianTree(zeros(1, n), 0.0, 10.0, seed=5)
    for a, b in [(0.0, 10.0), (2.0, 2.5), (7.1, 7.1001), (3.3, 3.30001)]:
        inc = tree(a, b)[0]
        dt = b - a
        # sample mean and variance within ~5 standard errors of N(0, dt)
        assert abs(inc.mean().item()) < 5 * math.sqrt(dt / n)
        assert abs(inc.var().item() / dt - 1) < 5 * math.sqrt(2 / n)
        kurtosis = ((inc / math.sqrt(dt)) ** 4).mean().item()
        assert abs(kurtosis - 3) < 0.3
    # disjoint increments are uncorrelated, nested ones have covariance = the shared length
    u, v, w = tree(1.0, 3.0)[0], tree(3.0, 4.0)[0], tree(1.0, 4.0)[0]
    assert abs((u * v).mean().item()) < 5 * math.sqrt(2.0 * 1.0 / n)
    assert abs((u * w).mean().item() / 2.0 - 1) < 5 * math.sqrt(2 / n)


def test_noise_sampler_is_standard_normal():
    n = 20_000
    sampler = BrownianTreeNoiseSampler(zeros(2, n // 2), 0.03, 80.0, seed=11)
    for sigma, sigma_next in [(80.0, 40.0), (1.0, 0.9), (0.04, 0.0399)]:
        z = sampler(sigma, sigma_next)
        assert abs(z.mean().item()) < 5 / math.sqrt(n)
        assert abs(z.var().item() - 1) < 5 * math.sqrt(2 / n)


def test_same_noise_whatever_the_query_order():
    queries = [(10.0, 8.0), (8.0, 3.0), (3.0, 2.9), (2.9, 0.1), (5.0, 0.5), (0.5, 0.05)]
    reference = None
    for order in range(4):
        sampler = BrownianTreeNoiseSampler(zeros(2, 7), 0.05, 10.0, seed=[3, 4])
        shuffled = list(queries)
        random.Random(order).shuffle(shuffled)
        values = {q: sampler(*q) for q in shuffled}
        if reference is None:
            reference = values
        for q in queries:
            assert torch.equal(values[q], reference[q])


def test_per_sample_seeds_do_not_depend_on_the_batch():
    big = BatchedBrownianTree(zeros(4, 3, 5), 0.1, 5.0, seed=[10, 20, 30, 40])
    small = BatchedBrownianTree(zeros(2, 3, 5), 0.1, 5.0, seed=[30, 10])
    alone = BatchedBrownianTree(zeros(1, 3, 5), 0.1, 5.0, seed=[40])
    for a, b in [(5.0, 1.0), (1.0, 0.3), (0.3, 0.1)]:
        w = big(a, b)
        assert torch.equal(small(a, b)[0], w[2]) and torch.equal(small(a, b)[1], w[0])
        assert torch.equal(alone(a, b)[0], w[3])
        assert not torch.equal(w[0], w[1])


def test_generators_seed_the_tree_and_the_global_rng_is_untouched():
    x = zeros(3, 6)
    state = torch.get_rng_state()
    one = BrownianTreeNoiseSampler(x, 0.1, 5.0, generator=torch.Generator().manual_seed(7))(5.0, 1.0)
    again = BrownianTreeNoiseSampler(x, 0.1, 5.0, generator=torch.Generator().manual_seed(7))(5.0, 1.0)
    other = BrownianTreeNoiseSampler(x, 0.1, 5.0, generator=torch.Generator().manual_seed(8))(5.0, 1.0)
    assert torch.equal(one, again) and not torch.equal(one, other)
    per_sample = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    batch = BrownianTreeNoiseSampler(x, 0.1, 5.0, generator=per_sample)(5.0, 1.0)
    single = BrownianTreeNoiseSampler(x[1:2], 0.1, 5.0, generator=[torch.Generator().manual_seed(2)])(5.0, 1.0)
    assert torch.equal(batch[1], single[0])
    BrownianTreeNoiseSampler(x, 0.1, 5.0)(5.0, 1.0)  # fresh entropy, not the global RNG
    assert torch.equal(torch.get_rng_state(), state)


def test_clamps_outside_the_range_without_warnings():
    sampler = BrownianTreeNoiseSampler(zeros(2, 4), 0.1, 5.0, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        beyond = sampler(9.0, 1.0)  # clamped to 5 -> 1
        inside = sampler(5.0, 1.0)
        below = sampler(0.5, 0.001)  # clamped to 0.5 -> 0.1
        nothing = sampler(0.05, 0.01)  # entirely below: no increment
    assert torch.equal(beyond, inside)
    assert torch.allclose(below, sampler(0.5, 0.1))
    assert torch.isfinite(beyond).all() and torch.equal(nothing, torch.zeros_like(nothing))


def test_tensor_arguments_and_transform():
    """k-diffusion passes 0-dim tensors and sometimes a transform of sigma (e.g. its log)."""
    x = zeros(2, 5)
    plain = BrownianTreeNoiseSampler(x, 0.1, 5.0, seed=4)
    assert torch.equal(plain(torch.tensor(5.0, dtype=F64), torch.tensor(1.0, dtype=F64)), plain(5.0, 1.0))
    logged = BrownianTreeNoiseSampler(x, 0.1, 5.0, seed=4, transform=lambda s: s.log())
    t0, t1 = math.log(0.1), math.log(5.0)
    tree = BatchedBrownianTree(x, t0, t1, seed=4)
    expected = tree(math.log(5.0), math.log(1.0)) / math.sqrt(math.log(5.0))
    assert torch.allclose(logged(5.0, 1.0), expected, rtol=1e-12, atol=1e-12)


def test_reversed_interval_and_sign():
    x = zeros(1, 4)
    tree = BatchedBrownianTree(x, 0.0, 2.0, seed=3)
    assert torch.equal(tree(0.5, 1.5), -tree(1.5, 0.5))
    flipped = BatchedBrownianTree(x, 2.0, 0.0, seed=3)  # k-diffusion's convention: sign flips
    assert torch.equal(flipped(0.5, 1.5), -tree(0.5, 1.5))


def test_bad_arguments():
    x = zeros(2, 3)
    with pytest.raises(ValueError, match="seed"):
        BatchedBrownianTree(x, 0.0, 1.0, seed=[1, 2, 3])
    with pytest.raises(TypeError, match="seed"):
        BatchedBrownianTree(x, 0.0, 1.0, seed=1.5)
    with pytest.raises(ValueError, match="seed or generator"):
        BatchedBrownianTree(x, 0.0, 1.0, seed=1, generator=torch.Generator())
    with pytest.raises(ValueError, match="tol"):
        BatchedBrownianTree(x, 0.0, 1.0, seed=1, tol=0.0)
    with pytest.raises(ValueError, match="t0 and t1"):
        BatchedBrownianTree(x, 1.0, 1.0, seed=1)
    with pytest.raises(ValueError, match="sigma_max"):
        BrownianTreeNoiseSampler(x, 0.1, math.inf, seed=1)
    with pytest.raises(TypeError, match="transform"):
        BrownianTreeNoiseSampler(x, 0.1, 1.0, seed=1, transform=3)


def test_no_host_syncs_per_query():
    sampler = BrownianTreeNoiseSampler(zeros(2, 8), 0.05, 10.0, seed=[1, 2])
    sigmas = karras_grid(20, 0.05, 10.0, append_zero=False).tolist()
    with HostSyncCounter() as counter:
        for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
            sampler(sigma, sigma_next)
    assert counter.count == 0, counter.names


def test_cost_is_a_few_draws_per_step():
    """A sampling run costs O(steps · depth) node draws, not O(steps · depth²)."""
    sampler = BrownianTreeNoiseSampler(zeros(1, 2), 0.05, 10.0, seed=1)
    tree = sampler.tree
    draws = 0
    original = tree._draw

    def counting(level, index):
        nonlocal draws
        draws += 1
        return original(level, index)

    tree._draw = counting
    sigmas = karras_grid(50, 0.05, 10.0, append_zero=False).tolist()
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        sampler(sigma, sigma_next)
    assert draws <= 49 * (tree.depth + 1)


@pytest.mark.parametrize("solver", ["dpmpp_2m_sde", "dpmpp_sde", "dpmpp_3m_sde"])
def test_sde_solution_converges_pathwise(solver):
    """With one Brownian path for all step counts, the N-step and 2N-step answers approach each
    other; with fresh i.i.d. noise per run they do not."""
    model = SmoothToy()  # nonlinear and cheap
    x = torch.randn(4, 4, generator=torch.Generator().manual_seed(1), dtype=F64) * 10.0
    sigma_min, sigma_max = 0.05, 10.0
    counts = [8, 16, 32, 64, 128]

    def run(n, brownian=True):
        sigmas = karras_grid(n, sigma_min, sigma_max, append_zero=False)
        noise = BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed=5) if brownian else None
        gen = None if brownian else torch.Generator().manual_seed(n)
        return ksampling.sample(model, x, sigmas, solver, noise_sampler=noise, generator=gen)

    answers = [run(n) for n in counts]
    gaps = [float((a - b).norm() / b.norm()) for a, b in zip(answers, answers[1:])]
    # (the first doubling can be pre-asymptotic)
    assert all(g2 < 0.75 * g1 for g1, g2 in zip(gaps[1:], gaps[2:])), gaps
    assert gaps[-1] < 0.3 * gaps[0], gaps
    iid_gap = float((run(64, brownian=False) - run(128, brownian=False)).norm() / answers[-1].norm())
    assert iid_gap > 5 * gaps[-1], (iid_gap, gaps)


def test_cpu_option_draws_the_same_numbers_on_the_host():
    x = zeros(2, 5)
    default = BrownianTreeNoiseSampler(x, 0.1, 5.0, seed=[1, 2])(5.0, 1.0)
    on_cpu = BrownianTreeNoiseSampler(x, 0.1, 5.0, seed=[1, 2], cpu=True)(5.0, 1.0)
    assert torch.equal(default, on_cpu)
    with pytest.raises(TypeError, match="cpu"):
        BrownianTreeNoiseSampler(x, 0.1, 5.0, seed=1, cpu="yes")
    if torch.cuda.is_available():
        on_gpu = BrownianTreeNoiseSampler(x.cuda(), 0.1, 5.0, seed=[1, 2], cpu=True)(5.0, 1.0)
        assert torch.equal(on_gpu.cpu(), default)
