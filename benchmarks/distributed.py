"""Sample generation for the distribution metrics, on one process or many (``torchrun``).

The seeds are cut into consecutive chunks of ``batch`` seeds and the chunks are dealt to the
ranks round-robin (chunk c to rank c mod world size), as EDM's ``generate.py`` deals its
batches. Each sample has its own generator seeded with its seed: it first draws the initial
noise and then, continuing the same stream, every random number the solver needs
(``ksampling.sample(..., generator=[one per sample])``). A chunk is therefore the same batch
whatever the number of ranks, and the gathered result equals the single-process run exactly.

Run it as a plain process or under torchrun (gloo on the CPU, NCCL on CUDA)::

    python -m benchmarks.distributed --problem gmm-2d --solver euler_ancestral --nfe 10 --samples 2000
    torchrun --standalone --nproc_per_node 2 -m benchmarks.distributed --problem gmm-2d ... --out s.pt

Rank 0 prints the metrics and, with ``--out``, saves ``{"samples", "seeds", "metrics", ...}``.
Solvers whose default noise is a Brownian tree get, with ``--brownian-law``, correlated
Gaussian draws with the tree's exact correlations instead (same law, far cheaper; this is
what the suite uses for its distribution metrics).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

import torch
import torch.distributed as dist

from .runners import generate, methods_for, plan_steps, rank_and_world

__all__ = ["generate", "rank_and_world", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    from .problems import PROBLEMS, get_problem
    from .suite import _dist_metrics

    parser = argparse.ArgumentParser(prog="python -m benchmarks.distributed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--problem", default="gmm-2d", choices=[p for p in PROBLEMS if p != "digits-net"])
    parser.add_argument("--solver", default="euler_ancestral")
    parser.add_argument("--impl", default="ksampling", choices=["ksampling", "k-diffusion"])
    parser.add_argument("--schedule", default="karras")
    parser.add_argument("--nfe", type=int, default=10, help="NFE budget (the step count is chosen to fit it)")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0, help="first seed; sample i uses seed + i")
    parser.add_argument("--batch", type=int, default=256, help="seeds per chunk")
    parser.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK when available, else cpu")
    parser.add_argument("--out", default=None, help="save the samples and metrics here (rank 0)")
    parser.add_argument("--brownian-law", action="store_true",
                        help="Brownian-tree solvers: draw correlated Gaussians with the tree's law (faster)")
    args = parser.parse_args(argv)

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = args.device or (f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if distributed:
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    try:
        problem = get_problem(args.problem, device=device)
        methods = [m for m in methods_for([args.solver], with_kdiff=args.impl == "k-diffusion") if m.impl == args.impl]
        if not methods:
            parser.error(f"{args.impl} has no solver {args.solver!r}")
        method = methods[0]
        plan = plan_steps(method, args.schedule, args.nfe, problem.sigma_min, problem.sigma_max)
        if plan is None:
            parser.error(f"{args.solver} cannot run within {args.nfe} NFE")
        seeds = range(args.seed, args.seed + args.samples)
        mixing = plan.noise_mixing(method.noise) if args.brownian_law and method.noise == "brownian" else None
        samples = generate(problem, method, plan.grid, seeds, budget=args.nfe, batch=args.batch, device=device,
                           noise_mixing=mixing)
        rank, world = rank_and_world()
        if rank == 0:
            result = {"problem": problem.name, "solver": method.label, "schedule": args.schedule, "nfe": plan.nfe,
                      "steps": plan.steps, "world_size": world, "seeds": list(seeds)}
            if problem.log_prob is not None:
                result["metrics"] = _dist_metrics(problem, samples)
            print({k: v for k, v in result.items() if k != "seeds"})
            if args.out:
                torch.save({**result, "samples": samples.cpu()}, args.out)
    finally:
        if distributed:
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
