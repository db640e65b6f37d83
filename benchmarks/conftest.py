"""Options and the end-of-session ratio table of the speed suite (``benchmarks/test_speed.py``).

Run it with ``pytest benchmarks/ --benchmark-only``. Options:

``--device cpu|cuda``   where the tensors live (``cuda`` skips cleanly without a GPU);
``--speed-steps N``     steps per timed run (default 50; per-step time = run time / N);
``--speed-rounds R``    timed runs per case (default 7, after one untimed warm-up run);
``--speed-budget S``    seconds of timed runs per case (default 2): a case whose warm-up run
                        took longer gets fewer rounds, at least one;
``--speed-threads T``   torch CPU threads (default 1);
``--speed-timer process|wall``  on the CPU, CPU time of this process (default: a loaded,
                        shared machine does not inflate it; with 1 thread it equals the work
                        done) or wall-clock time; on CUDA always wall-clock time (each timed
                        run ends with a synchronize);
``--speed-e2e-compile``  also time the end-to-end rows compiled (``torch.compile`` of a whole
                        U-Net run: minutes of compiling on a CPU);
``--speed-out PATH``    also write the ratio table to ``PATH`` (JSON) and ``PATH`` with
                        ``.md`` (markdown), e.g. ``benchmarks/results/speed_cpu.json``.

Besides the per-step table the summary prints the planned and compiled runs, the marginal
per-step cost (``test_marginal_cost``) and the end-to-end U-Net rows (``test_end_to_end``).

The table is read back from pytest-benchmark's results: each case stores what it timed in
``benchmark.extra_info`` (suite, library, solver, batch, steps, nfe).
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import pytest

from .speed_gpu import cpu_name  # one definition, shared with the GPU script

SUITE = "ksampling-speed"

try:
    import pytest_benchmark  # noqa: F401
except ImportError:  # the suite needs it; say how to get it instead of a fixture error

    @pytest.fixture
    def benchmark():
        pytest.skip("the speed suite needs pytest-benchmark: pip install ksampling[bench]")


def pytest_addoption(parser):
    group = parser.getgroup("ksampling speed suite")
    group.addoption("--device", default="cpu", choices=("cpu", "cuda"), help="device of the speed suite (default cpu)")
    group.addoption("--speed-steps", type=int, default=50, help="steps per timed sampling run (default 50)")
    group.addoption("--speed-rounds", type=int, default=7, help="timed runs per case (default 7)")
    group.addoption(
        "--speed-threads",
        type=int,
        default=1,
        help="torch CPU threads during the suite (default 1: overhead, not parallel speed-up, is measured)",
    )
    group.addoption(
        "--speed-timer",
        default="process",
        choices=("process", "wall"),
        help="CPU device: 'process' (CPU time of this process, default; other processes on a shared "
        "machine do not inflate it) or 'wall'. --device cuda always uses wall time.",
    )
    group.addoption(
        "--speed-budget",
        type=float,
        default=2.0,
        help="seconds of timed runs per case; slower cases get fewer rounds (default 2)",
    )
    group.addoption(
        "--speed-e2e-compile",
        action="store_true",
        help="also time the end-to-end U-Net runs compiled with torch.compile (slow to compile on a CPU)",
    )
    group.addoption(
        "--speed-out",
        default=None,
        metavar="PATH",
        help="write the ratio table to PATH (JSON) and to PATH with suffix .md (markdown)",
    )


def pytest_configure(config):
    steps = config.getoption("--speed-steps", default=50)
    rounds = config.getoption("--speed-rounds", default=7)
    if steps is not None and steps < 2:
        raise pytest.UsageError("--speed-steps must be >= 2")
    if rounds is not None and rounds < 1:
        raise pytest.UsageError("--speed-rounds must be >= 1")
    threads = config.getoption("--speed-threads", default=1)
    if threads is not None and threads < 1:
        raise pytest.UsageError("--speed-threads must be >= 1")
    budget = config.getoption("--speed-budget", default=2.0)
    if budget is not None and not budget > 0:
        raise pytest.UsageError("--speed-budget must be > 0")


def speed_timer(config):
    """The clock of every case: CPU time of the process on the CPU (unless --speed-timer
    wall), wall-clock time on CUDA (the GPU's work is not CPU time of this process)."""
    if config.getoption("--device") == "cuda" or config.getoption("--speed-timer") == "wall":
        return time.perf_counter
    return time.process_time


def pytest_collection_modifyitems(config, items):
    timer = speed_timer(config)
    for item in items:
        if item.nodeid.split("::")[0].endswith("test_speed.py"):
            item.add_marker(pytest.mark.benchmark(timer=timer))


# -- the ratio table ---------------------------------------------------------------------------
def _collect(config) -> list[dict]:
    session = getattr(config, "_benchmarksession", None)
    if session is None:
        return []
    rows = []
    for bench in session.benchmarks:
        info = dict(bench.extra_info or {})
        if info.get("suite") != SUITE or not bench.stats or not bench.stats.rounds:
            continue
        steps = info["steps"]
        info.update(
            min_s=bench.stats.min,
            median_s=bench.stats.median,
            rounds=bench.stats.rounds,
            per_step_us=bench.stats.min / steps * 1e6,
            per_step_median_us=bench.stats.median / steps * 1e6,
        )
        rows.append(info)
    return rows


#: (column key, comparison, library): the timed cases behind each column of the table
COLUMNS = (
    ("ksampling", "k-diffusion", "ksampling"),
    ("k-diffusion", "k-diffusion", "k-diffusion"),
    ("ksampling_vp", "diffusers", "ksampling"),
    ("ksampling_eps", "diffusers", "ksampling_eps"),
    ("diffusers", "diffusers", "diffusers"),
    ("ksampling_plan", "k-diffusion", "ksampling_plan"),
    ("ksampling_compiled", "k-diffusion", "ksampling_compiled"),
)
#: the columns of the main table and of the per-run setup table
MAIN_COLUMNS = COLUMNS[:5]
#: ratio name -> (numerator column, denominator column)
RATIOS = {
    "ks/kd": ("ksampling", "k-diffusion"),
    "ks/diffusers": ("ksampling_vp", "diffusers"),
    "ks_eps/diffusers": ("ksampling_eps", "diffusers"),
    "plan/kd": ("ksampling_plan", "k-diffusion"),
    "compiled/kd": ("ksampling_compiled", "k-diffusion"),
}
#: comparisons that are not per-step cases of the main table
SEPARATE = ("floor", "marginal", "e2e")


def build_table(rows: list[dict]) -> list[dict]:
    """One entry per (batch, solver): per-step time (µs) of each column, the ratios, and
    at batch 1 the time of a whole 2-step run (``*_run2_us``: the per-run setup plus two
    steps, which the per-step figures amortise).

    Columns: ``ksampling`` and ``k-diffusion`` run the denoiser D(x; σ) = x/2 on
    k-diffusion's Karras grid; ``ksampling_vp`` (the same denoiser), ``ksampling_eps`` (an
    ε-network behind ksampling's VP ε-wrapper) and ``diffusers`` (the ε-network in the
    scheduler loop) run on the diffusers scheduler's own grid. A ratio below 1 means
    ksampling is faster.
    """
    timed, short = {}, {}
    for r in rows:
        if r["comparison"] in SEPARATE:
            continue
        key = (r["comparison"], r["library"], r["batch_label"], r["solver"])
        (short if r["kind"] == "setup" else timed)[key] = r
    table = []
    for batch, solver in sorted({(k[2], k[3]) for k in timed}, key=lambda k: (_batch_order(k[0]), k[1])):
        entry = {"batch": batch, "solver": solver}
        for column, comparison, library in COLUMNS:
            r = timed.get((comparison, library, batch, solver))
            entry[f"{column}_us"] = None if r is None else round(r["per_step_us"], 2)
            if r is None:
                continue
            entry[f"{column}_median_us"] = round(r["per_step_median_us"], 2)
            entry[f"{column}_nfe"] = r.get("nfe")
            for extra in ("scheduler", "wrapper"):
                if extra in r:
                    entry[extra] = r[extra]
            s = short.get((comparison, library, batch, solver))
            if s is not None:
                entry[f"{column}_run2_us"] = round(s["min_s"] * 1e6, 1)
        for name, (num, den) in RATIOS.items():
            entry[name] = _ratio(entry[f"{num}_us"], entry[f"{den}_us"])
        table.append(entry)
    return table


def _batch_order(label: str) -> int:
    return int(label[1:]) if label[1:].isdigit() else 0


def _ratio(a, b):
    return None if a is None or b is None or b == 0 else round(a / b, 3)


def _fmt(v, digits=1):
    if v is None:
        return "—"
    return f"{v:.{digits}f}"


def build_floors(rows: list[dict]) -> dict:
    """batch label -> {op: µs}: the cost of one noise draw, one elementwise op and one
    sum (the finiteness check) at that batch (``test_cost_floor``)."""
    floors: dict = {}
    for r in rows:
        if r["comparison"] == "floor":
            floors.setdefault(r["batch_label"], {})[r["solver"]] = round(r["per_step_us"], 2)
    return floors


def format_markdown(table: list[dict], meta: dict, floors: dict | None = None) -> str:
    lines = [
        f"Per-step time of the sampler itself (a model that costs one multiply), {meta['steps']} steps "
        f"per run, minimum over up to {meta['rounds']} runs ({meta['timer']}), device {meta['device']}"
        + (f" ({meta['device_name']})" if meta.get("device_name") else "")
        + f", torch {meta['torch']}, {meta['threads']} thread(s). µs per step; a ratio below 1: ksampling faster.",
        "",
        "| batch | solver | ksampling | k-diffusion | ks/kd | ksampling | ksampling + ε wrapper | diffusers "
        "| ks/diffusers | ks_eps/diffusers |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for e in table:
        if all(e[f"{column}_us"] is None for column, _, _ in MAIN_COLUMNS):
            continue  # a solver timed only planned/compiled: in the table of its own
        lines.append(
            f"| {meta['batches'].get(e['batch'], e['batch'])} | {e['solver']} | {_fmt(e['ksampling_us'])} | "
            f"{_fmt(e['k-diffusion_us'])} | {_fmt(e['ks/kd'], 2)} | {_fmt(e['ksampling_vp_us'])} | "
            f"{_fmt(e['ksampling_eps_us'])} | {_fmt(e['diffusers_us'])} | {_fmt(e['ks/diffusers'], 2)} | "
            f"{_fmt(e['ks_eps/diffusers'], 2)} |"
        )
    lines += [
        "",
        "Columns 3-5: D(x; σ) on k-diffusion's Karras grid. Columns 6-10: diffusers' own grid; "
        "'ksampling' runs the same D, 'ksampling + ε wrapper' the ε-network through "
        + (f"`{meta['eps_wrapper']}`" if meta.get("eps_wrapper") else "a VP ε-wrapper")
        + ", diffusers the ε-network in `scale_model_input -> model -> step`.",
    ]
    if floors:
        lines.append("")
    for batch, ops in sorted((floors or {}).items(), key=lambda kv: _batch_order(kv[0])):
        lines.append(
            f"Cost floors at {meta['batches'].get(batch, batch)}: one N(0, I) draw {_fmt(ops.get('randn'))} µs, "
            f"one elementwise multiply {_fmt(ops.get('multiply'))} µs, one sum (the finiteness check) "
            f"{_fmt(ops.get('sum'))} µs."
        )
    short = [e for e in table if any(e.get(f"{column}_run2_us") is not None for column, _, _ in MAIN_COLUMNS)]
    if short:
        lines += [
            "",
            "Per-run setup: time of a whole 2-step run at batch 1 (setup + 2 steps), µs.",
            "",
            "| solver | ksampling | k-diffusion | ksampling (diffusers grid) | ksampling + ε wrapper | diffusers |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for e in short:
            cells = " | ".join(_fmt(e.get(f"{column}_run2_us"), 0) for column, _, _ in MAIN_COLUMNS)
            lines.append(f"| {e['solver']} | {cells} |")
    lines.append("")
    for name in RATIOS:
        values = [e[name] for e in table if e[name] is not None]
        if values:
            goal = f"; {sum(v <= 0.5 for v in values)} at or below the goal of 0.5" if name == "ks/kd" else ""
            lines.append(f"{name}: median {_median(values):.2f}, best {min(values):.2f}, worst {max(values):.2f} over {len(values)} cases{goal}.")
    return "\n".join(lines) + "\n"


def build_marginal(rows: list[dict]) -> list[dict]:
    """One entry per solver: marginal µs per step of ksampling (``sample``), a plan and
    k-diffusion, and the ratios (``test_marginal_cost``)."""
    table = []
    for r in rows:
        if r["comparison"] == "marginal" and r.get("marginal"):
            m = r["marginal"]
            table.append(dict(solver=r["solver"], ksampling_us=m["ksampling"], plan_us=m["ksampling_plan"],
                              kd_us=m["k-diffusion"], ratio=m["ratio"], plan_ratio=m["plan_ratio"]))
    return sorted(table, key=lambda e: e["solver"])


def build_e2e(rows: list[dict]) -> list[dict]:
    """One entry per (solver, batch, steps): each library's run time (s) and its sampler share
    ``(run − model) / run`` against the ``model`` case (the network alone)."""
    groups: dict = {}
    for r in rows:
        if r["comparison"] == "e2e":
            groups.setdefault((r["solver"], r["shape"][0], r["steps"]), {})[r["library"]] = r["min_s"]
    table = []
    for (solver, batch, steps), times in sorted(groups.items()):
        entry = {"solver": solver, "batch": batch, "steps": steps, "model_s": times.get("model")}
        for library in ("ksampling", "ksampling_plan", "ksampling_compiled", "k-diffusion", "diffusers"):
            t = times.get(library)
            entry[f"{library}_s"] = t
            model = times.get("model")
            entry[f"{library}_share"] = None if t is None or model is None else round(max(t - model, 0.0) / t, 4)
        table.append(entry)
    return table


def format_extra(table: list[dict], marginal: list[dict], e2e: list[dict]) -> str:
    """The planned/compiled, marginal-cost and end-to-end tables (markdown)."""
    lines = []
    planned = [e for e in table if e.get("ksampling_plan_us") is not None]
    if planned:
        lines += [
            "",
            "Planned and compiled runs (k-diffusion's grid, same model): µs per step. `plan` is "
            "`ksampling.plan(...)` made once and called per run; `compiled` is "
            "`torch.compile(plan, fullgraph=True)` (inductor, compile time not counted).",
            "",
            "| batch | solver | ksampling | plan | compiled | k-diffusion | plan/kd | compiled/kd |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for e in planned:
            lines.append(
                f"| {e['batch']} | {e['solver']} | {_fmt(e['ksampling_us'])} | {_fmt(e['ksampling_plan_us'])} | "
                f"{_fmt(e['ksampling_compiled_us'])} | {_fmt(e['k-diffusion_us'])} | {_fmt(e['plan/kd'], 2)} | "
                f"{_fmt(e['compiled/kd'], 2)} |"
            )
    if marginal:
        lines += [
            "",
            "Marginal cost of one step, (t(400 steps) − t(100 steps)) / 300: batch 1, d = 16, D(x; σ) = x/2, "
            "one thread, median of runs interleaved with k-diffusion; µs per step.",
            "",
            "| solver | ksampling | plan | k-diffusion | ks/kd | plan/kd |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for e in marginal:
            lines.append(
                f"| {e['solver']} | {_fmt(e['ksampling_us'], 2)} | {_fmt(e['plan_us'], 2)} | {_fmt(e['kd_us'], 2)} | "
                f"{_fmt(e['ratio'], 2)} | {_fmt(e['plan_ratio'], 2)} |"
            )
        lines.append("")
        for key, name in (("ratio", "ks/kd"), ("plan_ratio", "plan/kd")):
            values = [e[key] for e in marginal if e[key] is not None]
            if values:
                lines.append(
                    f"Marginal {name}: median {_median(values):.2f} (goal <= 0.3), "
                    f"worst {max(values):.2f} (goal <= 0.5) over {len(values)} solvers."
                )
    if e2e:
        lines += [
            "",
            "End to end: diffusers `UNet2DModel` (random weights, 16x16, channels 32/64) behind ksampling's VP "
            "ε-wrapper; minimum run time in ms and, in brackets, the sampler's share (run − model) / run, "
            "where `model` is the network alone on the same inputs.",
            "",
            "| solver | batch | steps | model | ksampling | plan | compiled | k-diffusion | diffusers |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for e in e2e:
            cells = []
            for library in ("ksampling", "ksampling_plan", "ksampling_compiled", "k-diffusion", "diffusers"):
                t, share = e[f"{library}_s"], e[f"{library}_share"]
                cells.append("—" if t is None else f"{t * 1e3:.1f}" + ("" if share is None else f" ({share:.1%})"))
            model = "—" if e["model_s"] is None else f"{e['model_s'] * 1e3:.1f}"
            lines.append(f"| {e['solver']} | {e['batch']} | {e['steps']} | {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + ("\n" if lines else "")


def _median(values):
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def _meta(config, rows) -> dict:
    import torch

    device = config.getoption("--device")
    meta = {
        "device": device,
        "device_name": torch.cuda.get_device_name() if device == "cuda" and torch.cuda.is_available() else cpu_name(),
        "torch": torch.__version__,
        "threads": config.getoption("--speed-threads"),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "steps": config.getoption("--speed-steps"),
        "rounds": config.getoption("--speed-rounds"),
        "statistic": "min over rounds of (run time / steps)",
        "timer": speed_timer(config).__name__,
        "batches": {r["batch_label"]: "x".join(map(str, r["shape"])) for r in rows if r["comparison"] not in SEPARATE[1:]},
        "command": "pytest benchmarks/ --benchmark-only " + " ".join(
            f"--{name}={config.getoption('--' + name)}" for name in ("device", "speed-steps", "speed-rounds", "speed-threads", "speed-timer")
        ),
    }
    for name in ("ksampling", "diffusers"):
        try:
            meta[name] = __import__(name).__version__
        except Exception:  # the table still prints without a version
            pass
    meta["k-diffusion"] = next((r.get("k_diffusion_version") for r in rows if r.get("k_diffusion_version")), None)
    meta["eps_wrapper"] = next((r.get("wrapper") for r in rows if r.get("wrapper")), None)
    return meta


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    rows = _collect(config)
    if not rows:
        return
    table = build_table(rows)
    floors = build_floors(rows)
    marginal = build_marginal(rows)
    e2e = build_e2e(rows)
    meta = _meta(config, rows)
    text = format_markdown(table, meta, floors) + format_extra(table, marginal, e2e)
    terminalreporter.section("ksampling speed: per-step time and ratios")
    terminalreporter.write(text)
    out = config.getoption("--speed-out")
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        json_path = path if path.suffix == ".json" else path.with_suffix(".json")
        json_path.write_text(
            json.dumps(
                {"meta": meta, "table": table, "floors": floors, "marginal": marginal, "e2e": e2e, "cases": rows},
                indent=1,
                default=str,
            )
            + "\n"
        )
        json_path.with_suffix(".md").write_text(text)
        terminalreporter.write_line(f"wrote {json_path} and {json_path.with_suffix('.md')}")
