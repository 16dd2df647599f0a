"""Device mesh, shardings, and global batches.

The mesh has axes ('data', 'fsdp'). Batches are sharded along their leading axis
over both axes; parameters, optimizer state and EMAs are replicated (FSDP
parameter sharding arrives with the scale-out work). `jax.jit` with in/out
shardings is the modern form of pjit.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


def make_mesh(fsdp: int = 1) -> Mesh:
    """A ('data', 'fsdp') mesh over all devices; `fsdp` must divide the device count."""
    n = jax.device_count()
    if fsdp < 1 or n % fsdp:
        raise ValueError(f"fsdp={fsdp} must divide the device count {n}")
    return jax.make_mesh((n // fsdp, fsdp), ("data", "fsdp"), axis_types=(AxisType.Auto, AxisType.Auto))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over every device of the mesh."""
    return NamedSharding(mesh, P(("data", "fsdp")))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def global_batch(local: Mapping[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Assemble each process's numpy slice into one globally sharded jax.Array."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def tree_shardings(tree: Any, sharding: NamedSharding) -> Any:
    """The same sharding for every leaf of `tree` (abstract or concrete)."""
    return jax.tree.map(lambda _: sharding, tree)
