"""Learned per-time loss weighting (EDM2's uncertainty-based log-variance head).

EDM2 (Karras et al. 2024, sec. 5 / eq. 8-9) weights the diffusion loss with a
learned log-variance u(t): loss = exp(-u(t)) * err + u(t), which balances the
loss across noise levels. sCM (Lu & Song 2024, Alg. 1) uses the same kind of
head, w_phi(t), for its adaptive weighting. Two forms of u:
  - 'positional': a positional embedding of t followed by one linear layer to a
    scalar, zero-initialized so training starts from uniform weighting;
  - 'mp_fourier': EDM2's own head (its Precond `logvar_fourier`, `logvar_linear`):
    MPFourier features of t and one magnitude-preserving linear layer without bias
    (models/edm2.py), whose weight takes part in forced weight normalization.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from fewstep_jax.models import edm2
from fewstep_jax.models.layers import positional_embedding

LOGVAR_FORMS = ("positional", "mp_fourier")


class LogVariance(nn.Module):
    """u(t): [B] float32 -> [B] float32."""

    channels: int = 128
    time_scale: float = 1.0
    form: str = "positional"

    # Forced weight normalization of the 'mp_fourier' weight (identity for 'positional').
    project_params = staticmethod(edm2.project_params)

    @nn.compact
    def __call__(self, t: jax.Array) -> jax.Array:
        t = self.time_scale * t.astype(jnp.float32)
        if self.form == "mp_fourier":
            emb = edm2.mp_fourier(t, self.channels, seed=edm2.LOGVAR_SEED)
            return edm2.MPConv(1, (), name="out")(emb)[:, 0]
        if self.form != "positional":
            raise ValueError(f"log-variance form must be one of {LOGVAR_FORMS}, got {self.form!r}")
        emb = positional_embedding(t, self.channels)
        return nn.Dense(1, kernel_init=nn.initializers.zeros, name="out")(emb)[:, 0]


class LearnedLogVariance:
    """Mixin for diffusion methods with EDM2's learned weighting: the config fields
    learned_weighting, logvar_channels and logvar_form (LOGVAR_FORMS); params['logvar'] holds u's
    parameters next to params['net'] and is projected with them."""

    def check_logvar(self) -> None:
        if self.cfg.logvar_form not in LOGVAR_FORMS:
            raise ValueError(f"{self.name}: logvar_form must be one of {LOGVAR_FORMS}, got {self.cfg.logvar_form!r}")

    @property
    def logvar_net(self) -> LogVariance:
        return LogVariance(channels=self.cfg.logvar_channels, form=self.cfg.logvar_form)

    def init_params(self, rng, example_batch):
        k_net, k_w = jax.random.split(rng)
        params = super().init_params(k_net, example_batch)
        if self.cfg.learned_weighting:
            params["logvar"] = self.logvar_net.init(k_w, jnp.zeros((1,), jnp.float32))["params"]
        return params

    def project_params(self, params):
        params = super().project_params(params)
        if self.cfg.learned_weighting:
            params["logvar"] = self.logvar_net.project_params(params["logvar"])
        return params
