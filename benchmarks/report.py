"""Tables, JSON, plots and the docs page of a benchmark run.

* :func:`text_report`: the tables printed on stdout: per problem and schedule, solver × NFE
  budget (pathwise relative RMSE for ODE solvers, W2 or excess NLL for SDE solvers), the
  fitted order, the best solver per budget and the comparison with k-diffusion at 10 NFE;
* :func:`write_json`: every measurement and the environment;
* :func:`make_plots`: error against NFE (log-log, one line per solver), the envelope of the
  best ksampling solver against k-diffusion's best, the SDE metrics, and digits samples;
* :func:`markdown_report`: the same tables for ``docs/benchmarks.md``.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

from .metrics import fit_order

__all__ = ["text_report", "write_json", "load_json", "make_plots", "markdown_report", "docs_page", "goal_summary",
           "fitted_orders", "fit_summary", "GOAL_NFE", "FIT_GOALS"]

GOAL_NFE = 10  # the budget at which ksampling's best is compared with k-diffusion's best
PICTURE_BUDGETS = (3, 5, 10, 20, 50)
#: issue 9's goals for the fitted sampler: {NFE: (RMSE ratio, median ratio)} against the best
#: k-diffusion sampler on its Karras grid (each metric's best, picked knowing the answer)
FIT_GOALS = {5: (0.5, 0.35), 10: (0.6, 0.25)}  # the NFE columns of the digits pictures when a run has more


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return f"{value:.1e}" if abs(value) >= 1e-99 or value == 0 else f"{value:.0e}"


def _fmt_signed(value) -> str:
    return "-" if value is None else f"{value:+.3f}"


def _order_key(label: str) -> tuple:
    return (label.startswith("kd:"), label)


def _rows(records, problem, schedule, kind, metric):
    """{label: {budget: record}} for the table of (problem, schedule); grid-free solvers join
    every schedule's table."""
    rows: dict[str, dict[int, dict]] = defaultdict(dict)
    for r in records:
        if r["problem"] != problem or r["kind"] != kind or r.get(metric) is None:
            continue
        if r["schedule"] not in (schedule, "-"):
            continue
        label = r["label"] + ("*" if r["schedule"] == "-" else "")
        rows[label][r["nfe_budget"]] = r
    return dict(sorted(rows.items(), key=lambda kv: _order_key(kv[0])))


def fitted_orders(records, metric: str = "rel_rmse", min_nfe: int = 10) -> dict[tuple[str, str, str], float]:
    """{(problem, label, schedule): order}: minus the slope of log error vs log counted NFE,
    over the budgets >= ``min_nfe`` (all budgets when fewer than two are that large)."""
    groups: dict[tuple[str, str, str], list] = defaultdict(list)
    for r in records:
        if r.get(metric) is not None and r["kind"] == "ode":
            groups[(r["problem"], r["label"], r["schedule"])].append((r["nfe"], r[metric]))
    orders = {}
    for key, points in groups.items():
        high = [p for p in points if p[0] >= min_nfe]
        use = high if len({p[0] for p in high}) >= 2 else points
        order = fit_order([p[0] for p in use], [p[1] for p in use])
        if order is not None:
            orders[key] = order
    return orders


def _schedules(records, problem):
    seen = []
    for r in records:
        if r["problem"] == problem and r["schedule"] != "-" and r["schedule"] not in seen:
            seen.append(r["schedule"])
    return seen


def _budgets(records, problem):
    return sorted({r["nfe_budget"] for r in records if r["problem"] == problem})


_TITLES = {
    "rel_rmse": "ODE solvers: RMSE / data std at sigma_min against the exact solution from the same noise",
    "w2": "SDE solvers: exact W2 between the output law and the true law at sigma_min",
    "excess_nll": "SDE solvers: NLL of samples minus NLL of exact samples (nats; < 0 = too concentrated)",
}


def _tables(results, problem, fmt_row, schedules=None) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of every table of one problem (of the given schedules only)."""
    records = results["records"]
    budgets = _budgets(records, problem)
    orders = fitted_orders(records)
    out = []
    for kind, metric in (("ode", "rel_rmse"), ("sde", "w2"), ("sde", "excess_nll")):
        for schedule in _schedules(records, problem):
            if schedules is not None and schedule not in schedules:
                continue
            rows = _rows(records, problem, schedule, kind, metric)
            if not rows:
                continue
            header = ["solver"] + [str(b) for b in budgets] + (["order"] if kind == "ode" else [])
            body = []
            for label, cells in rows.items():
                row = [label] + [fmt_row(metric, cells.get(b, {}).get(metric)) for b in budgets]
                if kind == "ode":
                    sched = "-" if label.endswith("*") else schedule
                    order = orders.get((problem, label.rstrip("*"), sched))
                    row.append("-" if order is None else f"{order:.2f}")
                body.append(row)
            out.append((f"{problem} | {schedule} | {_TITLES[metric]}", header, body))
    return out


def _cell(metric, value):
    return _fmt_signed(value) if metric == "excess_nll" else _fmt(value)


def goal_summary(results, nfe: int = GOAL_NFE) -> list[dict[str, Any]]:
    """Per problem: the best ksampling ODE solver + schedule at ``nfe`` NFE against the best
    k-diffusion sampler on its Karras grid, by relative RMSE (counted NFE <= nfe)."""
    summary = []
    problems = list(results["problems"])
    for problem in problems:
        ours = [r for r in results["records"] if r["problem"] == problem and r["kind"] == "ode"
                and r.get("rel_rmse") is not None and r["nfe"] <= nfe and r["nfe_budget"] == nfe]
        best_ours = min((r for r in ours if r["impl"] == "ksampling"), key=lambda r: r["rel_rmse"], default=None)
        best_kd = min((r for r in ours if r["impl"] == "k-diffusion" and r["schedule"] in ("karras", "-")),
                      key=lambda r: r["rel_rmse"], default=None)
        if best_ours is None:
            continue
        entry = {"problem": problem, "kind": results["problems"][problem]["kind"], "nfe": nfe,
                 "ours": {k: best_ours[k] for k in ("solver", "schedule", "nfe", "rel_rmse")}}
        if best_kd is not None:
            entry["k-diffusion"] = {k: best_kd[k] for k in ("solver", "schedule", "nfe", "rel_rmse")}
            entry["ratio"] = best_ours["rel_rmse"] / best_kd["rel_rmse"]
        summary.append(entry)
    return summary


def fit_summary(results) -> list[dict[str, Any]]:
    """Per problem and budget with a fitted row: the fitted sampler's relative RMSE and median
    error, the best k-diffusion sampler on Karras and the best fixed ksampling solver + schedule
    (each metric's best separately, picked knowing the answer), the ratios, and the fit's cost."""
    out = []
    records = [r for r in results["records"] if r.get("rel_rmse") is not None and r["kind"] == "ode"]
    for fit in records:
        if fit["impl"] != "ksampling-fit":
            continue
        same = [r for r in records if r["problem"] == fit["problem"] and r["nfe_budget"] == fit["nfe_budget"]]
        kd = [r for r in same if r["impl"] == "k-diffusion" and r["schedule"] in ("karras", "-")]
        fixed = [r for r in same if r["impl"] == "ksampling"]
        entry = {"problem": fit["problem"], "nfe": fit["nfe_budget"], "counted_nfe": fit["nfe"],
                 "fitted": {"rmse": fit["rel_rmse"], "median": fit["rel_median"], "base": fit.get("fit_base"),
                            "choice": fit.get("fit_choice"), "seconds": fit.get("fit_seconds"),
                            "model_calls": fit.get("fit_model_calls")}}
        for name, group in (("k-diffusion", kd), ("fixed", fixed)):
            if not group:
                continue
            best_rmse = min(group, key=lambda r: r["rel_rmse"])
            best_median = min(group, key=lambda r: r["rel_median"])
            entry[name] = {"rmse": best_rmse["rel_rmse"], "rmse_by": f"{best_rmse['solver']}/{best_rmse['schedule']}",
                           "median": best_median["rel_median"],
                           "median_by": f"{best_median['solver']}/{best_median['schedule']}"}
            entry[f"ratio_{name}"] = {"rmse": fit["rel_rmse"] / best_rmse["rel_rmse"],
                                      "median": fit["rel_median"] / best_median["rel_median"]}
        goal = FIT_GOALS.get(fit["nfe_budget"])
        if goal and "ratio_k-diffusion" in entry:
            ratio = entry["ratio_k-diffusion"]
            entry["goal"] = {"rmse": goal[0], "median": goal[1], "met": ratio["rmse"] <= goal[0] and ratio["median"] <= goal[1]}
        out.append(entry)
    return out


def _fit_rows(results) -> list[list[str]]:
    rows = []
    for e in fit_summary(results):
        kd, fixed = e.get("k-diffusion"), e.get("fixed")
        rk, rf = e.get("ratio_k-diffusion"), e.get("ratio_fixed")
        goal = e.get("goal")
        rows.append([e["problem"], str(e["nfe"]), str(e["fitted"]["base"]), _fmt(e["fitted"]["rmse"]),
                     _fmt(e["fitted"]["median"]),
                     f"{rk['rmse']:.2f} / {rk['median']:.2f}" if rk else "-",
                     f"{rf['rmse']:.2f} / {rf['median']:.2f}" if rf else "-",
                     ("met" if goal["met"] else "MISSED") + f" (<= {goal['rmse']} / {goal['median']})" if goal else "",
                     f"{e['fitted']['seconds']:.0f}" if e["fitted"]["seconds"] is not None else "-",
                     f"{e['fitted']['model_calls']:.0f}" if e["fitted"]["model_calls"] is not None else "-"])
    return rows


_FIT_HEADER = ["problem", "NFE", "fitted base solver", "RMSE", "median", "vs best kd Karras (RMSE / median)",
               "vs best fixed ksampling (RMSE / median)", "goal", "fit s", "fit model calls"]


def _best_per_budget(records, problem):
    best = {}
    for r in records:
        if r["problem"] == problem and r["kind"] == "ode" and r["impl"] == "ksampling" and r.get("rel_rmse") is not None:
            b = r["nfe_budget"]
            if b not in best or r["rel_rmse"] < best[b]["rel_rmse"]:
                best[b] = r
    return [best[b] for b in sorted(best)]


def _text_table(title, header, rows) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    lines = [title, "  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(header, widths)))]
    for row in rows:
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
    return "\n".join(lines)


def text_report(results) -> str:
    """The stdout report of a run."""
    meta = results["meta"]
    parts = [
        f"ksampling {meta['ksampling']} | torch {meta['torch']} | {meta['device']} | seed {meta['config']['seed']} | "
        f"{meta['config']['batch']} samples per pathwise run | {meta['seconds']:.0f} s",
        "Errors at sigma_min = 0.002 after integrating from sigma_max = 80; NFE counted. "
        "kd: = k-diffusion 0.1.1 on the Karras grid; * = chooses its own steps.",
    ]
    for problem, info in results["problems"].items():
        parts.append("")
        parts.append(f"== {problem}: {info['description']} (dim {info['dim']}, data std {info['data_std']:.3g}, "
                     f"reference: {info['reference']})")
        if "exact_samples" in info:
            parts.append(f"   exact samples: NLL {info['exact_samples']['nll']:.3f}")
        for title, header, rows in _tables(results, problem, _cell):
            parts.append("")
            parts.append(_text_table(title, header, rows))
        best = _best_per_budget(results["records"], problem)
        if best:
            parts.append("")
            parts.append("best ksampling ODE solver per budget: " + "; ".join(
                f"{r['nfe_budget']}: {r['solver']}/{r['schedule']} {_fmt(r['rel_rmse'])}" for r in best))
    failures = meta.get("failures") or []
    if failures:
        parts.append("")
        parts.append(f"== {len(failures)} runs FAILED (their records carry 'error'):")
        parts.extend("   " + f for f in failures)
    fit_rows = _fit_rows(results)
    if fit_rows:
        parts.append("")
        parts.append(_text_table("== fitted samplers (ksampling.fit, solver 'auto', fitted on noise of their own) "
                                 "against the best fixed samplers on this run's noise; errors relative to the data std",
                                 _FIT_HEADER, fit_rows))
    goals = goal_summary(results)
    if goals:
        parts.append("")
        parts.append(f"== best at {GOAL_NFE} NFE: ksampling (any schedule) against k-diffusion (Karras grid); "
                     "goal: ratio <= 0.5 on the mixtures")
        for g in goals:
            line = (f"{g['problem']:12s} ours {g['ours']['solver']}/{g['ours']['schedule']} "
                    f"{_fmt(g['ours']['rel_rmse'])}")
            if "ratio" in g:
                kd = g["k-diffusion"]
                line += f"  k-diffusion {kd['solver']}/{kd['schedule']} {_fmt(kd['rel_rmse'])}  ratio {g['ratio']:.2f}"
            parts.append(line)
    return "\n".join(parts)


def write_json(results, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {k: v for k, v in results.items() if k != "pictures"}
    meta = results["meta"]
    # each measurement names its device, seed and versions too, so records can be pooled across runs
    stamp = {"device": meta["device"], "seed": meta["config"]["seed"], "torch": meta["torch"],
             "ksampling": meta["ksampling"], "timestamp": meta["timestamp"]}
    payload["records"] = [{**r, **stamp} for r in results["records"]]
    payload["goal"] = goal_summary(results)
    payload["fit"] = fit_summary(results)
    payload["orders"] = [{"problem": p, "label": l, "schedule": s, "order": o}
                         for (p, l, s), o in sorted(fitted_orders(results["records"]).items())]
    # one measurement per line, numbers to 7 significant digits: a full run stays small and diffable
    records = payload.pop("records")
    head = json.dumps(_round(payload), indent=1, default=float)
    lines = ",\n".join("  " + json.dumps(_round(r), default=float) for r in records)
    path.write_text(head[:-2] + ',\n "records": [\n' + lines + "\n ]\n}\n")
    return path


def _round(value):
    if isinstance(value, float):
        # strict JSON has no NaN/inf: a non-finite number (a KL of a collapsed law) becomes null
        return float(f"{value:.7g}") if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_round(v) for v in value]
    return value


def load_json(path) -> dict[str, Any]:
    results = json.loads(Path(path).read_text())
    results.setdefault("pictures", {})
    return results


# -- plots ----------------------------------------------------------------------------------
def _plt():
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - matplotlib is a bench extra
        raise ImportError("the plots need matplotlib: pip install ksampling[bench] (or run with --no-plots)") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _styles(labels: Iterable[str]):
    plt = _plt()
    cmap = plt.get_cmap("tab20")
    styles, ours = {}, [l for l in labels if not l.startswith("kd:")]
    for i, label in enumerate(ours):
        styles[label] = dict(color=cmap(i % 20), linestyle=("-", "--", ":", "-.")[(i // 20) % 4], marker=".")
    for label in labels:
        if label.startswith("kd:"):
            styles[label] = dict(color="black", linestyle=":", marker="x", alpha=0.6)
    return styles


def _grid_axes(n):
    plt = _plt()
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.2 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat)[:n]


def _nfe_axis(ax, budgets):
    """Plain NFE numbers at the budgets on a log x axis (not 3×10⁰)."""
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator, ScalarFormatter

    ax.xaxis.set_major_locator(FixedLocator(sorted(budgets)))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())


def _save(plt, fig, path: Path, dpi: int) -> Path:
    """Lay out, write and close one figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


def make_plots(results, out_dir) -> list[Path]:
    """Write the PNG plots of a run into ``out_dir``; returns their paths."""
    plt = _plt()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = results["records"]
    problems = list(results["problems"])
    written = []
    ode_problems = [p for p in problems if any(r["problem"] == p and r.get("rel_rmse") is not None for r in records)]
    schedules = []
    for p in problems:
        schedules += [s for s in _schedules(records, p) if s not in schedules]
    labels = sorted({r["label"] for r in records}, key=_order_key)
    styles = _styles(labels)

    for schedule in schedules:
        if not ode_problems:
            break
        fig, axes = _grid_axes(len(ode_problems))
        handles = {}
        for ax, problem in zip(axes, ode_problems):
            for label, cells in _rows(records, problem, schedule, "ode", "rel_rmse").items():
                pts = sorted((r["nfe"], r["rel_rmse"]) for r in cells.values() if r["rel_rmse"] > 0)
                if pts:
                    (line,) = ax.plot(*zip(*pts), label=label, **styles[label.rstrip("*")])
                    handles.setdefault(label, line)
            ax.set(xscale="log", yscale="log", xlabel="NFE (counted)", ylabel="RMSE / data std", title=problem)
            _nfe_axis(ax, _budgets(records, problem))
            ax.grid(True, which="both", alpha=0.3)
        fig.legend(handles.values(), handles.keys(), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7)
        fig.suptitle(f"ODE solvers on the {schedule} schedule: error at sigma_min against NFE")
        written.append(_save(plt, fig, out_dir / f"error_vs_nfe_{schedule}.png", dpi=80))

    if ode_problems:
        fig, axes = _grid_axes(len(ode_problems))
        for ax, problem in zip(axes, ode_problems):
            for impl, style in (("ksampling", dict(color="C0", marker="o")), ("k-diffusion", dict(color="k", marker="x"))):
                best = {}
                for r in records:
                    if r["problem"] == problem and r["impl"] == impl and r.get("rel_rmse") is not None:
                        if impl == "k-diffusion" and r["schedule"] not in ("karras", "-"):
                            continue
                        b = r["nfe_budget"]
                        if b not in best or r["rel_rmse"] < best[b]:
                            best[b] = r["rel_rmse"]
                if best:
                    label = "ksampling: best solver+schedule" if impl == "ksampling" else "k-diffusion: best on Karras"
                    ax.plot(list(best), list(best.values()), label=label, **style)
            ax.set(xscale="log", yscale="log", xlabel="NFE budget", ylabel="RMSE / data std", title=problem)
            _nfe_axis(ax, _budgets(records, problem))
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle("Best error per NFE budget: ksampling against k-diffusion")
        written.append(_save(plt, fig, out_dir / "best_vs_kdiffusion.png", dpi=80))

    fits = fit_summary(results)
    if fits:
        written.append(_fit_plot(plt, records, [p for p in problems if any(e["problem"] == p for e in fits)], out_dir))

    for metric, ylabel, yscale in (("w2", "W2 to the true law", "log"),
                                   ("excess_nll", "NLL - NLL(exact samples), symlog", "symlog")):
        probs = [p for p in problems if any(r["problem"] == p and r["kind"] == "sde" and r.get(metric) is not None
                                            for r in records)]
        if not probs:
            continue
        schedule = "karras" if "karras" in schedules else (schedules[0] if schedules else "-")
        fig, axes = _grid_axes(len(probs))
        handles = {}
        for ax, problem in zip(axes, probs):
            for label, cells in _rows(records, problem, schedule, "sde", metric).items():
                pts = sorted((r["nfe"], r[metric]) for r in cells.values() if math.isfinite(r[metric]))
                if pts:
                    (line,) = ax.plot(*zip(*pts), label=label, **styles[label.rstrip("*")])
                    handles.setdefault(label, line)
            ax.set(xscale="log", xlabel="NFE (counted)", ylabel=ylabel, title=problem)
            if yscale == "symlog":  # excess NLL spans 1e-2 .. 1e6 nats and can be negative
                ax.set_yscale("symlog", linthresh=0.1)
            else:
                ax.set_yscale(yscale)
            _nfe_axis(ax, _budgets(records, problem))
            ax.grid(True, which="both", alpha=0.3)
        fig.legend(handles.values(), handles.keys(), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7)
        fig.suptitle(f"SDE solvers on the {schedule} schedule")
        written.append(_save(plt, fig, out_dir / f"sde_{metric}.png", dpi=80))

    for problem, pics in results.get("pictures", {}).items():
        if not pics.get("runs"):
            continue
        import numpy as np

        runs = pics["runs"]
        solvers = sorted({k.split("|")[0] for k in runs})
        budgets = sorted({int(k.split("|")[1]) for k in runs})
        if len(budgets) > 5:  # a few NFE are enough to see the samples sharpen
            budgets = [b for b in budgets if b in PICTURE_BUDGETS] or budgets[:: len(budgets) // 5 + 1]
        fig, axes = plt.subplots(len(solvers), len(budgets) + 1,
                                 figsize=(1.9 * (len(budgets) + 1), 1.05 * len(solvers) + 0.6), squeeze=False)

        def mosaic(rows):
            """Up to 8 digits in 2 rows of 4, separated by a 1-pixel grey border."""
            imgs = np.clip(np.asarray(rows).reshape(-1, 8, 8)[:8], -1, 1)
            imgs = np.pad(imgs, ((0, 8 - len(imgs)), (0, 0), (0, 0)), constant_values=-1)
            imgs = np.pad(imgs, ((0, 0), (1, 0), (1, 0)), constant_values=0.0)
            top = np.concatenate(list(imgs[:4]), axis=1)
            bottom = np.concatenate(list(imgs[4:8]), axis=1)
            return np.pad(np.concatenate([top, bottom], axis=0), ((0, 1), (0, 1)), constant_values=0.0)

        for i, solver in enumerate(solvers):
            for j, budget in enumerate(budgets):
                ax = axes[i][j]
                key = f"{solver}|{budget}"
                if key in runs:
                    ax.imshow(mosaic(runs[key]), cmap="gray_r", vmin=-1, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0:
                    ax.set_title(f"{budget} NFE", fontsize=8)
                if j == 0:
                    ax.set_ylabel(solver, fontsize=8)
            ax = axes[i][-1]
            ax.imshow(mosaic(pics["reference"]), cmap="gray_r", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title("exact ODE", fontsize=8)
        fig.suptitle(f"{problem}: 8 samples from the same initial noises, Karras grid", fontsize=9)
        written.append(_save(plt, fig, out_dir / f"samples_{problem}.png", dpi=110))
    return written


def _fit_plot(plt, records, problems, out_dir: Path) -> Path:
    """Per problem, RMSE (top) and median error (bottom) against the NFE budget: the fitted
    sampler, the best fixed ksampling solver + schedule and the best k-diffusion sampler on Karras."""
    fig, axes = plt.subplots(2, len(problems), figsize=(4.2 * len(problems), 7.4), squeeze=False)
    series = (("fitted", lambda r: r["impl"] == "ksampling-fit", dict(color="C3", marker="o", linewidth=2)),
              ("best fixed ksampling", lambda r: r["impl"] == "ksampling", dict(color="C0", marker=".")),
              ("best k-diffusion (Karras)", lambda r: r["impl"] == "k-diffusion" and r["schedule"] in ("karras", "-"),
               dict(color="k", marker="x", linestyle=":")))
    fit_budgets = sorted({r["nfe_budget"] for r in records if r["impl"] == "ksampling-fit"})
    for col, problem in enumerate(problems):
        for row, (metric, ylabel) in enumerate((("rel_rmse", "RMSE / data std"), ("rel_median", "median error / data std"))):
            ax = axes[row][col]
            for label, keep, style in series:
                best = {}
                for r in records:
                    if r["problem"] == problem and r["kind"] == "ode" and r.get(metric) is not None and keep(r) \
                            and r["nfe_budget"] in fit_budgets:
                        b = r["nfe_budget"]
                        best[b] = min(best.get(b, math.inf), r[metric])
                if best:
                    ax.plot(sorted(best), [best[b] for b in sorted(best)], label=label, **style)
            ax.set(xscale="log", yscale="log", xlabel="NFE budget", ylabel=ylabel, title=problem)
            _nfe_axis(ax, fit_budgets)
            ax.grid(True, which="both", alpha=0.3)
            if row == 0 and col == 0:
                ax.legend(fontsize=7)
    fig.suptitle("Fitted sampler (held-out noise) against the best fixed samplers, picked knowing the answer")
    return _save(plt, fig, out_dir / "fitted_vs_fixed.png", dpi=80)


# -- docs -----------------------------------------------------------------------------------
def _md_table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


DOCS_SCHEDULES = ("karras", "kl_optimal")  # the schedules whose tables the docs page shows


def markdown_report(results, image_dir: str | None = None, images: Iterable[str] = (),
                    schedules: Iterable[str] | None = DOCS_SCHEDULES) -> str:
    """The tables (and image links, relative to the page) of a run, as Markdown; only the
    tables of ``schedules`` (all when None; the plots and the JSON have every schedule)."""
    present = {r["schedule"] for r in results["records"]}
    schedules = None if schedules is None else [s for s in schedules if s in present] or None
    meta = results["meta"]
    parts = [
        f"Run: ksampling {meta['ksampling']}, torch {meta['torch']}, device `{meta['device']}`"
        + (f" ({meta['device_name']})" if meta.get("device_name") else "")
        + f", seed {meta['config']['seed']}, {meta['config']['batch']} samples per pathwise run, "
        f"{meta['seconds'] / 60:.0f} minutes, {meta['timestamp']}.",
        "",
    ]
    goals = goal_summary(results)
    if goals:
        parts += [f"### Best at {GOAL_NFE} NFE: ksampling against k-diffusion", ""]
        rows = []
        for g in goals:
            kd = g.get("k-diffusion")
            rows.append([g["problem"], f"{g['ours']['solver']} / {g['ours']['schedule']}", _fmt(g["ours"]["rel_rmse"]),
                         f"{kd['solver']} / {kd['schedule']}" if kd else "-", _fmt(kd["rel_rmse"]) if kd else "-",
                         f"{g['ratio']:.2f}" if "ratio" in g else "-"])
        parts += [_md_table(["problem", "best ksampling", "error", "best k-diffusion (Karras)", "error", "ratio"], rows), ""]
    fit_rows = _fit_rows(results)
    if fit_rows:
        parts += ["### Fitted samplers against the best fixed ones", "",
                  "`ksampling.fit.fit_sigmas(solver=\"auto\")` fitted on 256 noises of its own (a quarter held out), "
                  "then evaluated on this run's noise like every other row. Ratios below 1 favour the fit; each "
                  "metric's best fixed sampler is picked separately, knowing the answer. Goals (issue 9): NFE 5 "
                  "<= 0.5 / 0.35 and NFE 10 <= 0.6 / 0.25 of the best k-diffusion sampler on Karras.", "",
                  _md_table(_FIT_HEADER, fit_rows), ""]
    if image_dir:
        first = ("fitted_vs", "best_vs", "samples", "error_vs_nfe_karras", "error_vs_nfe_kl")
        rank = lambda name: next((i for i, p in enumerate(first) if name.startswith(p)), len(first))  # noqa: E731
        for name in sorted(images, key=lambda n: (rank(n), n)):
            parts += [f"![{name}]({image_dir}/{name})", ""]
    if schedules is not None:
        plural = "s" if len(schedules) > 1 else ""
        parts += [f"Tables for the {' and '.join(schedules)} schedule{plural}; every schedule is in the plots and the "
                  "JSON.", ""]
    for problem, info in results["problems"].items():
        parts += [f"### {problem}", "", f"{info['description']}; dimension {info['dim']}, data std "
                  f"{info['data_std']:.3g}; reference: {info['reference']}.", ""]
        for title, header, rows in _tables(results, problem, _cell, schedules):
            parts += [f"**{title.split(' | ', 1)[1]}**", "", _md_table(header, rows), ""]
    return "\n".join(parts)


_PAGE_INTRO = """# Benchmark results

How many model evaluations does each solver need for a given accuracy? The suite in
`benchmarks/` answers this on problems whose true answer is known, with the model
evaluations (NFE) counted, never assumed. The numbers and plots below are those of the
committed run `{json_path}`; run it yourself with

```bash
python -m benchmarks                  # the default: 4 exact problems, every solver, NFE 5/10/20 (~30 s)
python -m benchmarks --full           # this page's run: all problems, all schedules, NFE 3..50
python -m benchmarks --quick          # the CI smoke test (seconds)
python -m benchmarks --problems gmm-2d,digits --solvers unipc,dpmpp_2m --schedules karras --nfe 5,10
python -m benchmarks --full --device cuda --out benchmarks/results/results-gpu.json
torchrun --standalone --nproc_per_node 2 -m benchmarks.distributed --problem gmm-2d --solver dpmpp_2m_sde --samples 4000
python -m benchmarks --problems gmm-2d,digits-net --fit 5,10   # add fitted samplers (ksampling.fit)
python -m benchmarks --unseen         # the fit on two mixtures that are not in the problem list
python -m benchmarks.goal_search      # solver options × schedule parameters at 10 NFE against k-diffusion
python -m benchmarks.report benchmarks/results/results-cpu.json   # tables of a saved run again
```

Every run prints the tables, writes every measurement (solver, schedule, NFE budget, counted
NFE, errors, problem, device, versions, seed, time) to `benchmarks/out/results.json` and the
plots to `benchmarks/out/plots/` (`--out`, `--plots` change that).

## What is measured

**Problems.** Each is a denoiser D(x; σ) with an exact answer: Gaussians (isotropic, and
anisotropic with variances 1e-3 to 1 in a random basis: closed-form ODE solution), Gaussian
mixtures in 2-D and 64-D, the ideal denoiser of scikit-learn's 8×8 digits (the exact D of
the 1797 images; no download), and a small EDM-preconditioned network that the suite trains
on the digits once and caches (`digits-net`, the only problem with a learned D).

**Reference.** All solvers integrate the probability-flow ODE dx/dσ = (x − D)/σ from
σ_max = 80 down to σ_min = 0.002 on a grid that *ends at σ_min*, and are compared there with
the exact solution from the same initial noise: the closed form for the Gaussians, otherwise
scipy's DOP853 in t = log σ (dx/dt = x − D, float64, rtol = atol = 1e-10), cached on disk.
So no final step to σ = 0 (which solvers treat differently) enters the comparison.
Everything runs in float64.

**NFE.** A wrapper counts the rows the model evaluates (÷ batch). For a budget the suite picks
the largest step count whose counted NFE fits (a dry run), runs it, and reports the count;
`dpm_fast` is given the budget, and `dpm_adaptive` runs at a ladder of tolerances, each run
filed under the smallest budget that holds its NFE.

**Errors.** ODE solvers: RMSE against the reference divided by the data's standard deviation
("relative RMSE"), and the fitted order (minus the slope of log error against log NFE over
the budgets ≥ 10). SDE solvers (random paths): for Gaussian data the sampler's output is exactly
Gaussian (every solver is affine in its noise there), and the suite computes its mean and
covariance exactly by probing the sampler with basis vectors (Brownian-tree noise included,
with its correlations), then the exact W2 to the true law at σ_min; for mixtures the NLL of
samples under the true density minus that of exact samples (negative = too concentrated),
and the error in the share of samples per mode (in the JSON). k-diffusion 0.1.1's own
samplers run on the same problems, noise and Karras grids (`kd:` rows).

**Against k-diffusion.** The project's goal is half of k-diffusion's error at 10 NFE on
Gaussian mixtures. The table "Best at 10 NFE" below compares, per problem, the best ksampling
solver and schedule with the best k-diffusion sampler on its Karras grid, on this run's
seeds. `python -m benchmarks.goal_search` checks the choice on other seeds (1000–1127):
it runs solver options × schedule parameters at 10 NFE on the mixtures, the digits and the
digits network; its output is committed as `benchmarks/results/goal_search.txt`.

**Fitted samplers.** The `fit:auto` rows (in `--full`, or with `--fit NFE,...`) are
[`ksampling.fit.fit_sigmas`](reference/fit.md) with `solver="auto"`: fitted on 256 starting
noises of their own (seeds from 3 000 000; a quarter held out for the fit's own validation,
its teacher ksampling's own solve), then evaluated like every other row on the run's noise
against the reference. The table "Fitted samplers" gives their cost (seconds, model calls per
starting noise including the teacher's) and their error against the best k-diffusion sampler
on Karras and the best fixed ksampling solver + schedule at the same budget, each metric's
best picked separately, knowing the answer (an advantage no user has). `--unseen` repeats the
comparison on two Gaussian mixtures that are not among the problems (`benchmarks/unseen.py`);
its committed run is `benchmarks/results/unseen/`.

A caution on reading the mixture and digits numbers: a pathwise error there is dominated by
the few trajectories that end in a different mode than the exact flow (the median error,
`rel_median` in the JSON, is far smaller than the RMSE), so it varies with the seeds: the same
solver's ratio to k-diffusion can move by a factor of two between seed sets (compare the
table below with `goal_search.txt`).

"""


def docs_page(results, json_path: str, images: Iterable[str], image_dir: str = "img/benchmarks") -> str:
    """The whole ``docs/benchmarks.md``: how the suite works, then the run's tables and plots."""
    return _PAGE_INTRO.format(json_path=json_path) + "## Results\n\n" + markdown_report(results, image_dir, images)


def main(argv=None) -> int:
    """``python -m benchmarks.report RESULTS.json [--plots DIR]``: print the tables of a saved
    run again and redraw its plots (the digits pictures are not in the JSON)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=main.__doc__.split("\n")[0])
    parser.add_argument("json")
    parser.add_argument("--plots", default=None)
    args = parser.parse_args(argv)
    results = load_json(args.json)
    print(text_report(results))
    if args.plots:
        for path in make_plots(results, args.plots):
            print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
