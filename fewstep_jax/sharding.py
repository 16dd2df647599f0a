"""Device mesh, shardings, and global batches.

The mesh has axes ('data', 'fsdp'). Batches are sharded along their leading axis over both
axes. The train state (parameters, optimizer state, EMAs, method state) follows
`sharding.strategy`:
  replicated  every device holds the whole state (data parallelism);
  fsdp        fully sharded data parallelism (ZeRO-3 style): every leaf with at least
              `min_shard_size` elements is split along its largest axis divisible by the 'fsdp'
              axis size; smaller or indivisible leaves stay replicated. The rule depends only on
              a leaf's shape, so Adam's moments and the EMAs are sharded exactly like the
              parameters they track. XLA inserts the all-gathers / reduce-scatters.
`jax.jit` with in/out shardings is the modern form of pjit.
"""

from __future__ import annotations

import math
import os
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


def fsdp_spec(shape: tuple[int, ...], fsdp_size: int, min_size: int) -> P:
    """PartitionSpec of one leaf under FSDP: its largest axis divisible by fsdp_size over 'fsdp'
    (ties: the first such axis), or replicated when the leaf is small or no axis divides."""
    if fsdp_size <= 1 or math.prod(shape) < min_size:
        return P()
    for axis in sorted(range(len(shape)), key=lambda i: (-shape[i], i)):
        if shape[axis] % fsdp_size == 0:
            return P(*(["fsdp" if i == axis else None for i in range(len(shape))]))
    return P()


def state_shardings(abstract_state: Any, mesh: Mesh, strategy: str = "replicated", min_size: int = 2**14) -> Any:
    """Shardings of a train state (abstract or concrete leaves) under `strategy` (module doc)."""
    if strategy == "replicated":
        return tree_shardings(abstract_state, replicated(mesh))
    if strategy != "fsdp":
        raise ValueError(f"unknown sharding strategy {strategy!r}; expected 'replicated' or 'fsdp'")
    size = mesh.shape["fsdp"]
    return jax.tree.map(lambda leaf: NamedSharding(mesh, fsdp_spec(tuple(leaf.shape), size, min_size)), abstract_state)


def sharded_fraction(abstract_state: Any, shardings: Any) -> tuple[int, int]:
    """(elements in sharded leaves, all elements): how much of the state FSDP splits."""
    sharded = total = 0
    for leaf, sharding in zip(jax.tree.leaves(abstract_state), jax.tree.leaves(shardings)):
        n = math.prod(leaf.shape)
        total += n
        sharded += n if any(axis is not None for axis in sharding.spec) else 0
    return sharded, total


def tree_shardings(tree: Any, sharding: NamedSharding) -> Any:
    """The same sharding for every leaf of `tree` (abstract or concrete)."""
    return jax.tree.map(lambda _: sharding, tree)


def initialize_distributed(
    coordinator_address: str = "", num_processes: int = 0, process_id: int = -1
) -> None:
    """Joins JAX's multi-controller runtime (jax.distributed.initialize); never called at import.

    With no arguments JAX detects the cluster itself (TPU pods, SLURM, Open MPI). Explicit
    arguments (or FEWSTEP_COORDINATOR / FEWSTEP_NUM_PROCESSES / FEWSTEP_PROCESS_ID) describe the
    job by hand, e.g. N processes on 127.0.0.1 (launch/local.sh). On CPU the cross-process
    collectives use gloo. Must run before anything else touches JAX devices.
    """
    coordinator_address = coordinator_address or os.environ.get("FEWSTEP_COORDINATOR", "")
    num_processes = num_processes or int(os.environ.get("FEWSTEP_NUM_PROCESSES", "0"))
    if process_id < 0:
        process_id = int(os.environ.get("FEWSTEP_PROCESS_ID", "-1"))
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU devices only; harmless elsewhere
    kwargs: dict[str, Any] = {}
    if coordinator_address:
        if num_processes < 1 or process_id < 0:
            raise ValueError(
                "a coordinator address needs the number of processes and this process's id "
                "(--num_processes / --process_id or FEWSTEP_NUM_PROCESSES / FEWSTEP_PROCESS_ID)"
            )
        kwargs = dict(coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id)
    jax.distributed.initialize(**kwargs)

