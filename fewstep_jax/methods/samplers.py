"""Deterministic ODE samplers shared by the diffusion / flow methods.

`integrate` solves dx/ds = velocity(x, s) over a given time grid with

  euler: x_{i+1} = x_i + h_i v(x_i, s_i)                          NFE = N
  heun:  Heun's 2nd-order method (EDM, Karras et al. 2022, Alg. 1): an Euler
         predictor, then the trapezoidal corrector with v at the new point;
         the last step is a plain Euler step (as in EDM, whose last step lands
         on sigma = 0 where the corrector is undefined)       NFE = 2N - 1

for any number of steps N >= 1. The loops are `lax.fori_loop`s (`sampling_loop`, also used by
the MeanFlow and shortcut samplers), so the compiled size does not grow with N.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

Velocity = Callable[[jax.Array, jax.Array], jax.Array]

SAMPLERS = ("euler", "heun")


def nfe(num_steps: int, sampler: str) -> int:
    """Exact network evaluations of `integrate` for N steps."""
    check_sampler(sampler)
    return num_steps if sampler == "euler" else 2 * num_steps - 1


def check_sampler(sampler: str) -> None:
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; known: {', '.join(SAMPLERS)}")


def carry_dtype(x: jax.Array) -> np.dtype:
    """The dtype a sampling loop carries x in: x's dtype promoted to the widest float JAX enables
    (float32; float64 under jax_enable_x64), so a float64 network keeps its precision there."""
    return jnp.promote_types(x.dtype, jax.dtypes.canonicalize_dtype(jnp.float64))


def sampling_loop(lower: int, upper: int, step: Callable[[jax.Array, jax.Array], jax.Array], x: jax.Array):
    """jax.lax.fori_loop(lower, upper, step, x) with the carry in carry_dtype(x) and each step's
    output cast back to it. fori_loop refuses a body whose output dtype differs from its carry:
    float32 noise and a network that returns float64 (under jax_enable_x64) would otherwise fail."""
    dtype = carry_dtype(x)
    return jax.lax.fori_loop(lower, upper, lambda i, x: step(i, x).astype(dtype), x.astype(dtype))


def integrate(velocity: Velocity, x: jax.Array, grid: jax.Array, sampler: str) -> jax.Array:
    """Integrate dx/ds = velocity(x, s) from grid[0] to grid[-1].

    Args:
      velocity: (x [B, ...], s scalar float32) -> dx/ds [B, ...].
      x: state at grid[0].
      grid: [N + 1] float32 times, monotone (either direction).
      sampler: 'euler' or 'heun'.
    Returns the state at grid[-1] in carry_dtype(x).
    """
    check_sampler(sampler)
    num_steps = grid.shape[0] - 1
    if num_steps < 1:
        raise ValueError("the time grid needs at least two points")

    def euler_step(i, x):
        return x + (grid[i + 1] - grid[i]) * velocity(x, grid[i])

    if sampler == "euler":
        return sampling_loop(0, num_steps, euler_step, x)

    def heun_step(i, x):
        h = grid[i + 1] - grid[i]
        d1 = velocity(x, grid[i])
        x_pred = x + h * d1
        d2 = velocity(x_pred, grid[i + 1])
        return x + 0.5 * h * (d1 + d2)

    x = sampling_loop(0, num_steps - 1, heun_step, x)
    return euler_step(num_steps - 1, x).astype(x.dtype)


def karras_sigmas(num_steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> jax.Array:
    """EDM noise levels (Karras et al. 2022, eq. 5) followed by a final 0: [N + 1].

    One step goes straight from sigma_max to 0.
    """
    if num_steps == 1:
        return jnp.array([sigma_max, 0.0], jnp.float32)
    i = jnp.arange(num_steps, dtype=jnp.float32) / (num_steps - 1)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    sigmas = (hi + i * (lo - hi)) ** rho
    return jnp.concatenate([sigmas, jnp.zeros((1,), jnp.float32)])
