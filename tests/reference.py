"""Load the real k-diffusion's ``sampling`` and ``external`` modules as a reference.

k-diffusion's package ``__init__`` imports torchvision, clip and clean-fid, which do not
install on a CPU-only torch. Its ``sampling.py`` and ``external.py`` need only torch, scipy,
torchdiffeq, torchsde, tqdm and ``utils.append_dims``; ``benchmarks/kdiff.py`` registers a
stand-in package under a private name whose ``utils`` holds that one function and loads the
two modules from the installed files. Here the tests get them, or a skip (a failure in CI).
"""

from __future__ import annotations

import importlib.util
import os
from functools import lru_cache
from pathlib import Path

import pytest

_LOADER = Path(__file__).resolve().parents[1] / "benchmarks" / "kdiff.py"


@lru_cache(maxsize=None)
def _load():
    """The loader lives in ``benchmarks/kdiff.py`` (the benchmark compares against the same
    samplers); it is loaded by path so that the tests need no package layout of benchmarks/."""
    spec = importlib.util.spec_from_file_location("_ksampling_reference_loader", _LOADER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.load_reference()


def _unavailable(reason: str):
    # CI sets KSAMPLING_REQUIRE_REFERENCE=1: there a missing reference is a failure, not a skip.
    if os.environ.get("KSAMPLING_REQUIRE_REFERENCE"):
        pytest.fail(reason)
    pytest.skip(reason)


def k_diffusion():
    """The reference ``k_diffusion`` namespace with ``.sampling`` and ``.external``;
    skips the test when k-diffusion (or scipy/torchsde/torchdiffeq) is not installed."""
    try:
        ref = _load()
    except ImportError as exc:  # a missing dependency of sampling.py
        _unavailable(f"k-diffusion reference unavailable: {exc}")
    if ref is None:
        _unavailable("k-diffusion is not installed (pip install --no-deps k-diffusion)")
    return ref
