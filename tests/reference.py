"""Load the real k-diffusion's ``sampling`` and ``external`` modules as a reference.

k-diffusion's package ``__init__`` imports torchvision, clip and clean-fid, which do not
install on a CPU-only torch. Its ``sampling.py`` and ``external.py`` need only torch, scipy,
torchdiffeq, torchsde, tqdm and ``utils.append_dims``. So we register a stand-in package
``k_diffusion`` whose ``utils`` holds that one function and load the two modules from the
installed files. Nothing is left patched in ``sys.modules``: the stand-in is registered
under a private name.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from functools import lru_cache
from pathlib import Path

import pytest

PACKAGE = "_ksampling_reference_k_diffusion"


def _append_dims(x, target_dims):
    dims_to_append = target_dims - x.ndim
    if dims_to_append < 0:
        raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}, which is less")
    return x[(...,) + (None,) * dims_to_append]


@lru_cache(maxsize=None)
def _load():
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0])
    package = types.ModuleType(PACKAGE)
    package.__path__ = [str(root)]
    utils = types.ModuleType(f"{PACKAGE}.utils")
    utils.append_dims = _append_dims
    package.utils = utils
    sys.modules[PACKAGE] = package
    sys.modules[f"{PACKAGE}.utils"] = utils
    modules = {}
    for name in ("sampling", "external"):
        full = f"{PACKAGE}.{name}"
        mod_spec = importlib.util.spec_from_file_location(full, root / f"{name}.py")
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[full] = module
        mod_spec.loader.exec_module(module)
        setattr(package, name, module)
        modules[name] = module
    return types.SimpleNamespace(**modules)


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
