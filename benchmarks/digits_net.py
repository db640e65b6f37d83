"""A small denoiser trained by the suite on scikit-learn's digits, for the ``digits-net`` problem.

The network F is an MLP with residual blocks, conditioned on EDM's noise label
c_noise = ¼ ln σ through Fourier features; it is wrapped in EDM's preconditioning
(:class:`ksampling.denoisers.EDMPrecond`, σ_data = the data's standard deviation) and
trained with EDM's loss (:func:`ksampling.denoisers.edm_loss`: ln σ ~ N(−1.2, 1.2²),
λ(σ) = (σ² + σ_d²)/(σ σ_d)²) with Adam and an exponential moving average of the weights
(Karras et al. 2022, §5 and Table 1). The EMA weights are cached under
``benchmarks/cache/`` and reused; the benchmark evaluates the network in float64.

Configurations: ``small`` (the CPU default, about a minute on two cores) and ``large``
(chosen with a CUDA device: wider, deeper, longer).
"""

from __future__ import annotations

import copy
import hashlib
import io
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ksampling.denoisers import EDMPrecond, edm_loss

__all__ = ["DigitsMLP", "CONFIGS", "digits_data", "train", "load_or_train", "CACHE_DIR"]

CACHE_DIR = Path(__file__).resolve().parent / "cache"

CONFIGS = {
    "small": dict(width=128, blocks=2, steps=4000, batch=128, lr=2e-3, ema=0.998, seed=0),
    "large": dict(width=1024, blocks=6, steps=60000, batch=512, lr=1e-3, ema=0.9995, seed=0),
}


def digits_data() -> np.ndarray:
    """scikit-learn's 1797 8×8 digits (bundled with the package), scaled from 0..16 to [−1, 1],
    as an array of shape (1797, 64)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - scikit-learn is a bench extra
        raise ImportError("the digits problems need scikit-learn: pip install ksampling[bench]") from exc
    return load_digits().data.astype(np.float64) / 8.0 - 1.0


class DigitsMLP(nn.Module):
    """F(c_in x, c_noise): residual MLP on the 64 pixels, noise label through Fourier features."""

    def __init__(self, dim: int = 64, width: int = 128, blocks: int = 2, n_freq: int = 16):
        super().__init__()
        # fixed frequencies, geometric from 1 to 16: c_noise = ¼ ln σ spans about [−1.6, 1.1],
        # and low frequencies keep D smooth in σ (what the ODE solvers' orders assume)
        self.register_buffer("freqs", torch.exp(torch.linspace(0.0, math.log(16.0), n_freq)))
        self.embed = nn.Sequential(nn.Linear(2 * n_freq, width), nn.SiLU(), nn.Linear(width, width))
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(
            nn.ModuleDict(dict(norm=nn.LayerNorm(width), cond=nn.Linear(width, width),
                               fc1=nn.Linear(width, 2 * width), fc2=nn.Linear(2 * width, width)))
            for _ in range(blocks)
        )
        self.out_norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x_in: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        angles = c_noise[:, None].to(x_in.dtype) * self.freqs.to(x_in.dtype)
        emb = self.embed(torch.cat([angles.sin(), angles.cos()], dim=1))
        h = self.inp(x_in)
        for block in self.blocks:
            z = block["norm"](h) + block["cond"](emb)
            h = h + block["fc2"](nn.functional.silu(block["fc1"](nn.functional.silu(z))))
        return self.out(nn.functional.silu(self.out_norm(h)))


def _build(config: dict) -> nn.Module:
    # nn.Linear draws its initial weights from the global RNG: seed it inside fork_rng so
    # that the caller's RNG state is left exactly as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config["seed"])
        return DigitsMLP(width=config["width"], blocks=config["blocks"])


def train(config_name: str = "small", device="cpu", progress: bool = True, steps: int | None = None):
    """Train the network; returns (EMA network in float32 on the CPU, sigma_data, seconds)."""
    config = dict(CONFIGS[config_name])
    if steps is not None:
        config["steps"] = steps
    data = torch.as_tensor(digits_data(), dtype=torch.float32, device=device)
    sigma_data = float(data.std())
    net = _build(config).to(device)
    ema = copy.deepcopy(net).requires_grad_(False)
    precond = EDMPrecond(net, sigma_data=sigma_data)
    opt = torch.optim.Adam(net.parameters(), lr=config["lr"])
    gen = torch.Generator(device=device).manual_seed(config["seed"])
    t0 = time.perf_counter()
    bar = tqdm(range(config["steps"]), desc=f"training digits-net ({config_name})", disable=not progress, leave=False)
    for step in bar:
        idx = torch.randint(0, data.shape[0], (config["batch"],), generator=gen, device=device)
        loss = edm_loss(precond, data[idx], gen).mean()
        # a short warm-up, then cosine decay of the learning rate
        warm = min(1.0, (step + 1) / 500)
        for group in opt.param_groups:
            group["lr"] = config["lr"] * warm * 0.5 * (1 + math.cos(math.pi * step / config["steps"]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), net.parameters()):
                p_ema.lerp_(p, 1 - config["ema"])
        if step % 200 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    return ema.cpu(), sigma_data, time.perf_counter() - t0


def load_or_train(config_name: str | None = None, device="cpu", progress: bool = True):
    """The cached network as a float64 D(x; σ) on ``device`` and its metadata; trains and
    caches it first when there is no cache. ``config_name`` defaults to ``large`` on CUDA
    and ``small`` otherwise."""
    device = torch.device(device)
    if config_name is None:
        config_name = "large" if device.type == "cuda" else "small"
    if config_name not in CONFIGS:
        raise ValueError(f"config_name must be one of {', '.join(CONFIGS)}, got {config_name!r}")
    path = CACHE_DIR / f"digits_net_{config_name}.pt"
    if path.exists():
        saved = torch.load(path, map_location="cpu", weights_only=True)
    else:
        ema, sigma_data, seconds = train(config_name, device=device, progress=progress)
        saved = {"state_dict": ema.state_dict(), "sigma_data": sigma_data, "config": CONFIGS[config_name],
                 "train_seconds": seconds, "train_device": str(device)}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(saved, tmp)
        tmp.replace(path)
    config = saved["config"]
    net = DigitsMLP(width=config["width"], blocks=config["blocks"])
    net.load_state_dict(saved["state_dict"])
    net = net.to(device=device, dtype=torch.float64).eval().requires_grad_(False)
    buffer = io.BytesIO()
    torch.save(saved["state_dict"], buffer)
    meta = {"config": config_name, "sigma_data": saved["sigma_data"], "train_seconds": saved["train_seconds"],
            "train_device": saved["train_device"], "fingerprint": hashlib.sha256(buffer.getvalue()).hexdigest()[:16],
            "parameters": sum(p.numel() for p in net.parameters())}
    return EDMPrecond(net, sigma_data=saved["sigma_data"]), meta
