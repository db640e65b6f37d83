"""The sampler's share of wall time with a real network on a GPU.

A small diffusers ``UNet2DModel`` (randomly initialised, nothing downloaded) is wrapped as an
ε-network on a VP discrete schedule (Stable Diffusion's scaled-linear betas) and sampled at
several batch sizes. For every solver and batch size the script times

* ``model``: the network alone, called as often as the sampler calls it (same inputs),
* ``ksampling``: ``ksampling.sample`` with ksampling's VP ε-wrapper around the network,
* ``k-diffusion``: the same solver in k-diffusion with the same wrapped denoiser,
* ``diffusers``: the matching diffusers scheduler loop
  (``scale_model_input -> unet -> step``), for the solvers that have one,
* ``planned``: the same run through ``ksampling.plan`` (made once, called per run),
* ``captured`` (CUDA, unless ``--no-cuda-graphs``): the plan recorded into one CUDA graph
  (``Plan.capture``) and replayed; the script checks that the replay equals the eager run on
  the same pre-drawn noise and records the largest difference (``graph_max_abs_diff``),

and reports each sampler's share of the wall time, ``(run − model) / run``. Every timed run
ends with ``torch.cuda.synchronize()``; the minimum over ``--repeats`` runs is kept.

Usage (from the repository root)::

    python benchmarks/speed_gpu.py                       # CUDA; prints a note and exits 0 without it
    python benchmarks/speed_gpu.py --out benchmarks/results/speed_gpu.json
    python benchmarks/speed_gpu.py --device cpu --allow-cpu --batch-sizes 1 2 --steps 4   # a smoke run

Needs the ``bench`` extra (diffusers; k-diffusion is optional: ``pip install --no-deps k-diffusion``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
VP_CONFIG = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
#: ksampling solver -> (k-diffusion sampler, diffusers scheduler and its options)
SOLVERS = {
    "euler": ("sample_euler", ("EulerDiscreteScheduler", {})),
    "heun": ("sample_heun", ("HeunDiscreteScheduler", {})),
    "dpmpp_2m": ("sample_dpmpp_2m", ("DPMSolverMultistepScheduler", {"solver_order": 2, "algorithm_type": "dpmsolver++"})),
    "euler_ancestral": ("sample_euler_ancestral", ("EulerAncestralDiscreteScheduler", {})),
    "unipc": (None, ("UniPCMultistepScheduler", {"solver_order": 2, "solver_type": "bh2"})),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (with --allow-cpu)")
    parser.add_argument("--allow-cpu", action="store_true", help="run on the CPU too (a smoke test of the script)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--solvers", nargs="+", default=["euler", "dpmpp_2m", "heun", "euler_ancestral", "unipc"])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case (minimum kept)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--size", type=int, default=32, help="image side (the U-Net is built for it)")
    parser.add_argument("--channels", type=int, nargs="+", default=[64, 128, 128], help="U-Net block widths")
    parser.add_argument(
        "--no-cuda-graphs", dest="cuda_graphs", action="store_false",
        help="skip the CUDA-graph rows (Plan.capture; on by default on CUDA)",
    )
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    unknown = [s for s in args.solvers if s not in SOLVERS]
    if unknown:
        parser.error(f"--solvers: unknown {unknown}; choose from {sorted(SOLVERS)}")
    if args.steps < 2 or args.repeats < 1 or min(args.batch_sizes) < 1:
        parser.error("--steps must be >= 2, --repeats >= 1 and every batch size >= 1")
    return args


def build_unet(args, device, dtype):
    from diffusers import UNet2DModel

    n = len(args.channels)
    # The weights come from a generator of their own: the global RNG is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DModel(
            sample_size=args.size,
            in_channels=3,
            out_channels=3,
            layers_per_block=1,
            block_out_channels=tuple(args.channels),
            down_block_types=("DownBlock2D",) * (n - 1) + ("AttnDownBlock2D",),
            up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * (n - 1),
            norm_num_groups=min(32, min(args.channels)),
        )
    unet = unet.to(device)
    if dtype != torch.float32:
        unet = unet.to(dtype)
    return unet.eval()


def eps_denoiser(network, alphas_cumprod):
    """ksampling's VP ε-wrapper around ``network(x_in, t)``: D(x; σ) = x − σ ε(x α(σ), t(σ))."""
    from ksampling.denoisers import NetworkDenoiser, VPDiscrete

    process = VPDiscrete(alphas_cumprod=alphas_cumprod.to(torch.float64))
    return NetworkDenoiser(network, process, prediction="eps")


def load_k_diffusion():
    path = ROOT / "tests" / "reference.py"
    try:
        spec = importlib.util.spec_from_file_location("_ksampling_speed_gpu_reference", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module._load()
    except Exception as exc:  # k-diffusion is optional here
        print(f"k-diffusion unavailable ({type(exc).__name__}: {exc}); its column stays empty")
        return None


def timed(fn, device, repeats):
    """Minimum wall time of ``fn()`` over ``repeats`` runs after one warm-up run, synchronized."""
    fn()
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Recorder:
    """A network that records the inputs of every call, to replay the network alone."""

    def __init__(self, network):
        self.network = network
        self.calls = []

    def __call__(self, x_in, t, **kwargs):
        self.calls.append((x_in, t))
        return self.network(x_in, t, **kwargs)


def run(args) -> dict | None:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("speed_gpu: no CUDA device here; nothing timed (use --device cpu --allow-cpu for a smoke run)")
        return None
    if device.type != "cuda" and not args.allow_cpu:
        print(f"speed_gpu: --device {args.device} needs --allow-cpu (this script is about GPU wall time)")
        return None
    try:
        import diffusers
    except ImportError:
        sys.exit("speed_gpu needs diffusers: pip install ksampling[bench]")
    import ksampling
    from ksampling.samplers import available

    dtype = getattr(torch, args.dtype)
    unet = build_unet(args, device, dtype)
    K = load_k_diffusion()
    results = []
    with torch.inference_mode():
        for solver in args.solvers:
            if solver not in available():
                print(f"ksampling has no solver {solver!r}: skipped")
                continue
            kd_name, (scheduler_name, scheduler_options) = SOLVERS[solver]
            scheduler = getattr(diffusers, scheduler_name)(**VP_CONFIG, **scheduler_options)
            scheduler.set_timesteps(args.steps, device=device)
            sigmas = torch.unique_consecutive(scheduler.sigmas.to(torch.float64)).to(device=device, dtype=torch.float32)
            def network(x_in, t):
                return unet(x_in, t).sample

            denoiser = eps_denoiser(network, scheduler.alphas_cumprod)
            for batch in args.batch_sizes:
                gen = torch.Generator(device).manual_seed(0)
                noise = torch.randn((batch, 3, args.size, args.size), generator=gen, device=device, dtype=dtype)
                x = noise * sigmas[0].to(dtype)
                row = dict(solver=solver, batch=batch, steps=args.steps)

                def ks_run(model=denoiser):
                    return ksampling.sample(model, x, sigmas, solver, generator=torch.Generator(device).manual_seed(0))

                # the network alone, on the inputs the sampler gave it
                recorder = Recorder(network)
                ks_run(eps_denoiser(recorder, scheduler.alphas_cumprod))
                calls = recorder.calls
                row["nfe"] = len(calls)
                row["model_s"] = timed(lambda: [network(a, t) for a, t in calls], device, args.repeats)
                row["ksampling_s"] = timed(ks_run, device, args.repeats)
                plan = ksampling.plan(denoiser, sigmas, solver)
                draws = plan.solver.draws_noise
                row["planned_s"] = timed(
                    lambda: plan(x, torch.Generator(device).manual_seed(0) if draws else None), device, args.repeats
                )
                if args.cuda_graphs and device.type == "cuda":
                    row.update(cuda_graph_check(plan, x, device, args.repeats))
                if K is not None and kd_name is not None:
                    sampler = getattr(K.sampling, kd_name)
                    row["k-diffusion_s"] = timed(lambda: sampler(denoiser, x, sigmas, disable=True), device, args.repeats)

                def diffusers_run():
                    scheduler.set_timesteps(args.steps, device=device)
                    sample = noise * scheduler.init_noise_sigma
                    for t in scheduler.timesteps:
                        model_input = scheduler.scale_model_input(sample, t)
                        eps = unet(model_input, t).sample
                        sample = scheduler.step(eps, t, sample, return_dict=False)[0]
                    return sample

                row["diffusers_s"] = timed(diffusers_run, device, args.repeats)
                row["diffusers_scheduler"] = scheduler_name
                for lib in ("ksampling", "planned", "captured", "k-diffusion", "diffusers"):
                    if f"{lib}_s" in row:
                        total = row[f"{lib}_s"]
                        row[f"{lib}_sampler_share"] = round(max(total - row["model_s"], 0.0) / total, 4)
                results.append(row)
                print(format_row(row))
    meta = dict(
        device=str(device),
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        torch=torch.__version__,
        diffusers=diffusers.__version__,
        ksampling=ksampling.__version__,
        dtype=args.dtype,
        unet=dict(size=args.size, channels=args.channels, parameters=sum(p.numel() for p in unet.parameters())),
        statistic=f"min wall time over {args.repeats} runs after a warm-up, synchronized",
    )
    return dict(meta=meta, results=results)


def cuda_graph_check(plan, x, device, repeats) -> dict:
    """Record the plan into a CUDA graph, check that a replay equals the eager run on the
    same pre-drawn noise, and time the replay. Failures are recorded, not raised."""
    try:
        captured = plan.capture(x)
        noise = plan.draw_noise(x, torch.Generator(device).manual_seed(0))
        eager = plan(x, noise=noise)
        replay = captured(x, noise=noise)
        scale = float(eager.abs().max())
        diff = float((replay - eager).abs().max())
        result = dict(graph_max_abs_diff=diff, graph_matches_eager=diff <= 1e-3 * max(scale, 1.0))
        result["captured_s"] = timed(lambda: captured(x, noise=noise), device, repeats)
        if not result["graph_matches_eager"]:
            print(f"CUDA graph replay differs from eager by {diff:g} (scale {scale:g})")
        return result
    except Exception as exc:  # a model that cannot be captured: say so in the results
        print(f"CUDA graph capture failed: {type(exc).__name__}: {exc}")
        return dict(graph_error=f"{type(exc).__name__}: {exc}")


def cpu_name() -> str:
    """The CPU's model name (Linux), else what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def format_row(row):
    parts = [f"{row['solver']:>16s} B={row['batch']:<4d}", f"model {row['model_s'] * 1e3:8.2f} ms"]
    for lib in ("ksampling", "planned", "captured", "k-diffusion", "diffusers"):
        if f"{lib}_s" in row:
            share = row.get(f"{lib}_sampler_share")
            parts.append(f"{lib} {row[f'{lib}_s'] * 1e3:8.2f} ms" + (f" ({share:.1%} sampler)" if share is not None else ""))
    return "  ".join(parts)


def main(argv=None):
    args = parse_args(argv)
    out = run(args)
    if out is None:
        return 0
    if args.out:
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
