"""Rematerialization (gradient checkpointing) of network blocks: model.remat.

Reverse mode stores every intermediate of the forward pass that the backward pass needs; for a
large network trained with a jvp (sCM, MeanFlow: primal and tangent intermediates) those dominate
memory. jax.checkpoint (Chen et al. 2016, "Training deep nets with sublinear memory cost") keeps
only what a policy allows and recomputes the rest in the backward pass. The networks apply it to
each of their blocks (DiT: transformer block; UNet: residual and attention blocks; EDM2: encoder /
decoder block) through flax.linen.remat, so a block's inputs are kept and its inside is
recomputed, block by block. Parameters and numerics are unchanged; only memory and time move.

Policies (REMAT_POLICIES, values of model.remat), from most memory to least:
  'none'                               no rematerialization (the default).
  'dots_with_no_batch_dims_saveable'   keep the results of matmuls without batch dimensions
                                       (dense layers, not convolutions or attention logits).
  'dots_saveable'                      keep every matmul / convolution result, recompute the
                                       elementwise work between them.
  'nothing_saveable'                   keep only each block's inputs: the least memory, one more
                                       forward pass of the network in the backward pass.
A jvp inside the differentiated function (MeanFlow) is rematerialized along with its primal.
`benchmarks/memory.py` tabulates compiled memory and step time per policy (docs/SCALE.md).
"""

from __future__ import annotations

from typing import TypeVar

import flax.linen as nn
import jax

#: model.remat values -> jax.checkpoint policy (None: no jax.checkpoint at all).
REMAT_POLICIES = {
    "none": None,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
}

Block = TypeVar("Block", bound=type[nn.Module])


def check_policy(name: str) -> None:
    if name not in REMAT_POLICIES:
        raise ValueError(f"model.remat must be one of {list(REMAT_POLICIES)}, got {name!r}")


def remat_block(block: Block, policy: str, static_argnums: tuple[int, ...] = ()) -> Block:
    """`block` (a Linen Module class) wrapped in flax.linen.remat with the named policy, or
    unchanged for 'none'. static_argnums count `self` as 0 (e.g. (3,) for a Python bool `train`
    third argument). Instances take the same fields and names, so parameter trees are identical."""
    check_policy(policy)
    if policy == "none":
        return block
    return nn.remat(block, policy=REMAT_POLICIES[policy], static_argnums=static_argnums)
