"""Analytic denoisers against independent answers: Tweedie's formula through autograd on the
log density, brute-force numpy for the ideal denoiser, scipy DOP853 for the Gaussian ODE,
quadrature for normalisation, Monte Carlo for sampling, closed forms for KL / W2."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from helpers import HostSyncCounter
from ksampling.denoisers import analytic
from ksampling.denoisers.analytic import Dirac, Empirical, Gaussian, GaussianMixture

F64 = torch.float64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def random_cov(d, seed, low=0.05, high=2.0):
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(d, d)))
    cov = (basis * rng.uniform(low, high, d)) @ basis.T
    return torch.tensor((cov + cov.T) / 2, dtype=F64)


def denoisers():
    """One of each kind and covariance form; event shapes include a 2-D one."""
    g = gen(1)
    return {
        "dirac": Dirac(torch.randn(2, 3, dtype=F64, generator=g)),
        "gauss-iso": Gaussian(torch.randn(2, 3, dtype=F64, generator=g), var=0.3),
        "gauss-diag": Gaussian(torch.randn(4, dtype=F64, generator=g), var=torch.tensor([0.01, 0.5, 1.0, 4.0], dtype=F64)),
        "gauss-full": Gaussian(torch.randn(2, 2, dtype=F64, generator=g), cov=random_cov(4, 0)),
        "gmm-shared": GaussianMixture(
            torch.tensor([0.2, 0.5, 0.3], dtype=F64), torch.randn(3, 2, 2, dtype=F64, generator=g) * 2, var=0.2
        ),
        "gmm-per-comp": GaussianMixture(
            torch.tensor([0.6, 0.4], dtype=F64),
            torch.randn(2, 3, dtype=F64, generator=g) * 2,
            var=torch.tensor([0.05, 1.5], dtype=F64),
        ),
        "gmm-diag": GaussianMixture(
            torch.tensor([0.5, 0.5], dtype=F64),
            torch.randn(2, 3, dtype=F64, generator=g),
            var=torch.rand(2, 3, dtype=F64, generator=g) + 0.05,
        ),
        "gmm-full": GaussianMixture(
            torch.tensor([0.1, 0.3, 0.6], dtype=F64),
            torch.randn(3, 3, dtype=F64, generator=g) * 2,
            cov=torch.stack([random_cov(3, s) for s in range(3)]),
        ),
        "empirical": Empirical(torch.randn(50, 2, 3, dtype=F64, generator=g), chunk_size=16),
    }


SIGMAS = [0.05, 0.4, 1.0, 3.0, 30.0]


def batch(denoiser, seed=0):
    g = gen(seed)
    x0 = denoiser.sample(len(SIGMAS), generator=g)
    sigma = torch.tensor(SIGMAS, dtype=F64)
    x = x0 + sigma.reshape(-1, *[1] * len(denoiser.event_shape)) * torch.randn(x0.shape, dtype=F64, generator=g)
    return x, sigma


@pytest.mark.parametrize("name", list(denoisers()))
def test_tweedie_through_autograd(name):
    """D(x; σ) = x + σ² ∇ log p_σ(x), with ∇ by autograd on log_prob (independent of forward)."""
    denoiser = denoisers()[name]
    x, sigma = batch(denoiser)
    x_req = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(denoiser.log_prob(x_req, sigma).sum(), x_req)
    expected = x + sigma.reshape(-1, *[1] * (x.ndim - 1)) ** 2 * grad
    got = denoiser(x, sigma)
    assert got.shape == x.shape and got.dtype == F64
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(denoiser.score(x, sigma), grad, rtol=1e-9, atol=1e-9)


def test_gaussian_closed_form_and_properties():
    mean = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    cov = random_cov(3, 7)
    gauss = Gaussian(mean, cov=cov)
    torch.testing.assert_close(gauss.mean, mean)
    torch.testing.assert_close(gauss.covariance, cov, rtol=1e-12, atol=1e-14)
    assert gauss.event_shape == (3,) and gauss.dim == 3
    assert gauss.sigma_data == pytest.approx(math.sqrt(torch.trace(cov).item() / 3), rel=1e-12)
    x = torch.randn(6, 3, dtype=F64, generator=gen())
    sigma = torch.linspace(0.1, 5.0, 6, dtype=F64)
    # D = μ + Σ (Σ + σ²I)⁻¹ (x − μ) with a dense solve per sample
    expected = torch.stack(
        [mean + cov @ torch.linalg.solve(cov + s**2 * torch.eye(3, dtype=F64), xi - mean) for xi, s in zip(x, sigma)]
    )
    torch.testing.assert_close(gauss(x, sigma), expected, rtol=1e-12, atol=1e-12)
    # the diagonal form agrees with the full form given the diagonal matrix
    var = torch.tensor([0.2, 1.0, 3.0], dtype=F64)
    torch.testing.assert_close(Gaussian(mean, var=var)(x, sigma), Gaussian(mean, cov=torch.diag(var))(x, sigma))
    # a one-component mixture is the same Gaussian
    mixture = GaussianMixture(torch.ones(1, dtype=F64), mean[None], cov=cov[None])
    torch.testing.assert_close(mixture(x, sigma), gauss(x, sigma), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mixture.log_prob(x, 0.3), gauss.log_prob(x, 0.3), rtol=1e-12, atol=1e-12)


def test_log_prob_matches_scipy_multivariate_normal():
    stats = pytest.importorskip("scipy.stats")
    mean = np.array([0.3, -1.0, 2.0])
    cov = random_cov(3, 3).numpy()
    gauss = Gaussian(torch.tensor(mean), cov=torch.tensor(cov))
    x = np.random.default_rng(0).normal(size=(5, 3))
    for sigma in (0.0, 0.7):
        expected = stats.multivariate_normal(mean, cov + sigma**2 * np.eye(3)).logpdf(x)
        np.testing.assert_allclose(gauss.log_prob(torch.tensor(x), sigma).numpy(), expected, rtol=1e-12)


@pytest.mark.parametrize("kind", ["iso", "diag", "full"])
def test_gaussian_ode_solution_matches_dop853(kind):
    integrate = pytest.importorskip("scipy.integrate")
    mean = torch.tensor([0.5, -1.0, 2.0], dtype=F64)
    if kind == "iso":
        gauss = Gaussian(mean, var=0.3)
    elif kind == "diag":
        gauss = Gaussian(mean, var=torch.tensor([0.001, 0.2, 2.0], dtype=F64))
    else:
        gauss = Gaussian(mean, cov=random_cov(3, 11, low=0.01))
    sigma_T, sigma_end = 20.0, 1e-4
    x_T = torch.randn(1, 3, dtype=F64, generator=gen(2)) * sigma_T

    def rhs(sigma, x):
        x_t = torch.tensor(x, dtype=F64)[None]
        return ((x_t - gauss(x_t, torch.tensor([sigma], dtype=F64))) / sigma)[0].numpy()

    solution = integrate.solve_ivp(
        rhs, (sigma_T, sigma_end), x_T[0].numpy(), method="DOP853", rtol=1e-10, atol=1e-12, dense_output=True
    )
    assert solution.success
    for sigma in (5.0, 0.3, sigma_end):
        exact = gauss.ode_solution(x_T, sigma_T, sigma)
        np.testing.assert_allclose(exact[0].numpy(), solution.sol(sigma), rtol=1e-8, atol=1e-8)
    # σ = 0 is allowed and is the limit of the ODE; with tensor arguments too
    at_zero = gauss.ode_solution(x_T, torch.tensor([sigma_T], dtype=F64), torch.zeros(1, dtype=F64))
    np.testing.assert_allclose(at_zero[0].numpy(), solution.sol(sigma_end), atol=1e-6)


def test_ode_solution_maps_the_noised_law_to_the_data_law():
    # the flow pushes N(μ, Σ + σ_T² I) to N(μ, Σ): check the covariance through the linear map
    cov = random_cov(3, 5)
    gauss = Gaussian(torch.zeros(3, dtype=F64), cov=cov)
    sigma_T = 4.0
    basis = torch.eye(3, dtype=F64)
    linear_map = gauss.ode_solution(basis, sigma_T, 0.0).T  # columns: images of the unit vectors
    pushed = linear_map @ (cov + sigma_T**2 * torch.eye(3, dtype=F64)) @ linear_map.T
    torch.testing.assert_close(pushed, cov, rtol=1e-12, atol=1e-12)


def _numpy_ideal_denoiser(x, data, sigma):
    """Brute force in numpy: weights ∝ exp(−‖x − y_i‖²/2σ²), log-sum-exp by hand."""
    out = np.empty_like(x)
    log_norm = np.empty(len(x))
    for b in range(len(x)):
        sq = ((x[b] - data) ** 2).sum(1)
        logits = -sq / (2 * sigma[b] ** 2)
        top = logits.max()
        w = np.exp(logits - top)
        out[b] = (w[:, None] * data).sum(0) / w.sum()
        log_norm[b] = top + np.log(w.sum())
    return out, log_norm


@pytest.mark.parametrize("chunk_size", [1, 7, 4096])
def test_empirical_matches_brute_force(chunk_size):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(40, 5)) + 3.0  # off-centre on purpose
    x = rng.normal(size=(6, 5)) * 2 + 3.0
    sigma = np.array([0.02, 0.1, 0.5, 1.0, 5.0, 50.0])
    empirical = Empirical(torch.tensor(data), chunk_size=chunk_size)
    expected, log_norm = _numpy_ideal_denoiser(x, data, sigma)
    got = empirical(torch.tensor(x), torch.tensor(sigma))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-11, atol=1e-11)
    expected_log_prob = log_norm - math.log(40) - 2.5 * np.log(2 * np.pi * sigma**2)
    np.testing.assert_allclose(empirical.log_prob(torch.tensor(x), torch.tensor(sigma)).numpy(), expected_log_prob, rtol=1e-11)


def test_empirical_is_a_mixture_of_point_masses():
    data = torch.randn(30, 2, 2, dtype=F64, generator=gen(4))
    empirical = Empirical(data, chunk_size=8)
    mixture = GaussianMixture(torch.full((30,), 1 / 30, dtype=F64), data, var=0.0)
    x, sigma = batch(empirical, seed=5)
    torch.testing.assert_close(empirical(x, sigma), mixture(x, sigma), rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(empirical.log_prob(x, sigma), mixture.log_prob(x, sigma), rtol=1e-11, atol=1e-11)
    # σ → 0: the nearest data point
    nearest = data[torch.cdist(x.flatten(1), data.flatten(1)).argmin(1)]
    torch.testing.assert_close(empirical(x, torch.zeros(len(x), dtype=F64)), nearest)
    assert empirical.sigma_data == pytest.approx(math.sqrt(data.flatten(1).var(0, unbiased=False).mean().item()))


def test_mixture_small_variance_approaches_empirical():
    data = torch.randn(12, 3, dtype=F64, generator=gen(6))
    x = torch.randn(4, 3, dtype=F64, generator=gen(7))
    sigma = torch.full((4,), 0.5, dtype=F64)
    blurred = GaussianMixture(torch.full((12,), 1 / 12, dtype=F64), data, var=1e-8)
    torch.testing.assert_close(blurred(x, sigma), Empirical(data)(x, sigma), rtol=1e-6, atol=1e-6)


def test_log_prob_integrates_to_one_1d():
    integrate = pytest.importorskip("scipy.integrate")
    cases = [
        (Gaussian(torch.tensor([0.5], dtype=F64), var=0.4), 0.0),
        (GaussianMixture(torch.tensor([0.3, 0.7], dtype=F64), torch.tensor([[-2.0], [1.5]], dtype=F64),
                         var=torch.tensor([0.1, 0.6], dtype=F64)), 0.0),
        (GaussianMixture(torch.tensor([0.3, 0.7], dtype=F64), torch.tensor([[-2.0], [1.5]], dtype=F64), var=0.1), 0.8),
        (Empirical(torch.tensor([[-1.0], [0.0], [2.5]], dtype=F64)), 0.3),
        (Dirac(torch.tensor([1.0], dtype=F64)), 0.2),
    ]
    for denoiser, sigma in cases:
        def density(t):
            return math.exp(denoiser.log_prob(torch.tensor([[t]], dtype=F64), sigma).item())

        total, _ = integrate.quad(density, -np.inf, np.inf, points=None, epsabs=1e-12, limit=200)
        assert total == pytest.approx(1.0, abs=1e-8), type(denoiser).__name__


def test_log_prob_integrates_to_one_2d():
    mixture = GaussianMixture(
        torch.tensor([0.25, 0.75], dtype=F64),
        torch.tensor([[-1.0, 0.5], [1.0, -0.5]], dtype=F64),
        cov=torch.stack([random_cov(2, 1, 0.1, 0.5), random_cov(2, 2, 0.1, 0.5)]),
    )
    grid = torch.linspace(-7, 7, 701, dtype=F64)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    points = torch.stack([xx.flatten(), yy.flatten()], 1)
    step = (grid[1] - grid[0]).item()
    for sigma in (0.0, 0.5):
        density = mixture.log_prob(points, sigma).exp()
        assert density.sum().item() * step**2 == pytest.approx(1.0, abs=1e-7)


def test_sample_moments():
    n = 200_000
    mean = torch.tensor([1.0, -1.0, 0.0], dtype=F64)
    cov = random_cov(3, 9)
    samples = Gaussian(mean, cov=cov).sample(n, generator=gen(10))
    assert samples.shape == (n, 3) and samples.dtype == F64
    sample_mean, sample_cov = analytic.empirical_gaussian(samples)
    # a few standard errors
    torch.testing.assert_close(sample_mean, mean, rtol=0, atol=5 * math.sqrt(2.0 / n))
    torch.testing.assert_close(sample_cov, cov, rtol=0, atol=6 * 2.0 * math.sqrt(2.0 / n))

    mixture = denoisers()["gmm-full"]
    samples = mixture.sample(n, generator=gen(11))
    sample_mean, sample_cov = analytic.empirical_gaussian(samples)
    spread = torch.diagonal(mixture.covariance).max().item()
    torch.testing.assert_close(sample_mean, mixture.mean.flatten(), rtol=0, atol=5 * math.sqrt(spread / n))
    torch.testing.assert_close(sample_cov, mixture.covariance, rtol=0, atol=8 * spread * math.sqrt(2.0 / n))

    empirical = denoisers()["empirical"]
    drawn = empirical.sample(500, generator=gen(12))
    assert drawn.shape == (500, 2, 3)
    exact_match = (drawn.flatten(1)[:, None, :] == empirical.data.flatten(1)[None]).all(2)
    assert bool(exact_match.any(1).all())


def test_sample_uses_only_its_generator():
    state = torch.random.get_rng_state()
    for denoiser in denoisers().values():
        first = denoiser.sample(5, generator=gen(3))
        again = denoiser.sample(5, generator=gen(3))
        assert torch.equal(first, again)
        denoiser.sample(5)  # fresh entropy, not the global RNG
    assert torch.equal(torch.random.get_rng_state(), state)


@pytest.mark.parametrize("name", list(denoisers()))
def test_forward_makes_no_host_syncs_and_keeps_dtype(name):
    denoiser = denoisers()[name]
    x, sigma = batch(denoiser)
    x32, sigma32 = x.float(), sigma.float()
    with HostSyncCounter() as counter:
        out = denoiser(x32, sigma32)
    assert counter.count == 0, counter.names
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, denoiser(x, sigma).float(), rtol=1e-4, atol=1e-4)


def test_sigma_forms():
    gauss = Gaussian(torch.zeros(2, dtype=F64), var=1.0)
    x = torch.ones(3, 2, dtype=F64)
    expected = x / 2  # var/(var + σ²) = 1/2 at σ = 1
    for sigma in (1.0, torch.tensor(1.0, dtype=F64), torch.ones(1, dtype=F64), torch.ones(3, dtype=F64)):
        torch.testing.assert_close(gauss(x, sigma), expected)
    with pytest.raises(ValueError, match="sigma"):
        gauss(x, torch.ones(2, dtype=F64))


def test_zero_variance_directions_are_finite_at_sigma_zero():
    gauss = Gaussian(torch.tensor([1.0, 2.0], dtype=F64), var=torch.tensor([0.0, 1.0], dtype=F64))
    x = torch.tensor([[3.0, 3.0]], dtype=F64)
    torch.testing.assert_close(gauss(x, torch.zeros(1, dtype=F64)), torch.tensor([[1.0, 3.0]], dtype=F64))
    with pytest.raises(ValueError, match="sigma"):
        gauss.log_prob(x, 0.0)


# ---------------------------------------------------------------------------------------
# KL, W2, empirical moments


def test_gaussian_kl_closed_forms():
    # 1-D: log(s_q/s_p) + (s_p² + (m_p − m_q)²)/(2 s_q²) − 1/2
    m_p, s_p, m_q, s_q = 0.3, 0.7, -0.4, 1.3
    expected = math.log(s_q / s_p) + (s_p**2 + (m_p - m_q) ** 2) / (2 * s_q**2) - 0.5
    assert analytic.gaussian_kl([m_p], [[s_p**2]], [m_q], [[s_q**2]]) == pytest.approx(expected, rel=1e-13)
    # diagonal: the sum of 1-D divergences; then rotation invariance for full matrices
    var_p = torch.tensor([0.5, 1.0, 2.0], dtype=F64)
    var_q = torch.tensor([1.0, 0.3, 2.5], dtype=F64)
    mean_p = torch.tensor([0.0, 1.0, -1.0], dtype=F64)
    mean_q = torch.tensor([0.5, 0.0, -1.0], dtype=F64)
    per_dim = 0.5 * (var_p / var_q + (mean_q - mean_p) ** 2 / var_q - 1 + (var_q / var_p).log())
    diagonal = analytic.gaussian_kl(mean_p, torch.diag(var_p), mean_q, torch.diag(var_q))
    assert diagonal == pytest.approx(per_dim.sum().item(), rel=1e-13)
    assert analytic.gaussian_kl(mean_p, var_p, mean_q, var_q) == pytest.approx(diagonal, rel=1e-13)
    rotation, _ = torch.linalg.qr(torch.randn(3, 3, dtype=F64, generator=gen(1)))
    rotated = analytic.gaussian_kl(
        rotation @ mean_p, rotation @ torch.diag(var_p) @ rotation.T, rotation @ mean_q, rotation @ torch.diag(var_q) @ rotation.T
    )
    assert rotated == pytest.approx(diagonal, rel=1e-12)
    assert analytic.gaussian_kl(mean_p, random_cov(3, 1), mean_p, random_cov(3, 1)) == pytest.approx(0.0, abs=1e-13)


def test_gaussian_kl_of_a_collapsed_direction_is_infinite():
    # p on a line, q with a density: q gives p's support probability 0
    q_cov = random_cov(2, 5)
    assert analytic.gaussian_kl([0.0, 0.0], [[1.0, 1.0], [1.0, 1.0]], [0.1, 0.0], q_cov) == math.inf
    assert analytic.gaussian_kl([0.0, 0.0], torch.zeros(2, 2), [0.0, 0.0], q_cov) == math.inf
    with pytest.raises(ValueError, match="cov_p must be positive semi-definite"):
        analytic.gaussian_kl([0.0, 0.0], [[1.0, 2.0], [2.0, 1.0]], [0.0, 0.0], q_cov)


def test_gaussian_kl_against_monte_carlo():
    cov_p, cov_q = random_cov(2, 3), random_cov(2, 4)
    mean_p, mean_q = torch.tensor([0.2, -0.3], dtype=F64), torch.tensor([0.5, 0.1], dtype=F64)
    p = Gaussian(mean_p, cov=cov_p)
    q = Gaussian(mean_q, cov=cov_q)
    x = p.sample(400_000, generator=gen(8))
    log_ratio = p.log_prob(x) - q.log_prob(x)
    estimate, error = log_ratio.mean().item(), log_ratio.std().item() / math.sqrt(len(x))
    assert analytic.gaussian_kl(mean_p, cov_p, mean_q, cov_q) == pytest.approx(estimate, abs=5 * error)


def test_gaussian_w2_closed_forms():
    linalg = pytest.importorskip("scipy.linalg")
    # 1-D: (m_p − m_q)² + (s_p − s_q)²
    assert analytic.gaussian_w2([0.3], [[0.49]], [-0.4], [[1.69]]) == pytest.approx(math.sqrt(0.49 + 0.36), rel=1e-13)
    # general: against scipy.linalg.sqrtm
    cov_p, cov_q = random_cov(4, 5).numpy(), random_cov(4, 6).numpy()
    mean_p, mean_q = np.arange(4.0), np.ones(4)
    root = linalg.sqrtm(cov_p).real
    cross = linalg.sqrtm(root @ cov_q @ root).real
    expected = math.sqrt(((mean_p - mean_q) ** 2).sum() + np.trace(cov_p + cov_q - 2 * cross))
    got = analytic.gaussian_w2(mean_p, cov_p, mean_q, cov_q)
    assert got == pytest.approx(expected, rel=1e-10)
    assert analytic.gaussian_w2(mean_q, cov_q, mean_p, cov_p) == pytest.approx(got, rel=1e-10)
    assert analytic.gaussian_w2(mean_p, cov_p, mean_p, cov_p) == pytest.approx(0.0, abs=1e-7)
    # a singular covariance is allowed (a point mass vs a Gaussian)
    assert analytic.gaussian_w2([0.0, 0.0], np.zeros((2, 2)), [0.0, 0.0], np.eye(2)) == pytest.approx(math.sqrt(2), rel=1e-12)


def test_empirical_gaussian_matches_numpy():
    samples = torch.randn(100, 2, 2, dtype=F64, generator=gen(2))
    mean, cov = analytic.empirical_gaussian(samples)
    flat = samples.reshape(100, 4).numpy()
    np.testing.assert_allclose(mean.numpy(), flat.mean(0), rtol=1e-13)
    np.testing.assert_allclose(cov.numpy(), np.cov(flat, rowvar=False), rtol=1e-12)


# ---------------------------------------------------------------------------------------
# bad input


def test_bad_inputs():
    two = torch.zeros(2, dtype=F64)
    with pytest.raises(ValueError, match="sum to 1"):
        GaussianMixture(torch.tensor([0.5, 0.6]), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture(torch.tensor([1.5, -0.5]), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="means"):
        GaussianMixture(torch.tensor([0.5, 0.5]), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="var"):
        GaussianMixture(torch.tensor([0.5, 0.5]), torch.zeros(2, 3), var=-1.0)
    with pytest.raises(ValueError, match="var"):
        GaussianMixture(torch.tensor([0.5, 0.5]), torch.zeros(2, 3), var=torch.ones(3))
    with pytest.raises(ValueError, match="cov"):
        GaussianMixture(torch.tensor([0.5, 0.5]), torch.zeros(2, 3), cov=torch.eye(3))
    with pytest.raises(ValueError, match="var"):
        Gaussian(two, var=-0.1)
    with pytest.raises(ValueError, match="var"):
        Gaussian(two, var=torch.ones(3))
    with pytest.raises(ValueError, match="cov"):
        Gaussian(two, cov=torch.eye(3))
    with pytest.raises(ValueError, match="symmetric"):
        Gaussian(two, cov=torch.tensor([[1.0, 0.5], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="semi-definite"):
        Gaussian(two, cov=torch.tensor([[1.0, 2.0], [2.0, 1.0]]))
    with pytest.raises(ValueError, match="either var or cov"):
        Gaussian(two, var=1.0, cov=torch.eye(2))
    with pytest.raises(ValueError, match="finite"):
        Gaussian(torch.tensor([math.nan, 0.0]))
    with pytest.raises(TypeError, match="mean"):
        Gaussian("zero")
    with pytest.raises(ValueError, match="chunk_size"):
        Empirical(torch.zeros(4, 2), chunk_size=0)
    with pytest.raises(ValueError, match="data"):
        Empirical(torch.zeros(0, 2))

    gauss = Gaussian(two)
    with pytest.raises(ValueError, match="shape"):
        gauss(torch.zeros(3, 4, dtype=F64), torch.ones(3, dtype=F64))
    with pytest.raises(ValueError, match="shape"):
        gauss(torch.zeros(2, dtype=F64), torch.ones(1, dtype=F64))
    with pytest.raises(TypeError, match="floating"):
        gauss(torch.zeros(3, 2, dtype=torch.long), torch.ones(3))
    with pytest.raises(ValueError, match="sigma"):
        gauss.score(torch.zeros(3, 2, dtype=F64), 0.0)
    with pytest.raises(ValueError, match="sigma"):
        gauss.log_prob(torch.zeros(3, 2, dtype=F64), -1.0)
    with pytest.raises(ValueError, match="sigma_T"):
        gauss.ode_solution(torch.zeros(3, 2, dtype=F64), 0.0, 0.0)
    with pytest.raises(ValueError, match="n must be"):
        gauss.sample(-1)
    with pytest.raises(ValueError, match="sigma"):
        Empirical(torch.zeros(4, 2)).log_prob(torch.zeros(1, 2), 0.0)
    with pytest.raises(ValueError, match="sigma"):
        Dirac(two).log_prob(torch.zeros(1, 2), 0.0)
    with pytest.raises(ValueError, match="cov_q"):
        analytic.gaussian_kl(two, torch.eye(2), two, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="cov_p"):
        analytic.gaussian_w2(two, torch.eye(3), two, torch.eye(2))
    with pytest.raises(ValueError, match="semi-definite"):
        analytic.gaussian_w2(two, -torch.eye(2), two, torch.eye(2))
    with pytest.raises(ValueError, match="samples"):
        analytic.empirical_gaussian(torch.zeros(1, 3))
