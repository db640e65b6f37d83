"""A drop-in replacement for ``k_diffusion.sampling`` and ``k_diffusion.external``, with every
sampler and calling convention of ComfyUI's copy of ``k_diffusion.sampling``.

Code written against k-diffusion 0.1.1 (A1111, Forge) or ComfyUI's ``comfy.k_diffusion``
keeps working after one changed import:

```python
import ksampling.kdiffusion as K          # was: import k_diffusion as K
sigmas = K.sampling.get_sigmas_karras(20, 0.03, 14.6)
model = K.external.CompVisDenoiser(ldm)
x = K.sampling.sample_dpmpp_2m(model, noise * sigmas[0], sigmas, callback=cb)
```

``ksampling.kdiffusion.sampling``, ``.external`` and ``.utils`` are real modules (``import
ksampling.kdiffusion.sampling as sampling`` works, and so does patching their attributes);
every name is also importable from ``ksampling.kdiffusion`` itself. Every ``sample_*`` has
k-diffusion's (or ComfyUI's) signature, defaults, callback dict and return value, but is a
thin shim: one table (:data:`ksampling.kdiffusion.sampling.SAMPLERS`) maps each name to the
ksampling solver that runs it through :func:`ksampling.sample`; each schedule calls
:mod:`ksampling.schedules`; the ``external`` wrappers put k-diffusion's methods on top of
:class:`ksampling.denoisers.VPDiscrete` and :class:`ksampling.denoisers.NetworkDenoiser`.
There is no second implementation of any solver.

Randomness, as its callers rely on it:

* **k-diffusion / A1111.** With no ``noise_sampler`` and no seed, noise comes from the
  *global* torch RNG through the ``torch`` attribute of ``ksampling.kdiffusion.sampling``,
  looked up at every draw: A1111's ``sampling.torch = TorchHijack(p)`` then supplies every
  ``randn_like``. The SDE samplers' default Brownian tree is k-diffusion's own
  (``torchsde.BrownianTree`` seeded from ``torch.randint`` on the global RNG) whenever
  torchsde is installed, so the same ``torch.manual_seed``, or the same per-image seed list
  given to :class:`~ksampling.kdiffusion.sampling.BrownianTreeNoiseSampler`, gives
  k-diffusion's numbers. Without torchsde, ksampling's own tree is used (other numbers).
* **ComfyUI.** ``extra_args['seed']`` seeds the default noise exactly as ComfyUI does
  (:func:`~ksampling.kdiffusion.sampling.default_noise_sampler` ``(x, seed)``, and the SDE
  samplers' tree on the CPU; the ``_gpu`` names keep it on ``x``'s device).
* :func:`ksampling.sample` itself never touches the global RNG.

Differences from k-diffusion, all deliberate:

* **No host syncs.** k-diffusion turns tensors into Python values 1–9 times per step;
  here every branch is decided once, before the loop, from ``sigmas.tolist()``.
* **Bugs fixed.** ``sample_dpmpp_3m_sde`` (and ``sample_dpmpp_2m_sde``) crash in
  k-diffusion on a one-step grid ending in 0; here they take one denoising step. Invalid
  input (unsorted sigmas, a model that returns NaN, an unknown ``solver_type``, swapped
  ``log_likelihood`` bounds, ``get_ancestral_step`` towards more noise, a ``CompVisDenoiser``
  around something that is not a CompVis model) raises a ``ValueError``/``TypeError`` naming
  the parameter instead of returning garbage.
* **Draws that are discarded.** With ``eta = 0`` or churn restricted by ``s_tmin``/``s_tmax``,
  no numbers are drawn where k-diffusion draws and discards them (ComfyUI's ``heunpp2`` draws
  one discarded ``randn_like`` per step; here it draws only when churn is on).
* **Smaller things.** ``get_sigmas_*`` compute in float64 and round once to the default dtype;
  ``sample_dpm_fast``/``sample_dpm_adaptive`` build their λ grid in float64;
  :class:`~ksampling.kdiffusion.sampling.DPMSolver`'s whole-run methods integrate only
  towards lower noise.
* **ComfyUI's flow-model branches.** ComfyUI switches some samplers to other formulas when
  its model is a rectified-flow (``CONST``) model; a plain callable carries no such flag, so
  the drop-in always runs the formulas of the VE state (see ``docs/migrating.md``).
"""

from . import external, sampling, utils
from .external import *  # noqa: F401,F403
from .sampling import *  # noqa: F401,F403
from .utils import append_dims

__all__ = sampling.__all__ + external.__all__ + ["append_dims", "sampling", "external", "utils"]
