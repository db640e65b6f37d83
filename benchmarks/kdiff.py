"""The real k-diffusion (0.1.1.post1) samplers, for comparison on the same problems.

k-diffusion's package ``__init__`` imports torchvision, clip and clean-fid, none of which a
CPU-only install has; its ``sampling.py`` needs only torch, scipy, torchsde, torchdiffeq,
tqdm and one helper, ``utils.append_dims``. :func:`load_reference` registers a stand-in
package under a private name whose ``utils`` holds that helper and loads ``sampling.py`` and
``external.py`` from the installed files (nothing public in ``sys.modules`` changes).
"""

from __future__ import annotations

import importlib.util
import sys
import types
from functools import lru_cache
from pathlib import Path

__all__ = ["load", "load_reference", "available", "KDIFF_SAMPLERS", "KDIFF_SDE"]

_PACKAGE = "_ksampling_benchmarks_k_diffusion"

#: k-diffusion's samplers that the suite compares (all 13 of 0.1.1).
KDIFF_SAMPLERS = (
    "euler", "heun", "dpm_2", "lms", "dpmpp_2m", "dpm_fast", "dpm_adaptive",
    "euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde",
)
#: those that draw noise at their default settings.
KDIFF_SDE = ("euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde")


def _append_dims(x, target_dims):
    missing = target_dims - x.ndim
    if missing < 0:
        raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}, which is less")
    return x[(...,) + (None,) * missing]


@lru_cache(maxsize=None)
def load_reference() -> types.SimpleNamespace | None:
    """k-diffusion's ``sampling`` and ``external`` modules as a namespace, or ``None`` when
    k-diffusion or one of the packages its ``sampling.py`` imports (scipy, torchsde,
    torchdiffeq) is missing. The one loader of the repository: the tests and the speed suite
    use it too (through ``tests/reference.py``)."""
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0])
    package = types.ModuleType(_PACKAGE)
    package.__path__ = [str(root)]
    utils = types.ModuleType(f"{_PACKAGE}.utils")
    utils.append_dims = _append_dims
    package.utils = utils
    sys.modules[_PACKAGE] = package
    sys.modules[f"{_PACKAGE}.utils"] = utils
    modules = {}
    for name in ("sampling", "external"):
        full = f"{_PACKAGE}.{name}"
        module_spec = importlib.util.spec_from_file_location(full, root / f"{name}.py")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[full] = module
        try:
            module_spec.loader.exec_module(module)
        except ImportError:
            del sys.modules[full]
            return None
        setattr(package, name, module)
        modules[name] = module
    return types.SimpleNamespace(**modules)


def load():
    """k-diffusion's ``sampling`` module, or ``None`` (see :func:`load_reference`)."""
    reference = load_reference()
    return None if reference is None else reference.sampling


def available() -> bool:
    return load() is not None
