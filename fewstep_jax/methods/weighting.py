"""Learned per-time loss weighting (EDM2's uncertainty-based log-variance head).

EDM2 (Karras et al. 2024, sec. 5 / eq. 8-9) weights the diffusion loss with a
learned log-variance u(t): loss = exp(-u(t)) * err + u(t), which balances the
loss across noise levels. sCM (Lu & Song 2024, Alg. 1) uses the same kind of
head, w_phi(t), for its adaptive weighting. Here u is a positional embedding of
t followed by one linear layer to a scalar, zero-initialized so training starts
from uniform weighting.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from fewstep_jax.models.layers import positional_embedding


class LogVariance(nn.Module):
    """u(t): [B] float32 -> [B] float32."""

    channels: int = 128
    time_scale: float = 1.0

    @nn.compact
    def __call__(self, t: jax.Array) -> jax.Array:
        emb = positional_embedding(self.time_scale * t.astype(jnp.float32), self.channels)
        return nn.Dense(1, kernel_init=nn.initializers.zeros, name="out")(emb)[:, 0]
