"""A whole sampling run recorded into one CUDA graph, replayed with new inputs.

At batch 1 and few steps (SD-Turbo, LCM, distilled models at 1–8 steps) the time of a run on
a GPU is mostly kernel launches and Python. A CUDA graph records every kernel of one run once
and replays them with one launch. What makes a run capturable is what :class:`Plan` already
guarantees: no host sync inside the loop, every per-step scalar a host float fixed when the
plan is made, the ``[B]`` sigma tensors made once. What capture adds is static buffers: the
input ``x`` and the pre-drawn noise live at fixed addresses that each call copies into.

Recipe (what :meth:`Plan.capture` does)::

    plan = ksampling.plan(model, sigmas, "dpmpp_2m")
    captured = plan.capture(x_example)          # warm-up on a side stream, then capture
    out = captured(x)                           # copy x in, replay, copy the result out
    out = captured(x, generator=g)              # stochastic solvers: noise drawn from g

Limits: the model itself must be capturable (no host syncs, no data-dependent shapes);
``callback`` and ``progress`` run Python on every step and are refused; a run's finiteness
check reads the static checksum buffer after the replay (one host sync per call, as eager).
The shape, dtype and device of ``x`` are those of ``x_example``.

On the CPU (no CUDA graphs) ``CapturedPlan(plan, x, use_graph=False)`` runs the same
static-buffer code eagerly, which is how the tests check it without a GPU.
"""

from __future__ import annotations

import torch

from .noise import PredrawnNoise, no_noise

__all__ = ["CapturedPlan"]


class CapturedPlan:
    """One run of a :class:`~ksampling.samplers.loop.Plan` on static buffers, recorded into a
    CUDA graph (``use_graph=True``, needs a CUDA ``x_example``) or run eagerly."""

    def __init__(self, plan, x_example: torch.Tensor, *, use_graph: bool = True, warmup: int = 2):
        if not isinstance(x_example, torch.Tensor):
            raise TypeError(f"x_example must be a torch.Tensor, got {type(x_example).__name__}")
        if use_graph and (not torch.cuda.is_available() or x_example.device.type != "cuda"):
            raise RuntimeError(
                "Plan.capture records a CUDA graph and needs x_example on a CUDA device "
                f"(got {x_example.device}{'' if torch.cuda.is_available() else '; no CUDA here'}); "
                "on the CPU use the plan itself, or torch.compile(plan)"
            )
        if plan.callback is not None or plan.progress:
            raise ValueError("a captured run cannot call a callback or show progress (a replay runs no Python)")
        if not plan.solver.fixed_grid and plan.solver.name == "dpm_adaptive":
            raise ValueError("dpm_adaptive reads its error estimate on the host every attempt: it cannot be captured")
        plan._check_x(x_example, True)
        self.plan = plan
        self.use_graph = use_graph
        self.static_x = x_example.detach().clone()
        draws = plan.noise_draws()
        self.static_noise = x_example.new_zeros((draws, *x_example.shape)) if draws else None
        self.graph = None
        self.static_out = None
        self._ctx = None
        if use_graph:
            self._record(warmup)

    def _run(self):

        noise = PredrawnNoise(self.static_noise) if self.static_noise is not None else no_noise
        out, ctx = self.plan._execute(self.static_x, noise, False, False)
        finite = ctx.checksums.finite(out) if ctx.checksums is not None else None
        return out, finite, ctx

    def _record(self, warmup: int) -> None:
        # The warm-up runs make the plan's [B] sigma tensors (kept by the plan, so the graph
        # reads them at fixed addresses) and let lazy initialisations happen outside capture.
        stream = torch.cuda.Stream(device=self.static_x.device)
        stream.wait_stream(torch.cuda.current_stream(self.static_x.device))
        with torch.cuda.stream(stream):
            for _ in range(max(warmup, 1)):
                self._run()
        torch.cuda.current_stream(self.static_x.device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_out, self._finite, self._ctx = self._run()

    def __call__(self, x: torch.Tensor, generator=None, *, noise: torch.Tensor | None = None) -> torch.Tensor:
        """The plan's result for ``x`` (same shape, dtype and device as ``x_example``)."""
        if not isinstance(x, torch.Tensor) or x.shape != self.static_x.shape or x.dtype != self.static_x.dtype:
            raise ValueError(
                f"x must be a tensor of shape {tuple(self.static_x.shape)} and dtype {self.static_x.dtype} "
                "(those of x_example)"
            )
        self.static_x.copy_(x)
        if self.static_noise is not None:
            if noise is None:
                noise = self.plan.draw_noise(x, generator)
            elif generator is not None:
                raise ValueError("pass either generator or noise, not both")
            if noise.shape != self.static_noise.shape:
                raise ValueError(f"noise must have shape {tuple(self.static_noise.shape)} (plan.draw_noise(x, generator))")
            self.static_noise.copy_(noise)
        if self.use_graph:
            self.graph.replay()
            out, finite, ctx = self.static_out, self._finite, self._ctx
        else:
            out, finite, ctx = self._run()
        if finite is not None:
            ctx.checksums.raise_first(finite.tolist())
        return out.clone()
