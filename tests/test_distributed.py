"""Distributed sample generation: 2 CPU processes under torchrun (gloo, loopback) give exactly
the samples of one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

pytest.importorskip("scipy")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the benchmarks package lives at the repository root
    sys.path.insert(0, str(ROOT))
ARGS = ["--problem", "gmm-2d", "--solver", "euler_ancestral", "--schedule", "karras", "--nfe", "6",
        "--samples", "40", "--seed", "3", "--batch", "8", "--device", "cpu"]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_two_process_torchrun_equals_single_process(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo"}
    env.pop("WORLD_SIZE", None)
    single, double = tmp_path / "single.pt", tmp_path / "double.pt"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.distributed", *ARGS, "--out", str(single)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "benchmarks.distributed", *ARGS, "--out", str(double)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = torch.load(single), torch.load(double)
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert one["samples"].shape == (40, 2)
    assert torch.equal(one["samples"], two["samples"])
    assert one["metrics"] == two["metrics"]
    # 40 seeds in chunks of 8: five chunks, dealt 0,2,4 to rank 0 and 1,3 to rank 1; every
    # sample is its own seed's, so a lone run of seed 3 + 8 (sample 8) is the same sample
    from benchmarks import problems, suite
    from benchmarks.distributed import generate

    problem = problems.get_problem("gmm-2d")
    method = next(m for m in suite.methods_for(["euler_ancestral"], with_kdiff=False))
    plan = suite.plan_steps(method, "karras", 6, problem.sigma_min, problem.sigma_max)
    lone = generate(problem, method, plan.grid, [11], batch=1)
    torch.testing.assert_close(lone[0], one["samples"][8], rtol=1e-12, atol=1e-12)
