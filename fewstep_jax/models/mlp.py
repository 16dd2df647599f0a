"""Small conditional MLP for 2-D toy data (checkerboard, 8 gaussians, moons, ...).

The toy networks of the shortcut / MeanFlow / consistency papers are plain MLPs with the time
embedding injected at every layer; this one follows that pattern with the suite's shared
conditioning (time [+ d] [+ label]) and the EDM zero-initialized output layer.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fewstep_jax.models import layers

Array = jax.Array


class MLP(nn.Module):
    """Conditional MLP: x [B, C] -> [B, C].

    h = Dense(x); for each of `depth` hidden layers: h = Dense(dropout(SiLU(h + Dense(SiLU(emb)))));
    out = zero-init Dense(SiLU(h)). The conditioning is re-added before every hidden layer so the
    time signal cannot be washed out by depth. The zero-initialized output layer (EDM, Karras et
    al. 2022, App. F.2) makes the untrained network output exactly 0.

    Fields:
      hidden: hidden width. depth: number of hidden layers. emb_dim: conditioning width (also the
      sinusoidal width). time_scale: t is embedded as positional_embedding(time_scale * t).
      use_d: accept a second scalar d. dropout: rate, active only when train=True.
      num_classes: 0 = unconditional; else labels 0..num_classes, num_classes = NULL.
      dtype: computation dtype of the Dense layers (params are float32).
    """

    hidden: int = 256
    depth: int = 4
    emb_dim: int = 128
    time_scale: float = 1.0
    use_d: bool = False
    dropout: float = 0.0
    num_classes: int = 0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: Array,
        t: Array,
        y: Array | None = None,
        d: Array | None = None,
        train: bool = False,
    ) -> Array:
        if x.ndim != 2:
            raise ValueError(f"MLP expects x of shape [B, C], got {x.shape}")
        out_dtype = layers.at_least_float32(x.dtype)
        emb = layers.ConditioningEmbedding(
            features=self.emb_dim,
            freq_dim=self.emb_dim,
            time_scale=self.time_scale,
            num_classes=self.num_classes,
            use_d=self.use_d,
            name="cond",
        )(t, y, d)
        # SiLU on the shared embedding before per-layer projections (as the UNet does).
        emb = nn.silu(emb)

        def dense(features: int, name: str, init=layers.xavier_uniform) -> nn.Dense:
            return nn.Dense(features, dtype=self.dtype, kernel_init=init, name=name)

        h = dense(self.hidden, "in_proj")(x.astype(self.dtype))
        for i in range(self.depth):
            h = h + dense(self.hidden, f"cond_proj_{i}")(emb)
            h = nn.silu(h)
            if self.dropout > 0.0:
                h = nn.Dropout(self.dropout, deterministic=not train)(h)
            h = dense(self.hidden, f"hidden_{i}")(h)
        h = nn.silu(h)
        out = dense(x.shape[-1], "out_proj", init=nn.initializers.zeros)(h)
        return out.astype(out_dtype)
