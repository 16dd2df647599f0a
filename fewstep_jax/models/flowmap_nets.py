"""Flow-map variants of the suite's networks, built around them without changing them.

Two flow-map methods need a network to see more than (x, t, y, d):

- Decoupled MeanFlow (DMF; Lee, Yu, Shin 2025, `models/dmft.py` of kyungmnlee/dmf): the first
  `split` conditioned layers see the embedding of t, the others (and DiT's final layer) the
  embedding of r, both from the SAME embedder (its label term included). `decoupled_apply` runs
  an unchanged network so: its conditioning embedder is called a second time with r, and the
  conditioning argument of every conditioned layer from the split on is replaced by SiLU(E(r)),
  through Flax's method interception. The parameters are the base network's, name for name, so a
  flow-matching run initializes it (train.init_from) and at r = t it IS the base network.
  Conditioned layers, in call order: the MLP's `cond_proj_i` projections, the UNet's ResBlocks,
  DiT's blocks and its final adaLN modulation (which therefore always sees r).

- improved MeanFlow (iMF; Geng et al. 2025, `models/imfDiT.py` of Lyy-iiis/imeanflow): the CFG
  scale and interval are network inputs and an auxiliary head predicts the instantaneous velocity.
  `GuidanceInputs` gives any of the suite's MLP / UNet / DiT these: the embeddings of
  (1 - 1/omega, t_min, t_max) are added to the network's conditioning vector (by interception of
  its embedder), and the auxiliary velocity head is a second copy of the network with its own
  embedders (the iMF DiT of models/imf_dit.py shares its trunk instead and duplicates only its
  last blocks).

Both rely on the suite's networks applying SiLU to the conditioning vector before every
conditioned layer (checked by the tests: at r = t the decoupled network equals the base network
bit for bit).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fewstep_jax.models import imf_dit, layers
from fewstep_jax.models.dit import DiT, DiTBlock
from fewstep_jax.models.mlp import MLP
from fewstep_jax.models.unet import ResBlock, UNet

Array = jax.Array

#: Networks whose conditioned layers `decoupled_apply` knows.
DECOUPLABLE = (MLP, UNet, DiT)


def conditioned_argument(module: nn.Module, method_name: str) -> int | None:
    """Position of the conditioning argument when this call is a conditioned layer of a suite network
    (see the module docstring), else None."""
    if method_name != "__call__":
        return None
    if isinstance(module, (DiTBlock, ResBlock)):
        return 1
    if isinstance(module, nn.Dense) and (
        (isinstance(module.parent, MLP) and module.name.startswith("cond_proj_"))
        or (isinstance(module.parent, DiT) and module.name == "final_adaLN_modulation")
    ):
        return 0
    return None


def check_decouplable(net: nn.Module) -> None:
    if not isinstance(net, DECOUPLABLE):
        names = ", ".join(cls.__name__ for cls in DECOUPLABLE)
        raise ValueError(f"the decoupled flow map needs one of the networks {names}, got {type(net).__name__}")


def conditioning_width(net: nn.Module) -> int:
    """Width of the conditioning vector of a suite network (its ConditioningEmbedding's features)."""
    if isinstance(net, MLP):
        return net.emb_dim
    if isinstance(net, UNet):
        return net.emb_dim or 4 * net.channels
    if isinstance(net, DiT):
        return net.hidden
    raise ValueError(f"guidance inputs need an mlp, unet or dit network, got {type(net).__name__}")


def _replace_time(args: tuple, kwargs: dict, time: Array) -> tuple[tuple, dict]:
    """The ConditioningEmbedding call arguments (t, y, d) with t replaced."""
    if args:
        return (time, *args[1:]), kwargs
    return args, dict(kwargs, t=time)


def added_conditioning(added: Array):
    """A context in which every call of a network's conditioning embedder returns its vector plus
    `added` [B, E] (Flax method interception): extra conditioning for an unchanged network."""

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if isinstance(context.module, layers.ConditioningEmbedding) and context.method_name == "__call__":
            out = out + added.astype(out.dtype)
        return out

    return nn.intercept_methods(interceptor)


def decoupled_apply(net: nn.Module, variables: Any, x: Array, t: Array, r: Array, y: Array | None = None,
                    split: int = 1, *, train: bool = False, rngs: Any = None) -> Array:  # fmt: skip
    """net(x, t) with its conditioned layers from index `split` on fed SiLU(E(r) [+ E_y(y)]) (DMF).

    t, r: [B] times in the network's own convention (the network's `t` input). `split` counts
    conditioned layers (conditioned_layers gives their number). With r == t this is exactly
    net.apply(variables, x, t, y).
    """
    check_decouplable(net)
    state: dict[str, Any] = {"count": 0, "late": None, "busy": False}

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if state["busy"]:
            return next_fun(*args, **kwargs)
        if isinstance(module, layers.ConditioningEmbedding) and context.method_name == "__call__":
            early = next_fun(*args, **kwargs)
            # The same embedder (its weights, as they are now) applied to r: a functional call on a
            # copy, since a compact module cannot run twice inside one intercepted call.
            r_args, r_kwargs = _replace_time(args, kwargs, r.astype(t.dtype))
            state["busy"] = True
            try:
                late = module.clone(parent=None).apply({"params": module.variables["params"]}, *r_args, **r_kwargs)
            finally:
                state["busy"] = False
            state["late"] = nn.silu(late)
            return early
        position = conditioned_argument(module, context.method_name)
        if position is not None:
            index = state["count"]
            state["count"] += 1
            if index >= split:
                args = list(args)
                args[position] = state["late"].astype(args[position].dtype)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        return net.apply(variables, x, t, y=y, train=train, rngs=rngs)


def conditioned_layers(net: nn.Module, data_shape: tuple[int, ...], num_classes: int) -> int:
    """How many conditioned layers `decoupled_apply` sees in `net` (traced with abstract values)."""
    check_decouplable(net)
    count = [0]

    def interceptor(next_fun, args, kwargs, context):
        if conditioned_argument(context.module, context.method_name) is not None:
            count[0] += 1
        return next_fun(*args, **kwargs)

    x = jnp.zeros((1, *data_shape), jnp.float32)
    t = jnp.zeros((1,), jnp.float32)
    y = jnp.full((1,), num_classes, jnp.int32) if num_classes else None
    d = jnp.zeros((1,), jnp.float32) if net.use_d else None
    with nn.intercept_methods(interceptor):
        jax.eval_shape(lambda: net.init(jax.random.key(0), x, t, y=y, d=d))
    return count[0]


class WithGuidanceInputs(nn.Module):
    """One network with embedders of (1 - 1/omega, t_min, t_max) added to its conditioning vector."""

    net: nn.Module
    freq_dim: int = 256

    @nn.compact
    def __call__(self, x, t, y, d, train, extra):
        if extra.ndim != 2 or extra.shape[1] != 3:
            raise ValueError(f"extra must be [B, 3] = (1 - 1/omega, t_min, t_max), got shape {extra.shape}")
        width = conditioning_width(self.net)
        added = sum(layers.TimestepEmbedder(width, self.freq_dim, name=f"guidance_{i}")(extra[:, i]) for i in range(3))
        with added_conditioning(added):
            return self.net(x, t, y=y, d=d, train=train)


class GuidanceInputs(nn.Module):
    """A suite network with iMF's guidance inputs and auxiliary velocity head (see the module docstring).

    __call__(x, t, y, d, train, extra, heads): extra [B, 3] = (1 - 1/omega, t_min, t_max) (None: omega
    = 1 on [0, 1]); returns u (heads='u'), v_aux ('v', u not computed) or (u, v_aux) ('uv').
    Parameters: {'u': the network and its guidance embedders, 'v': the auxiliary copy (v_head=True only)}.
    """

    base: nn.Module
    v_head: bool = True
    freq_dim: int = 256

    takes_guidance_inputs = True  # the iMF method's test for a network with these inputs

    @property
    def use_d(self) -> bool:
        return self.base.use_d

    @nn.compact
    def __call__(self, x, t, y=None, d=None, train: bool = False, extra: Array | None = None, heads: str = "u"):
        imf_dit.check_heads(heads)
        if "v" in heads and not self.v_head:
            raise ValueError("this network has no auxiliary velocity head (v_head=False)")
        if extra is None:
            extra = jnp.broadcast_to(jnp.asarray([0.0, 0.0, 1.0], jnp.float32), (t.shape[0], 3))
        outputs = {
            name: WithGuidanceInputs(self.base.clone(), self.freq_dim, name=name)(x, t, y, d, train, extra)
            for name in heads
        }
        return outputs[heads] if len(heads) == 1 else (outputs["u"], outputs["v"])
