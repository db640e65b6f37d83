"""Find a solver's tests by its name: ``pytest -k dpmpp_2m`` selects every test that runs it.

A test is tagged with the name of every registered solver that it is parametrized with (a
name, a Solver class or instance, or a tuple holding one); a test not parametrized by solver,
with every solver name its code holds as a string (``ksampling.sample(model, x, sigmas,
"dpmpp_2m")``, also inside nested functions). ``-k``
matches substrings, so ``-k dpmpp_2m`` also selects ``dpmpp_2m_sde``; use
``-k "dpmpp_2m and not sde"`` to leave it out.
"""

from __future__ import annotations

import types

import pytest
import torch


def _solver_names():
    from ksampling.samplers import SOLVERS, Solver

    return SOLVERS, Solver


def _strings_in_code(code: types.CodeType):
    for constant in code.co_consts:
        if isinstance(constant, str):
            yield constant
        elif isinstance(constant, types.CodeType):
            yield from _strings_in_code(constant)
        elif isinstance(constant, (tuple, frozenset)):
            yield from (c for c in constant if isinstance(c, str))


def _names_in_value(value, registry, solver_type, depth=0):
    if isinstance(value, str):
        if value in registry:
            yield value
    elif (isinstance(value, type) and issubclass(value, solver_type)) or isinstance(value, solver_type):
        if value.name in registry:
            yield value.name
    elif isinstance(value, (tuple, list)) and depth < 2:
        for item in value:
            yield from _names_in_value(item, registry, solver_type, depth + 1)


def solver_keywords(item) -> set[str]:
    """The registered solver names a collected test runs (see the module docstring)."""
    registry, solver_type = _solver_names()
    names = set()
    callspec = getattr(item, "callspec", None)
    if callspec is not None:
        for value in callspec.params.values():
            names.update(_names_in_value(value, registry, solver_type))
    if names:
        # parametrized by solver: names in its code are special cases of the parameter
        # (``if name == "dpmpp_3m_sde": ...``), not solvers the test runs
        return names
    function = getattr(item, "function", None)
    code = getattr(function, "__code__", None)
    if code is not None:
        names.update(s for s in _strings_in_code(code) if s in registry)
    return names


def pytest_collection_modifyitems(config, items):
    for item in items:
        item.extra_keyword_matches.update(solver_keywords(item))



@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny tensors (a small UNet, 2-D mixtures): two
    threads only fight over a two-core CI machine. Modules opt in with
    ``pytestmark = [pytest.mark.usefixtures("one_thread"), ...]``."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
