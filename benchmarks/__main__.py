"""``python -m benchmarks``: the steps-vs-quality benchmark (the project's main job).

With no arguments it runs the default (four exact problems, every solver, three schedules,
NFE 5/10/20; about half a minute on two idle CPU cores) and prints the table; ``--quick`` is
the CI smoke test; ``--full`` is the run committed under ``benchmarks/results/``. The JSON of every measurement goes to
``benchmarks/out/results.json`` and the plots to ``benchmarks/out/plots/`` unless
``--out`` / ``--plots`` say otherwise.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
DEFAULT_OUT = ROOT / "out" / "results.json"
DEFAULT_PLOTS = ROOT / "out" / "plots"

PRESETS = {
    "default": dict(problems=["gauss-aniso", "gmm-2d", "gmm-64d", "digits"],
                    schedules=["karras", "exponential", "kl_optimal"], nfe=[5, 10, 20], batch=128,
                    dist_samples=200, dist_for_ode=False, sde_schedules=["karras"]),
    "quick": dict(problems=["gauss-iso", "gmm-2d"], solvers=["euler", "heun", "dpmpp_2m", "euler_ancestral"],
                  schedules=["karras"], nfe=[4, 8], batch=16, dist_samples=100, dist_for_ode=False,
                  sde_schedules=None),
    "full": dict(problems=["gauss-iso", "gauss-aniso", "gmm-2d", "gmm-64d", "digits", "digits-net"], schedules=None,
                 nfe=[3, 4, 5, 6, 8, 10, 15, 20, 35, 50], batch=256, dist_samples=1000, dist_for_ode=True,
                 sde_schedules=["karras", "kl_optimal"], fit_nfe=[4, 5, 6, 8, 10]),
}
#: the comparison on problems that are not in the repository's list (``--unseen``): k-diffusion's
#: ODE samplers, a few of ksampling's, and the fit
UNSEEN = dict(batch=512, solvers=["euler", "heun", "dpm_2", "lms", "dpmpp_2m", "dpm_fast", "ipndm", "deis", "unipc"],
              schedules=["karras", "exponential", "kl_optimal"], nfe=[4, 5, 6, 8, 10], fit_nfe=[4, 5, 6, 8, 10])


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _ints(text: str) -> list[int]:
    try:
        values = sorted({int(t) for t in _csv(text)})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--nfe takes comma-separated integers, got {text!r}") from None
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError(f"--nfe budgets must be >= 1, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="CI smoke: 2 problems, 4 solvers, NFE 4 and 8")
    mode.add_argument("--full", action="store_true",
                      help="the full CPU run: all problems (trains digits-net once), all schedules, NFE 3..50")
    mode.add_argument("--unseen", action="store_true",
                      help="the fit's goal check on two mixtures not in the problem list (ODE samplers, NFE 4..10)")
    p.add_argument("--problems", type=_csv, help="comma-separated problems (default: the preset's)")
    p.add_argument("--solvers", type=_csv, help="comma-separated solvers, or 'all' (default: all registered)")
    p.add_argument("--schedules", type=_csv, help="comma-separated schedules, or 'all'")
    p.add_argument("--nfe", type=_ints, help="comma-separated NFE budgets")
    p.add_argument("--fit", type=_ints, metavar="NFE", help="fitted rows (ksampling.fit, solver 'auto') at these "
                   "budgets (--full: 4,5,6,8,10; otherwise none)")
    p.add_argument("--no-fit", action="store_true", help="no fitted rows")
    p.add_argument("--fit-seconds", type=float, default=60.0, help="time limit of each fit")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--seed", type=int, default=0, help="sample i of a pathwise run uses seed + i")
    p.add_argument("--batch", type=int, help="samples per pathwise run")
    p.add_argument("--dist-samples", type=int, help="samples per run for the mixture distribution metrics")
    p.add_argument("--no-kdiffusion", action="store_true", help="skip the k-diffusion comparison")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="JSON of every measurement")
    p.add_argument("--plots", default=str(DEFAULT_PLOTS), help="directory for the PNG plots")
    p.add_argument("--no-plots", action="store_true", help="write no plots")
    p.add_argument("--docs", default=None, help="also write this Markdown page (docs/benchmarks.md) and copy the "
                                                "plots next to it under img/benchmarks/")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (small tensors: 1 is fastest)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def config_from_args(args, parser):
    from ksampling import samplers, schedules

    from .problems import PROBLEMS
    from .suite import Config
    from .unseen import UNSEEN_PROBLEMS

    preset = dict(PRESETS["quick" if args.quick else "full" if args.full else "default"])
    if args.unseen:
        preset = dict(PRESETS["default"], problems=list(UNSEEN_PROBLEMS), sde_schedules=[], **UNSEEN)
    problems = args.problems or preset["problems"]
    unknown = [p for p in problems if p not in PROBLEMS and p not in UNSEEN_PROBLEMS]
    if unknown:
        parser.error(f"--problems: unknown {', '.join(unknown)}; known: {', '.join([*PROBLEMS, *UNSEEN_PROBLEMS])}")
    known_solvers = samplers.available()
    if args.solvers and args.solvers != ["all"]:
        solvers = args.solvers
    else:
        solvers = preset.get("solvers") if not args.solvers else None
        # 'fitted' is the fit's wrapper around another solver (its own rows come from --fit);
        # CFG++ solvers need a guided model, which the benchmark's problems are not
        solvers = [
            s for s in (solvers or known_solvers)
            if s in known_solvers and s != "fitted" and not samplers.info(s)["needs_uncond"]
        ]
    unknown = [s for s in solvers if s not in known_solvers]
    if unknown:
        parser.error(f"--solvers: unknown {', '.join(unknown)}; known: {', '.join(known_solvers)}")
    known_schedules = schedules.available()
    sched = args.schedules or preset["schedules"]
    if sched is None or sched == ["all"]:
        sched = known_schedules
    unknown = [s for s in sched if s not in known_schedules]
    if unknown:
        parser.error(f"--schedules: unknown {', '.join(unknown)}; known: {', '.join(known_schedules)}")
    batch = args.batch or preset["batch"]
    if batch < 1:
        parser.error("--batch must be >= 1")
    dist_samples = args.dist_samples or preset["dist_samples"]
    if dist_samples < 2:
        parser.error("--dist-samples must be >= 2")
    fit_nfe = [] if args.no_fit else (args.fit or preset.get("fit_nfe", []))
    if args.fit_seconds <= 0:
        parser.error("--fit-seconds must be > 0")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    return Config(problems=problems, solvers=solvers, schedules=sched, nfe=args.nfe or preset["nfe"],
                  device=args.device, seed=args.seed, batch=batch, dist_samples=dist_samples,
                  dist_for_ode=preset["dist_for_ode"], sde_schedules=preset["sde_schedules"],
                  kdiff=not args.no_kdiffusion, progress=not args.no_progress, fit_nfe=fit_nfe,
                  fit_seconds=args.fit_seconds)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    torch.set_num_threads(args.threads)
    config = config_from_args(args, parser)

    from . import report
    from .suite import run_suite

    started = time.perf_counter()
    results = run_suite(config, log=lambda msg: print(msg, file=sys.stderr))
    print(report.text_report(results))
    print()
    json_path = report.write_json(results, args.out)
    print(f"JSON of every measurement ({len(results['records'])} records): {json_path}")
    plots = []
    if not args.no_plots:
        plots = report.make_plots(results, args.plots)
        print(f"plots ({len(plots)}): {Path(args.plots)}/ ({', '.join(p.name for p in plots)})")
    if args.docs:
        docs = Path(args.docs)
        image_dir = docs.parent / "img" / "benchmarks"
        image_dir.mkdir(parents=True, exist_ok=True)
        for plot in plots:
            shutil.copy(plot, image_dir / plot.name)
        try:
            json_name = str(Path(args.out).resolve().relative_to(ROOT.parent))
        except ValueError:
            json_name = str(args.out)
        docs.write_text(report.docs_page(results, json_name, [p.name for p in plots]) + "\n")
        print(f"docs page: {docs} (images in {image_dir})")
    print(f"total {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
