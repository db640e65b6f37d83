"""A solver's tests are found by its name (``pytest -k dpmpp_2m``): the conftest hook tags
every test with the solvers it runs."""

from __future__ import annotations

from types import SimpleNamespace

import conftest
import ksampling
from helpers import SmoothToy, karras_grid
from ksampling.samplers.ancestral import EulerAncestral


def _item(function, **params):
    return SimpleNamespace(function=function, callspec=SimpleNamespace(params=params) if params else None)


def test_parametrized_tests_are_tagged_with_their_solver_parameters():
    def body(name):
        if name == "dpmpp_3m_sde":  # a special case of the parameter, not a solver it runs
            pass

    assert conftest.solver_keywords(_item(body, name="dpmpp_2m")) == {"dpmpp_2m"}
    pair = (("dpmpp_2m_sde", {"eta": 0.0}), ("dpmpp_2m", {}))
    assert conftest.solver_keywords(_item(body, pair=pair)) == {"dpmpp_2m_sde", "dpmpp_2m"}
    assert conftest.solver_keywords(_item(body, solver=EulerAncestral)) == {"euler_ancestral"}
    assert conftest.solver_keywords(_item(body, solver=EulerAncestral(eta=0.5))) == {"euler_ancestral"}
    # a parameter that is no solver's name tags nothing by itself
    assert conftest.solver_keywords(_item(lambda: None, steps=3, grid="karras")) == set()


def test_other_tests_are_tagged_with_the_solvers_their_code_names():
    def body():
        run = lambda x: ksampling.sample(SmoothToy(), x, karras_grid(3), "heun")  # noqa: E731
        return run, "not a solver", "dpmpp_2m"

    assert conftest.solver_keywords(_item(body)) == {"heun", "dpmpp_2m"}


def test_the_hook_runs_at_collection(request):
    # named, not run: -k dpmpp_2m selects this test although its name does not say so
    unused = lambda x: ksampling.sample(SmoothToy(), x, karras_grid(3), "dpmpp_2m")  # noqa: E731, F841
    assert "dpmpp_2m" in request.node.extra_keyword_matches
