"""The solver protocol and the registry.

A solver is a small class. The loop (:mod:`ksampling.samplers.loop`) owns validation,
the model call, NFE counting, callbacks, the progress bar and the noise; a solver owns only
its update rule:

* :meth:`Solver.coefficients` computes the per-step scalars **once, on the host, in
  float64** from the Python list of sigmas (``h``, ratios, φ-functions, σ_up/σ_down, ...).
* :meth:`Solver.step` maps ``x`` at ``step.sigma`` to ``x`` at ``step.sigma_next`` with
  ``ctx.denoise(x, sigma)`` and ``ctx.noise(sigma, sigma_next)``. It must not turn a tensor
  into a Python value: every branch is decided by the host-side coefficients.

Multistep solvers keep their history on the instance. One instance serves every run of a
:class:`~ksampling.samplers.loop.Plan` (and a Solver instance given to ``sample`` is used
as is), so the loop calls :meth:`Solver.reset` before the first step of every run, and
again after the last one so that the history's tensors are not kept alive between runs.
"""

from __future__ import annotations

import inspect
import math
from types import SimpleNamespace
from typing import Any, ClassVar, Sequence

__all__ = ["Solver", "Step", "register", "available", "get", "info", "make_solver", "SOLVERS"]

SOLVERS: dict[str, type["Solver"]] = {}


class Step(SimpleNamespace):
    """The host-side description of one step: plain Python numbers only.

    Always present: ``index``, ``sigma``, ``sigma_next``, ``sigma_prev`` (``None`` on the
    first step), ``first``, ``last`` (last step of the run), ``to_zero`` (``sigma_next == 0``)
    and ``n_steps``. A solver's :meth:`Solver.coefficients` adds its own names.
    """


class Solver:
    """Base class of every solver. Subclasses set the metadata and implement :meth:`step`.

    Metadata a caller can read (also through :func:`info`):

    ``name``        the registry name (k-diffusion's / ComfyUI's where one exists)
    ``order``       the convergence order of the deterministic method as N → ∞, with its
                    default options (lower-order final steps off)
    ``order_with_start`` the order with ``start="singlestep"`` (multistep solvers whose
                    default warm-up caps ``order``), else None
    ``nfe_per_step`` model calls per step (the last step may use fewer)
    ``kind``        ``"ode"`` or ``"sde"`` (SDE solvers draw noise unless ``eta == 0``)
    ``multistep``   whether the solver reuses model outputs of earlier steps
    ``fixed_grid``  ``False`` for adaptive solvers that choose their own steps
    ``paper``       the reference
    ``needs_uncond`` whether it needs the unconditional output too (CFG++ solvers: the model
                    must have ``denoise_with_uncond``, as the guidance wrapper has)
    """

    name: ClassVar[str] = ""
    order: ClassVar[int] = 1
    order_with_start: ClassVar[int | None] = None
    nfe_per_step: ClassVar[int] = 1
    kind: ClassVar[str] = "ode"
    multistep: ClassVar[bool] = False
    fixed_grid: ClassVar[bool] = True
    paper: ClassVar[str] = ""
    needs_uncond: ClassVar[bool] = False
    #: "gaussian" draws i.i.d. noise from the run's generator(s); "brownian" makes SDE
    #: solvers use a Brownian-tree noise sampler seeded from the generator(s), so that
    #: results are consistent across step counts (k-diffusion's default for its SDE solvers).
    default_noise: ClassVar[str] = "gaussian"

    def __init__(self) -> None:
        pass

    # -- what subclasses may override -------------------------------------------------
    @property
    def draws_noise(self) -> bool:
        """Whether this configuration draws random numbers at all (eta = 0 draws none)."""
        return self.kind == "sde"

    def reset(self) -> None:
        """Forget the history of an earlier run (multistep solvers)."""

    def coefficients(self, sigmas: Sequence[float], i: int) -> dict[str, Any]:
        """Host-side float64 scalars of step ``i`` (``sigmas[i] -> sigmas[i + 1]``)."""
        return {}

    def step(self, ctx, x, step: Step):
        """Advance ``x`` from ``step.sigma`` to ``step.sigma_next``."""
        raise NotImplementedError

    def run(self, ctx, x, steps: list[Step]):
        """Drive the steps. Adaptive solvers override this; fixed-grid solvers never do."""
        for step in ctx.progress(steps):
            ctx.begin_step(step)
            x = self.step(ctx, x, step)
        return x

    # -- shared by the loop --------------------------------------------------------------
    def plan(self, sigmas: Sequence[float]) -> list[Step]:
        n = len(sigmas) - 1
        steps = []
        for i in range(n):
            base = dict(
                index=i,
                sigma=sigmas[i],
                sigma_next=sigmas[i + 1],
                sigma_prev=sigmas[i - 1] if i > 0 else None,
                first=i == 0,
                last=i == n - 1,
                to_zero=sigmas[i + 1] == 0.0,
                n_steps=n,
            )
            steps.append(Step(**base, **self.coefficients(sigmas, i)))
        return steps

    @classmethod
    def option_names(cls) -> list[str]:
        params = inspect.signature(cls.__init__).parameters
        return [p for p in params if p != "self"]

    @classmethod
    def describe(cls) -> dict[str, Any]:
        return dict(
            name=cls.name,
            order=cls.order,
            order_with_start=cls.order_with_start,
            nfe_per_step=cls.nfe_per_step,
            kind=cls.kind,
            multistep=cls.multistep,
            fixed_grid=cls.fixed_grid,
            paper=cls.paper,
            needs_uncond=cls.needs_uncond,
            options={
                p.name: p.default
                for p in inspect.signature(cls.__init__).parameters.values()
                if p.name != "self"
            },
        )


def register(cls: type[Solver]) -> type[Solver]:
    """Class decorator: add a solver to the registry under ``cls.name``."""
    if not cls.name:
        raise TypeError(f"{cls.__qualname__} has no name")
    if cls.name in SOLVERS and SOLVERS[cls.name] is not cls:
        raise ValueError(f"a solver named {cls.name!r} is already registered")
    SOLVERS[cls.name] = cls
    return cls


def available() -> list[str]:
    """The names of every registered solver, sorted."""
    return sorted(SOLVERS)


def get(name: str) -> type[Solver]:
    """The solver class registered under ``name``."""
    if not isinstance(name, str):
        raise TypeError(f"solver must be a name (str) or a Solver subclass, got {type(name).__name__}")
    try:
        return SOLVERS[name]
    except KeyError:
        raise ValueError(f"unknown solver {name!r}; known solvers: {', '.join(available())}") from None


def make_solver(solver: "str | type[Solver] | Solver", options: dict[str, Any] | None = None) -> Solver:
    """A configured solver from a registry name, a Solver class or an instance.

    Unknown options raise a ``TypeError`` that lists the solver's options; values are
    validated by the solver's constructor.
    """
    options = options or {}
    if isinstance(solver, Solver):
        if options:
            raise TypeError("options cannot be given with a Solver instance; configure the instance instead")
        return solver
    cls = solver if isinstance(solver, type) and issubclass(solver, Solver) else get(solver)
    if not options:
        return cls()
    known = cls.option_names()  # inspect.signature: only worth its cost when there are options
    unknown = [k for k in options if k not in known]
    if unknown:
        raise TypeError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for solver {cls.name!r}; "
            f"its options are: {', '.join(known) if known else '(none)'}"
        )
    return cls(**options)


def info(name: str) -> dict[str, Any]:
    """Metadata of a solver: order, NFE per step, ODE or SDE, multistep, options and defaults."""
    return get(name).describe()


# Option validators live in .validation; re-exported here for the modules that import them from base.
from .validation import check_choice, check_int, check_nonnegative  # noqa: E402,F401
