"""Flow maps: the core shared by MeanFlow, iMF, alpha-Flow, AYF, Decoupled MeanFlow and shortcut models.

Convention (t = 1 noise, t = 0 data), as MeanFlow (Geng et al. 2025, eq. 1-3):
  z_t = (1 - t) x + t e,  e ~ N(0, I),  v_hat = e - x            (sample velocity)
  v(z, t) = E[v_hat | z_t = z]                                     (marginal velocity)
  flow map Phi(z, t, r), r <= t; average velocity u(z, t, r) = (z - Phi(z, t, r)) / (t - r),
  u(z, t, t) = v(z, t); one step is z_r = z_t - (t - r) u(z_t, t, r).
The papers' symbols map onto this u: MeanFlow and alpha-Flow u(z, r, t), iMF u(z, t, h = t - r),
AYF f = x_t + (s - t) F with F = u and s = r, DMF's Euler step x_r = x_t + (r - t) u, and the
suite's shortcut model (t' = 1 - t data time) u = -s(z, t', d = t - r).

A method hands the core a `u_fn(z, t, r) -> u` (or `(u, aux)`) with z [B, ...] and t, r [B]; the
core never sees a network. What it provides:
  total_derivative  (u, D_t u) by ONE jax.jvp of (z, t, r) -> u_fn with tangents (w, 1, 0):
                    D_t u = w . d_z u + d_t u at fixed r. u_fn must form h = t - r itself, from
                    its arguments, so that d_t reaches h (a precomputed h drops d_h u silently).
  partial_r         d_r u by one jax.jvp with tangents (0, 0, 1) (AYF's Lagrangian objective).
  mf_target         v - (t - r) D_t u, the MeanFlow identity (MeanFlow eq. 6): MeanFlow's and
                    DMF's target, iMF's V = u + (t - r) D_t u rearranged, alpha-Flow at alpha = 0,
                    AYF's Eulerian residual at r_w = 1.
  alpha_target      alpha v + (1 - alpha) u(z_s, s, r) at s = alpha r + (1 - alpha) t (alpha-Flow).
  folded_guidance   a v_hat + kappa v_c + (1 - a - kappa) v_u inside an interval (learned CFG scale
                    a / (1 - kappa)): MeanFlow / alpha-Flow (omega, kappa), iMF (1, 1 - 1/omega),
                    DMF's model guidance (1, omega).
  adaptive_weight   1 / sg(l + c)^p (MeanFlow sec. 4.3; iMF; alpha-Flow's mean form).
  log_variance_loss log(l e^-phi + c) + phi (DMF's learned log-variance).
  tangent_normalize g / (||g|| + c) per example (sCM; AYF).
  time draws        logit-normal pairs ordered by max / min, the first-rows r = t share, iMF's
                    power-law CFG scale.
  step schedules    alpha-Flow's sigmoid curriculum alpha(k), a linear warmup r_w(k).
  sampling          ONE sampler: `times` (uniform, custom, shifted, dyadic) and `sample` with
                    gamma re-noising (gamma = 0 deterministic composition, gamma = 1 restart, i.e.
                    consistency sampling) and an optional two-pass CFG (`two_pass_guidance`).
"""

from __future__ import annotations

import math
from typing import Any, Callable, ClassVar, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fewstep_jax.methods import samplers
from fewstep_jax.methods.base import JumpMethod, bcast

UFn = Callable[..., Any]

#: Sampling schedules of `times`.
SCHEDULES = ("uniform", "custom", "shifted", "dyadic")
#: How a pair of time draws becomes (t, r): t, r = max, min ('sort'), or keep t and r = min(t, r).
ORDERS = ("sort", "clamp_r")


def noisy(x: jax.Array, e: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(z_t, v_hat) = ((1 - t) x + t e, e - x) for x, e [B, ...] and t [B]."""
    tb = bcast(t, x)
    return (1.0 - tb) * x + tb * e, e - x


# ---------------------------------------------------------------------------
# Derivatives of u


def total_derivative(u_fn: UFn, z: jax.Array, t: jax.Array, r: jax.Array, tangent: jax.Array, *,
                     has_aux: bool = False):  # fmt: skip
    """(u, D_t u) (or (u, D_t u, aux) with has_aux) from ONE jax.jvp of (z, t, r) -> u_fn(z, t, r)
    at (z, t, r) with tangents (tangent, 1, 0): D_t u = tangent . d_z u + d_t u along dz/dt = tangent
    at fixed r (MeanFlow eq. 8; iMF, alpha-Flow, AYF eq. 9, DMF alike). u_fn forms h = t - r from its
    arguments. Shapes: z, tangent [B, ...]; t, r [B]."""
    tangents = (tangent.astype(z.dtype), jnp.ones_like(t), jnp.zeros_like(r))
    return jax.jvp(u_fn, (z, t, r), tangents, has_aux=has_aux)


def partial_r(u_fn: UFn, z: jax.Array, t: jax.Array, r: jax.Array):
    """(u, d_r u): one jax.jvp with tangents (0, 0, 1) (AYF's Lagrangian objective, d/ds of F)."""
    return jax.jvp(u_fn, (z, t, r), (jnp.zeros_like(z), jnp.zeros_like(t), jnp.ones_like(r)))


# ---------------------------------------------------------------------------
# Targets and guidance


def mf_target(v: jax.Array, t: jax.Array, r: jax.Array, du_dt: jax.Array) -> jax.Array:
    """sg(v - clip(t - r, 0, 1) D_t u): the MeanFlow identity u = v - (t - r) du/dt (MeanFlow eq. 6,
    with the official code's clip of t - r, the identity on valid intervals)."""
    return jax.lax.stop_gradient(v - bcast(jnp.clip(t - r, min=0.0, max=1.0), v) * du_dt)


def alpha_point(z: jax.Array, t: jax.Array, r: jax.Array, v: jax.Array, alpha: jax.Array):
    """(s, z_s): s = alpha r + (1 - alpha) t and the Euler point z_s = z_t - (t - s) v (alpha-Flow)."""
    s = alpha * r + (1.0 - alpha) * t
    return s, z - bcast(t - s, z) * v


def alpha_target(v: jax.Array, u_next: jax.Array, alpha: jax.Array) -> jax.Array:
    """alpha v + (1 - alpha) u(z_s, s, r) (alpha-Flow's L_alpha target; u_next from alpha_point)."""
    return alpha * v + (1.0 - alpha) * u_next


def in_interval(t: jax.Array, lo: Any, hi: Any, *, strict: bool = False) -> jax.Array:
    """Bool [B]: lo <= t <= hi (or lo < t < hi)."""
    return ((t > lo) & (t < hi)) if strict else ((t >= lo) & (t <= hi))


def folded_guidance(v_hat: jax.Array, v_cond: jax.Array, v_null: jax.Array, a: Any, kappa: Any,
                    use: jax.Array | None = None) -> jax.Array:  # fmt: skip
    """sg(a v_hat + kappa v_c + (1 - a - kappa) v_u) where `use` ([B] bool, None = every row), v_hat
    elsewhere: guidance folded into the training target; the learned CFG scale is a / (1 - kappa).
    a, kappa: floats or [B] arrays."""
    a = _rows(a, v_hat)
    kappa = _rows(kappa, v_hat)
    guided = a * v_hat + kappa * v_cond + (1.0 - a - kappa) * v_null
    if use is not None:
        guided = jnp.where(bcast(use, v_hat), guided, v_hat)
    return jax.lax.stop_gradient(guided)


def _rows(value: Any, like: jax.Array) -> Any:
    value = jnp.asarray(value, like.dtype) if isinstance(value, jax.Array) else value
    return bcast(value, like) if isinstance(value, jax.Array) and value.ndim == 1 else value


def two_pass_guidance(cond: jax.Array, null: jax.Array, scale: Any, use: jax.Array | None = None) -> jax.Array:
    """Classifier-free guidance of a sampling step: null + w (cond - null) where `use`, cond elsewhere."""
    guided = null + scale * (cond - null)
    return guided if use is None else jnp.where(bcast(use, cond), guided, cond)


# ---------------------------------------------------------------------------
# Weightings


def sum_sq(a: jax.Array) -> jax.Array:
    """Per-example sum of squares over all non-batch axes: [B, ...] -> [B]."""
    return jnp.sum(jnp.square(a).reshape(a.shape[0], -1), axis=1)


def mean_sq(a: jax.Array) -> jax.Array:
    """Per-example mean of squares over all non-batch axes: [B, ...] -> [B]."""
    return jnp.mean(jnp.square(a).reshape(a.shape[0], -1), axis=1)


def adaptive_weight(loss: jax.Array, c: float, p: float = 1.0) -> jax.Array:
    """1 / sg(loss + c)^p per example (MeanFlow sec. 4.3: p = 1, c = 0.01 with a sum over pixels;
    alpha-Flow: p = 1, c = 1e-3 with a mean)."""
    return 1.0 / jax.lax.stop_gradient(loss + c) ** p


def log_variance_loss(loss: jax.Array, logvar: jax.Array, c: float) -> jax.Array:
    """log(loss e^-logvar + c) + logvar per example (DMF's loss with a learned log-variance)."""
    return jnp.log(loss * jnp.exp(-logvar) + c) + logvar


def tangent_normalize(g: jax.Array, c: float) -> jax.Array:
    """g / (||g||_2 + c) per example over all non-batch axes (sCM sec. 4.2; AYF)."""
    norm = jnp.sqrt(sum_sq(g))
    return g / bcast(norm + c, g)


# ---------------------------------------------------------------------------
# Time draws


def logit_normal(rng: jax.Array, n: int, mean: float, std: float) -> jax.Array:
    """sigmoid(mean + std N(0, 1)), [n]."""
    return jax.nn.sigmoid(mean + std * jax.random.normal(rng, (n,)))


def ordered(t: jax.Array, r: jax.Array, order: str = "sort") -> tuple[jax.Array, jax.Array]:
    """(t, r) with r <= t: max / min of the two draws ('sort'), or t kept and r = min(t, r)."""
    if order == "sort":
        return jnp.maximum(t, r), jnp.minimum(t, r)
    if order == "clamp_r":
        return t, jnp.minimum(t, r)
    raise ValueError(f"unknown time order {order!r}; known: {', '.join(ORDERS)}")


def first_rows(n: int, count: int) -> np.ndarray:
    """Static bool mask [n] of the first `count` rows (the r = t rows of MeanFlow's, iMF's and
    alpha-Flow's code: a fixed number per batch, the batch order being random)."""
    return np.arange(n) < count


def power_law(rng: jax.Array, n: int, high: float, beta: float) -> jax.Array:
    """Draws on [1, high] with density proportional to w^-beta, by the inverse CDF (iMF's CFG scale:
    beta = 1 gives w = high^U)."""
    u = jax.random.uniform(rng, (n,))
    if high == 1.0:
        return jnp.ones((n,), u.dtype)
    if beta == 1.0:
        return jnp.exp(u * math.log(high))
    base = high ** (1.0 - beta) - 1.0
    return (1.0 + u * base) ** (1.0 / (1.0 - beta))


def sigmoid_curriculum(step: jax.Array, start: int, end: int, mid: float | None = None, gamma: float = 25.0,
                       snap: float = 0.005) -> jax.Array:  # fmt: skip
    """alpha-Flow's alpha(k): 1 before `start`, 0 after `end`, 1 - sigmoid(gamma (k - mid) / (end -
    start)) between (mid: the midpoint by default); values below `snap` become 0 and above
    1 - snap become 1 (the official code's clamp_value). Returns float32 []."""
    k = jnp.asarray(step, jnp.float32)
    if end <= start:
        inside = jnp.where(k < start, 1.0, 0.0)
    else:
        mid = 0.5 * (start + end) if mid is None else mid
        inside = 1.0 - jax.nn.sigmoid(gamma * (k - mid) / (end - start))
        inside = jnp.where(k < start, 1.0, jnp.where(k > end, 0.0, inside))
    return jnp.where(inside < snap, 0.0, jnp.where(inside > 1.0 - snap, 1.0, inside)).astype(jnp.float32)


def linear_warmup(step: jax.Array, length: int, end: float) -> jax.Array:
    """end * min(1, k / length) (end at once when length = 0). float32 []."""
    if length <= 0:
        return jnp.asarray(end, jnp.float32)
    return end * jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / length)


# ---------------------------------------------------------------------------
# Sampling


def check_times(times: Sequence[float], where: str) -> np.ndarray:
    """A schedule as float64: at least 2 times, from exactly 1 down to exactly 0, strictly decreasing."""
    arr = np.asarray(tuple(times), np.float64)
    if arr.ndim != 1 or arr.size < 2:
        raise ValueError(f"{where} needs at least two times (1, ..., 0), got {tuple(times)}")
    if arr[0] != 1.0 or arr[-1] != 0.0 or np.any(np.diff(arr) >= 0):
        raise ValueError(f"{where} must decrease strictly from 1 to 0 (t = 1 noise, t = 0 data), got {tuple(times)}")
    return arr


def times(kind: str, num_steps: int, *, custom: Sequence[float] = (), shift: float = 1.0,
          where: str = "sampling") -> np.ndarray:  # fmt: skip
    """The schedule [t_0 = 1, ..., t_k = 0] (float64, k + 1 entries) for k = num_steps.

    uniform: t_i = 1 - i / k (2 steps: [1, 0.5, 0], never silently 1 step). custom: `custom`
    itself (checked), which must have k + 1 entries. shifted: the uniform times through
    t -> s t / (1 + (s - 1) t) (DMF; SD3's time shift). dyadic: uniform, for k a power of two
    only (shortcut models).
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ValueError(f"{where}: the number of steps must be an int >= 1, got {num_steps!r}")
    if kind not in SCHEDULES:
        raise ValueError(f"{where}: unknown schedule {kind!r}; known: {', '.join(SCHEDULES)}")
    uniform = 1.0 - np.arange(num_steps + 1, dtype=np.float64) / num_steps
    if kind == "uniform":
        return uniform
    if kind == "custom":
        arr = check_times(custom, f"{where}: the custom schedule")
        if arr.size != num_steps + 1:
            raise ValueError(f"{where}: a {num_steps}-step sample needs a schedule of {num_steps + 1} times, "
                             f"got {arr.size}")  # fmt: skip
        return arr
    if kind == "shifted":
        if not shift > 0:
            raise ValueError(f"{where}: the time shift must be positive, got {shift}")
        return shift * uniform / (1.0 + (shift - 1.0) * uniform)
    if num_steps & (num_steps - 1):
        raise ValueError(f"{where}: the dyadic schedule needs a power-of-two number of steps, got {num_steps}")
    return uniform


def gamma_plan(grid: np.ndarray, gamma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(jump targets t'_i, scales a_i, noise stds b_i) of gamma-sampling on a schedule (AYF sec. 4,
    in sigma = t / (1 - t) space): from t_i the map jumps to t'_i with sigma' = sqrt(1 - gamma^2)
    sigma_{i+1}, then z_{i+1} = a_i z' + b_i e_i with a_i = (1 - t_{i+1}) / (1 - t'_i) and
    b_i = sqrt(t_{i+1}^2 - a_i^2 t'_i^2), which keeps the marginal at t_{i+1} exactly. gamma = 0:
    t' = t_{i+1}, a = 1, b = 0 (deterministic composition); gamma = 1: t' = 0, a = 1 - t_{i+1},
    b = t_{i+1} (restart: jump to the data estimate, re-noise; consistency sampling). float64."""
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1] (0: deterministic, 1: restart), got {gamma}")
    nxt = np.asarray(grid[1:], np.float64)
    sigma = nxt / (1.0 - nxt)
    sigma_jump = np.sqrt(1.0 - gamma**2) * sigma
    jump = sigma_jump / (1.0 + sigma_jump)
    a = (1.0 - nxt) / (1.0 - jump)
    b = np.sqrt(np.maximum(nxt**2 - a**2 * jump**2, 0.0))
    return jump, a, b


def sample(u_fn: UFn, z: jax.Array, grid: np.ndarray, *, gamma: float = 0.0, rng: jax.Array | None = None):
    """Flow-map sampling from z at t = grid[0] = 1 down to grid[-1] = 0, one u_fn call per step.

    gamma = 0: z <- z - (t_i - t_{i+1}) u(z, t_i, t_{i+1}) (MeanFlow eq. 12; shortcut; DMF's Euler).
    gamma > 0: gamma-sampling (gamma_plan) with fresh noise fold_in(rng, i) at every step but the last.
    u_fn(z [B, ...], t [B], r [B]) -> u. Returns z at t = 0 in samplers.carry_dtype(z).
    """
    grid = np.asarray(grid, np.float64)
    steps = grid.size - 1
    n = z.shape[0]
    t_grid = jnp.asarray(grid, jnp.float32)
    if gamma == 0.0:

        def step(i, z):
            t = jnp.full((n,), t_grid[i], jnp.float32)
            r = jnp.full((n,), t_grid[i + 1], jnp.float32)
            return z - bcast(t - r, z) * u_fn(z, t, r)

        return samplers.sampling_loop(0, steps, step, z)
    if rng is None:
        raise ValueError("gamma-sampling (gamma > 0) needs a random key for the re-noising")
    jump, a, b = (jnp.asarray(v, jnp.float32) for v in gamma_plan(grid, gamma))

    def noisy_step(i, z):
        t = jnp.full((n,), t_grid[i], jnp.float32)
        r = jnp.full((n,), jump[i], jnp.float32)
        z_jump = z - bcast(t - r, z) * u_fn(z, t, r)
        e = jax.random.normal(jax.random.fold_in(rng, i), z.shape, jnp.float32)
        return a[i] * z_jump + b[i] * e

    return samplers.sampling_loop(0, steps, noisy_step, z)


class FlowMapMethod(JumpMethod):
    """A method sampled by `sample`: one flow-map jump per step, on the uniform schedule or the
    config's `sample_schedule` (used for its own step count), deterministic or with the config's
    `sample_gamma`. Subclasses define flow_map(net_params, z, t, r, y) -> u."""

    supported_steps = None
    default_steps = (1, 2, 4)
    time_convention = "flow map t in [0, 1]; t = 0 data, t = 1 noise"
    #: Why `sample` takes no guidance scale (the second half of its error message).
    no_guidance_because: ClassVar[str] = "guidance is folded into training"

    def flow_map(self, net_params, z, t, r, y=None, **kwargs):
        raise NotImplementedError

    def nfe(self, num_steps, sampler):
        nfe = super().nfe(num_steps, sampler)
        self.check_steps(num_steps)
        return nfe

    def sample_times(self, num_steps: int) -> np.ndarray:
        """[1, ..., 0] (k + 1 times): method.sample_schedule when it has k + 1 entries, else uniform."""
        self.check_steps(num_steps)
        custom = getattr(self.cfg, "sample_schedule", ())
        if len(custom) == num_steps + 1:
            return times("custom", num_steps, custom=custom, where=self.name)
        return times("uniform", num_steps, where=self.name)

    def sample(self, params, rng, *, num_samples, labels=None, num_steps, sampler="euler", guidance=1.0):
        """z_1 ~ N(0, I), then one flow-map jump per step over sample_times(k) (gamma-sampling with
        method.sample_gamma > 0); no guidance scale at sampling time."""
        grid = self.sample_times(num_steps)
        self.check_sampler(sampler)
        if guidance != 1.0:
            raise ValueError(
                f"{self.name}: no classifier-free guidance at sampling time (got guidance={guidance}); "
                f"{self.no_guidance_because}"
            )
        y = self.sample_labels(num_samples, labels)
        k_z, k_noise = jax.random.split(rng)
        z = jax.random.normal(k_z, (num_samples, *self.info.shape), jnp.float32)

        def u_fn(z, t, r):
            return self.flow_map(params["net"], z, t, r, y)

        return sample(u_fn, z, grid, gamma=getattr(self.cfg, "sample_gamma", 0.0), rng=k_noise)
