"""``k_diffusion.external`` on ksampling: k-diffusion's model wrappers, with k-diffusion's
attributes and methods, put on :class:`ksampling.denoisers.VPDiscrete` and
:class:`ksampling.denoisers.NetworkDenoiser` (see :mod:`ksampling.kdiffusion`)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..denoisers.processes import NoiseProcess, VPDiscrete, vp_alpha
from ..denoisers.wrappers import NetworkDenoiser
from .utils import append_dims

__all__ = [
    "VDenoiser",
    "DiscreteSchedule",
    "DiscreteEpsDDPMDenoiser",
    "OpenAIDenoiser",
    "CompVisDenoiser",
    "DiscreteVDDPMDenoiser",
    "CompVisVDenoiser",
]



class _WrapperProcess(NoiseProcess):
    """The wrapper's own ``sigma_to_t`` (so that a subclass that overrides it is honoured)
    with VP input scaling α = 1/√(1+σ²) = c_in."""

    discrete = True

    def __init__(self, wrapper):
        self._wrapper = wrapper
        self.sigma_min, self.sigma_max = 0.0, math.inf

    def sigma_to_t(self, sigma):
        return self._wrapper.sigma_to_t(sigma)

    def t_to_sigma(self, t):
        return self._wrapper.t_to_sigma(t)

    def alpha(self, sigma):
        return vp_alpha(sigma)


class _Hook:
    """A network that calls one of the wrapper's methods (``get_eps``/``get_v``/its model)."""

    def __init__(self, wrapper, method):
        self._wrapper, self._method = wrapper, method

    def __call__(self, x_net, t, **kwargs):
        return getattr(self._wrapper, self._method)(x_net, t, **kwargs)


def _network_denoiser(wrapper, method, prediction):
    # Kept out of nn.Module's registry (it points back at the wrapper).
    return NetworkDenoiser(_Hook(wrapper, method), _WrapperProcess(wrapper), prediction=prediction)


class VDenoiser(nn.Module):
    """A v-diffusion-pytorch model as D(x; σ): the network sees ``x·c_in`` and
    ``t = 2/π · atan σ`` and predicts v (``prediction="v"`` of :class:`NetworkDenoiser`)."""

    def __init__(self, inner_model):
        super().__init__()
        self.inner_model = inner_model
        self.sigma_data = 1.0
        self.__dict__["_denoiser"] = _network_denoiser(self, "inner_model", "v")

    def get_scalings(self, sigma):
        return _v_scalings(sigma, self.sigma_data)

    def sigma_to_t(self, sigma):
        return sigma.atan() / math.pi * 2

    def t_to_sigma(self, t):
        return (t * math.pi / 2).tan()

    def loss(self, input, noise, sigma, **kwargs):
        """MSE between the network output and the v target (k-diffusion's training loss)."""
        return _v_loss(self, self.inner_model, input, noise, sigma, **kwargs)

    def forward(self, input, sigma, **kwargs):
        return self._denoiser(input, sigma, **kwargs)


class DiscreteSchedule(nn.Module):
    """A discrete list of training sigmas (ascending) and the maps σ ↔ t between them
    (:class:`ksampling.denoisers.VPDiscrete`): ``quantize=True`` rounds t to the nearest
    training index, else t is interpolated linearly in log σ."""

    def __init__(self, sigmas, quantize):
        super().__init__()
        self.register_buffer("sigmas", sigmas)
        self.register_buffer("log_sigmas", sigmas.log())
        self.quantize = quantize
        alphas_cumprod = 1 / (1 + sigmas.detach().double().cpu() ** 2)
        self.__dict__["_processes"] = {
            True: VPDiscrete(alphas_cumprod=alphas_cumprod, time="round"),
            False: VPDiscrete(alphas_cumprod=alphas_cumprod, time="interpolate"),
        }

    @property
    def sigma_min(self):
        return self.sigmas[0]

    @property
    def sigma_max(self):
        return self.sigmas[-1]

    def get_sigmas(self, n=None):
        """All training sigmas descending (``n=None``), or ``n`` sigmas at evenly spaced
        (fractional) timesteps from T−1 to 0; then 0."""
        if n is None:
            return _append_zero(self.sigmas.flip(0))
        t_max = len(self.sigmas) - 1
        t = torch.linspace(t_max, 0, n, device=self.sigmas.device)
        return _append_zero(self.t_to_sigma(t))

    def sigma_to_t(self, sigma, quantize=None):
        quantize = self.quantize if quantize is None else quantize
        t = self._processes[bool(quantize)].sigma_to_t(sigma)
        # k-diffusion returns an integer index when quantizing, else t in the sigmas' dtype
        return t.long() if quantize else t.to(self.sigmas.dtype)

    def t_to_sigma(self, t):
        return self._processes[False].t_to_sigma(t.float()).to(self.sigmas.dtype)


class _DiscreteDDPMDenoiser(DiscreteSchedule):
    """A discrete-time DDPM network (training schedule ``alphas_cumprod``) as D(x; σ): the
    wrapper's ``_network`` method gives the network's output, of kind ``_prediction``."""

    _network = _prediction = ""

    def __init__(self, model, alphas_cumprod, quantize):
        super().__init__(((1 - alphas_cumprod) / alphas_cumprod) ** 0.5, quantize)
        self.inner_model = model
        self.sigma_data = 1.0
        self.__dict__["_denoiser"] = _network_denoiser(self, self._network, self._prediction)

    def forward(self, input, sigma, **kwargs):
        return self._denoiser(input, sigma, **kwargs)


class DiscreteEpsDDPMDenoiser(_DiscreteDDPMDenoiser):
    """A discrete-time DDPM network that predicts ε, as D(x; σ) = x − σ ε(x·c_in, t)."""

    _network, _prediction = "get_eps", "eps"

    def get_scalings(self, sigma):
        c_out = -sigma
        c_in = 1 / (sigma**2 + self.sigma_data**2) ** 0.5
        return c_out, c_in

    def get_eps(self, *args, **kwargs):
        return self.inner_model(*args, **kwargs)

    def loss(self, input, noise, sigma, **kwargs):
        """MSE between the predicted and the true noise (DDPM's simple loss)."""
        c_out, c_in = [append_dims(s, input.ndim) for s in self.get_scalings(sigma)]
        noised = input + noise * append_dims(sigma, input.ndim)
        eps = self.get_eps(noised * c_in, self.sigma_to_t(sigma), **kwargs)
        return (eps - noise).pow(2).flatten(1).mean(1)


class OpenAIDenoiser(DiscreteEpsDDPMDenoiser):
    """An OpenAI guided/improved-diffusion model; with learned sigmas its output's first half
    of the channels is ε."""

    def __init__(self, model, diffusion, quantize=False, has_learned_sigmas=True, device="cpu"):
        alphas_cumprod = torch.tensor(diffusion.alphas_cumprod, device=device, dtype=torch.float32)
        super().__init__(model, alphas_cumprod, quantize=quantize)
        self.has_learned_sigmas = has_learned_sigmas

    def get_eps(self, *args, **kwargs):
        output = self.inner_model(*args, **kwargs)
        return output.chunk(2, dim=1)[0] if self.has_learned_sigmas else output


class CompVisDenoiser(DiscreteEpsDDPMDenoiser):
    """A CompVis latent-diffusion (Stable Diffusion 1.x/2.x ε) model: ε = ``model.apply_model``."""

    def __init__(self, model, quantize=False, device="cpu"):
        super().__init__(_compvis_model(model), model.alphas_cumprod, quantize=quantize)

    def get_eps(self, *args, **kwargs):
        return self.inner_model.apply_model(*args, **kwargs)


class DiscreteVDDPMDenoiser(_DiscreteDDPMDenoiser):
    """A discrete-time DDPM network that predicts v, as D(x; σ) = c_skip x + c_out v(x·c_in, t)."""

    _network, _prediction = "get_v", "v"

    def get_scalings(self, sigma):
        return _v_scalings(sigma, self.sigma_data)

    def get_v(self, *args, **kwargs):
        return self.inner_model(*args, **kwargs)

    def loss(self, input, noise, sigma, **kwargs):
        """MSE between the network output and the v target."""
        return _v_loss(self, self.get_v, input, noise, sigma, **kwargs)


class CompVisVDenoiser(DiscreteVDDPMDenoiser):
    """A CompVis latent-diffusion v model (Stable Diffusion 2.x 768-v): v = ``model.apply_model``."""

    def __init__(self, model, quantize=False, device="cpu"):
        super().__init__(_compvis_model(model), model.alphas_cumprod, quantize=quantize)

    def get_v(self, x, t, cond, **kwargs):
        return self.inner_model.apply_model(x, t, cond)


def _v_scalings(sigma, sigma_data):
    """(c_skip, c_out, c_in) of a v-predicting network (Salimans & Ho 2022):
    ``D = c_skip·x + c_out·v(c_in·x)`` with c_skip = σ_d²/(σ² + σ_d²),
    c_out = −σ σ_d/√(σ² + σ_d²), c_in = 1/√(σ² + σ_d²)."""
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out = -sigma * sigma_data / (sigma**2 + sigma_data**2) ** 0.5
    c_in = 1 / (sigma**2 + sigma_data**2) ** 0.5
    return c_skip, c_out, c_in


def _v_loss(wrapper, network, input, noise, sigma, **kwargs):
    """k-diffusion's v training loss: MSE between ``network(c_in·x_σ, t)`` and the v target."""
    c_skip, c_out, c_in = [append_dims(s, input.ndim) for s in wrapper.get_scalings(sigma)]
    noised = input + noise * append_dims(sigma, input.ndim)
    output = network(noised * c_in, wrapper.sigma_to_t(sigma), **kwargs)
    target = (input - c_skip * noised) / c_out
    return (output - target).pow(2).flatten(1).mean(1)


def _append_zero(x):
    return torch.cat([x, x.new_zeros([1])])


def _compvis_model(model):
    """A CompVis LatentDiffusion-like model: ``alphas_cumprod`` and ``apply_model``."""
    missing = [name for name in ("alphas_cumprod", "apply_model") if not hasattr(model, name)]
    if missing:
        raise TypeError(
            f"model must be a CompVis latent-diffusion model with alphas_cumprod and apply_model; "
            f"{type(model).__name__} has no {' or '.join(missing)}"
        )
    return model
