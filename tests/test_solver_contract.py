"""What every registered solver promises, checked over ``ksampling.samplers.available()``:
short grids, no host syncs per step, no random numbers when deterministic, per-sample
reproducibility, and readable metadata."""

from __future__ import annotations

import pytest
import torch

import ksampling
from helpers import HostSyncCounter, SmoothToy, karras_grid
from ksampling.samplers import available, get, info

F64 = torch.float64
ALL = available()


def _deterministic_options(name):
    cls = get(name)
    names = cls.option_names()
    options = {key: 0.0 for key in ("eta", "s_churn") if key in names}
    return options


def _stochastic_options(name):
    """Options that make the solver draw noise where its defaults do not (ddim, euler)."""
    cls = get(name)
    if cls().draws_noise:
        return {}
    names = cls.option_names()
    if "eta" in names:
        return {"eta": 1.0}
    return {"s_churn": 1.0} if "s_churn" in names else {}


def test_registry_has_the_core_solvers():
    for name in ("euler", "heun", "euler_ancestral", "ddim", "ddpm", "edm"):
        assert name in ALL


@pytest.mark.parametrize("name", ALL)
def test_metadata(name):
    meta = info(name)
    assert meta["name"] == name
    assert isinstance(meta["order"], int) and meta["order"] >= 1
    assert isinstance(meta["nfe_per_step"], int) and meta["nfe_per_step"] >= 1
    assert meta["kind"] in ("ode", "sde")
    assert isinstance(meta["multistep"], bool) and isinstance(meta["fixed_grid"], bool)
    assert get(name).__doc__ and meta["paper"], f"{name} needs a docstring with its equation and a paper"


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("steps", [1, 2, 3])
@pytest.mark.parametrize("to_zero", [True, False])
def test_short_grids(name, steps, to_zero):
    grid = karras_grid(steps, 0.1, 10.0) if to_zero else karras_grid(steps + 1, 0.1, 10.0, append_zero=False)
    x = torch.randn(2, 3, dtype=F64, generator=torch.Generator().manual_seed(0)) * 10
    out = ksampling.sample(SmoothToy(), x, grid, name, generator=torch.Generator().manual_seed(1))
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("name", [n for n in ALL if info(n)["fixed_grid"]])
def test_no_host_sync_inside_the_loop(name):
    """The number of tensor-to-host conversions must not grow with the number of steps."""
    counts = []
    for n in (4, 12):
        x = torch.randn(2, 3, dtype=F64, generator=torch.Generator().manual_seed(0)) * 10
        with HostSyncCounter() as counter:
            ksampling.sample(SmoothToy(), x, karras_grid(n, 0.05, 10.0), name, generator=torch.Generator().manual_seed(1))
        counts.append((counter.count, counter.names))
    assert counts[0][0] == counts[1][0], f"per-step host conversions: {counts[1][1]}"


@pytest.mark.parametrize("name", ALL)
def test_deterministic_configurations_draw_no_random_numbers(name):
    options = _deterministic_options(name)
    solver = get(name)(**options)
    if solver.draws_noise:
        pytest.skip(f"{name} is stochastic in every configuration")
    x = torch.randn(2, 3, dtype=F64, generator=torch.Generator().manual_seed(0)) * 10
    generator = torch.Generator().manual_seed(3)
    before, global_before = generator.get_state(), torch.get_rng_state()

    def forbidden(sigma, sigma_next):
        raise AssertionError("a deterministic solver drew noise")

    ksampling.sample(SmoothToy(), x, karras_grid(5, 0.05, 10.0), name, noise_sampler=forbidden, **options)
    ksampling.sample(SmoothToy(), x, karras_grid(5, 0.05, 10.0), name, generator=generator, **options)
    assert torch.equal(generator.get_state(), before)
    assert torch.equal(torch.get_rng_state(), global_before)


@pytest.mark.parametrize("name", ALL)
def test_global_rng_is_never_touched(name):
    x = torch.randn(2, 3, dtype=F64, generator=torch.Generator().manual_seed(0)) * 10
    state = torch.get_rng_state()
    ksampling.sample(SmoothToy(), x, karras_grid(4, 0.05, 10.0), name, **_stochastic_options(name))
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize(
    "name", [n for n in ALL if info(n)["fixed_grid"] and get(n)(**_stochastic_options(n)).draws_noise]
)
def test_per_sample_generators_make_samples_independent_of_the_batch(name):
    """(Adaptive solvers are left out: their step sizes come from an error norm over the
    whole batch, as in k-diffusion, so a sample's path depends on its batch by design.)"""
    options = _stochastic_options(name)
    seeds = [11, 22, 33, 44, 55, 66, 77, 88]
    start = torch.randn(8, 3, 4, dtype=F64, generator=torch.Generator().manual_seed(0)) * 10
    grid = karras_grid(6, 0.05, 10.0)
    batch = ksampling.sample(
        SmoothToy(), start, grid, name, generator=[torch.Generator().manual_seed(s) for s in seeds], **options
    )
    for i in (0, 5):
        alone = ksampling.sample(
            SmoothToy(), start[i : i + 1], grid, name, generator=[torch.Generator().manual_seed(seeds[i])], **options
        )
        assert torch.equal(alone[0], batch[i]), f"sample {i} depends on its batch"
    # and the noise does differ between seeds
    assert not torch.equal(batch[0], batch[1])
