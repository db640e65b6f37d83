"""Peak memory of a run does not grow with its number of steps (issue 12).

With ``check_finite=True`` the loop used to keep one 0-d checksum tensor per model call in a
list. Those small long-lived allocations, made between the large ones of every step, kept
the heap from reusing its freed blocks: peak RSS grew by about one state's size per call
(heun at batch 64×16384: 273 MiB at 100 steps, 6.7 GB at 1000; at 16×16384, here, about
240 MiB at 100 steps and 1.2–2 GB at 1000). Peak RSS is per process, and the growth shows
on a fresh heap, so each run is the first and only run of its own subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: a representative set: one-call, multistep and ancestral-noise solvers (each
#: goes through the same loop); each grew before the fix
SOLVERS = ("euler", "dpmpp_2m", "euler_ancestral")

SCRIPT = r"""
import resource, sys, torch
import ksampling

torch.set_num_threads(1)
solver, steps = sys.argv[1], int(sys.argv[2])
sigmas = ksampling.schedules.karras(steps, 0.03, 14.6)
x = torch.randn(16, 16384, generator=torch.Generator().manual_seed(0)) * sigmas[0]  # 1 MiB per state
ksampling.sample(lambda x, sigma: x * 0.5, x, sigmas, solver, generator=torch.Generator().manual_seed(1))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss is in KiB on Linux only")
@pytest.mark.parametrize("solver", SOLVERS)
def test_peak_memory_is_flat_in_the_number_of_steps(solver):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    runs = {
        steps: subprocess.Popen([sys.executable, "-c", SCRIPT, solver, str(steps)], stdout=subprocess.PIPE, text=True, env=env)
        for steps in (100, 1000)
    }
    peaks = {}
    for steps, run in runs.items():
        out, _ = run.communicate(timeout=300)
        assert run.returncode == 0
        peaks[steps] = int(out.split()[-1])
    assert peaks[1000] <= 1.15 * peaks[100], f"{solver}: peak RSS {peaks[1000]} KiB at 1000 steps vs {peaks[100]} KiB at 100"
