"""Shortcut models (Frans, Hafner, Levine, Abbeel 2024, "One Step Diffusion via Shortcut Models").

Time convention (as the paper and its official code): t in [0, 1], t = 0 noise, t = 1 data,
  x_t = (1 - (1 - eps) t) x0 + t x1,  x0 ~ N(0, I) noise, x1 data, eps = 1e-5,
  flow target v = x1 - (1 - eps) x0.
One network s(x_t, t, k) predicts the velocity for a step of size dt = 2^-k; the step size enters
through the network's `d` input (its own sinusoidal embedding), t enters raw. Where paper and
code differ, the config selects: `d_input='level'` feeds k = log2(1/dt) (official code) or
'step_size' feeds dt (paper's notation), and `flow_level_d='finest'` conditions the flow level
on dt = 1/M (code) or 'zero' on d = 0 (paper; needs d_input='step_size').

Training batch = flow rows + bootstrap rows, on disjoint images with independent keys:
- flow rows (sec. 3): t on the grid i / M, target v, at the finest level k = log2(M)
  (the code's choice; the paper writes d = 0); labels dropped to the null class with
  probability `label_dropout` (for CFG).
- bootstrap rows (sec. 3, eq. 5): levels k = log2(M) - 1, ..., 0 spread evenly over the rows
  (leftover rows get k = 0, dt = 1), t on the grid of multiples of dt, and the
  self-consistency target from two half steps of the EMA network at level k + 1:
      v1 = s(x_t, t, k+1); x_mid = clip(x_t + dt/2 v1, -4, 4); v2 = s(x_mid, t + dt/2, k+1)
      target = SG(clip((v1 + v2) / 2, -4, 4))          (clipping as in the official code)
  written for one row (bootstrap_target) and mapped over the rows with jax.vmap, so all levels
  go through ONE batched network call per half step (no Python loop over levels).
  With CFG (w != 1), only the half steps at the flow level (k + 1 = log2(M)) are guided,
  v = v_u + w (v_c - v_u); coarser levels inherit guidance through the recursion.
Loss: per-sample mean squared error, averaged over all rows (flow and bootstrap alike).
Sampling with N in {1, 2, 4, ..., M} steps: x ~ N(0, I), x <- x + s(x, i/N, log2 N) / N, i.e. the
flow-map sampler of methods/flowmap.py on the dyadic schedule with u = -s (average_velocity); CFG
only at N = M (the flow level), where the model was trained with unguided targets. An evaluation
with eval.guidance = w over several step counts (e.g. 1, 4, 128) samples N = M with w and every
coarser N with 1 (sampling_guidance), and records the scale of each row.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from fewstep_jax.methods import flowmap
from fewstep_jax.methods.base import JumpMethod, LossInputs, bcast, per_example_mean, register

EPS = 1e-5


@register("shortcut")
class Shortcut(JumpMethod):
    title = "shortcut"
    many_steps = True  # one network for every power-of-two step count up to its flow level
    step_cost_target = 1.25
    jump = "each step is one jump of its own step size"
    time_convention = "shortcut t in [0, 1]; t = 0 noise, t = 1 data"
    parameterization = "shortcut"

    @dataclasses.dataclass(frozen=True)
    class Config:
        num_steps_max: int = 128  # M: the finest step is 1/M
        bootstrap_every: int = 4  # 1/4 of the batch bootstraps (paper); the code's default is 8
        label_dropout: float = 0.1  # flow rows only
        # Guidance baked into the finest bootstrap level (ImageNet: 1.5). Sampling-time guidance
        # (eval.guidance) applies at num_steps_max steps only; evaluations use 1 below it.
        cfg_scale: float = 1.0
        target_clip: float = 4.0  # the official code's clipping of x_mid and the target
        d_input: str = "level"  # 'level' (k = log2 1/dt, code) or 'step_size' (dt, paper)
        flow_level_d: str = "finest"  # flow level conditioned on dt = 1/M (code) or 'zero' (paper)

    def check(self) -> None:
        c = self.cfg
        if c.num_steps_max < 2 or c.num_steps_max & (c.num_steps_max - 1):
            raise ValueError(f"shortcut: num_steps_max must be a power of two >= 2, got {c.num_steps_max}")
        if c.bootstrap_every < 2:
            raise ValueError(f"shortcut: bootstrap_every must be >= 2, got {c.bootstrap_every}")
        if not 0.0 <= c.label_dropout < 1.0:
            raise ValueError(f"shortcut: label_dropout must be in [0, 1), got {c.label_dropout}")
        if c.cfg_scale != 1.0 and not self.conditional:
            raise ValueError("shortcut: cfg_scale != 1 needs class-conditional data")
        if c.d_input not in ("level", "step_size"):
            raise ValueError(f"shortcut: d_input must be 'level' or 'step_size', got {c.d_input!r}")
        if c.flow_level_d not in ("finest", "zero"):
            raise ValueError(f"shortcut: flow_level_d must be 'finest' or 'zero', got {c.flow_level_d!r}")
        if c.flow_level_d == "zero" and c.d_input != "step_size":
            raise ValueError("shortcut: flow_level_d='zero' (the paper's d = 0) needs d_input='step_size'")
        if not getattr(self.net, "use_d", False):
            raise ValueError("shortcut: the network must take the step-size level: set model.use_d=True")

    @property
    def finest_level(self) -> int:
        return int(math.log2(self.cfg.num_steps_max))

    @property
    def supported_steps(self) -> tuple[int, ...]:  # type: ignore[override]
        return tuple(2**i for i in range(self.finest_level + 1))

    @property
    def default_steps(self) -> tuple[int, ...]:  # type: ignore[override]
        return self.supported_steps

    # -- training targets ----------------------------------------------------
    def bootstrap_levels(self, num_rows: int) -> np.ndarray:
        """Levels k of the bootstrap rows: finest_level - 1 .. 0 evenly, leftovers at k = 0. int32 [R]."""
        n_levels = self.finest_level
        per_level = num_rows // n_levels
        if per_level == 0:
            raise ValueError(
                f"shortcut: {num_rows} bootstrap rows cannot cover the {n_levels} step-size levels; use a batch of "
                f"at least {n_levels * self.cfg.bootstrap_every} (bootstrap_every={self.cfg.bootstrap_every})"
            )
        levels = np.repeat(np.arange(n_levels - 1, -1, -1), per_level)
        return np.concatenate([levels, np.zeros(num_rows - len(levels), np.int64)]).astype(np.int32)

    def split_rows(self, batch_size: int) -> tuple[int, int]:
        """(bootstrap rows, flow rows) of a batch."""
        n_boot = batch_size // self.cfg.bootstrap_every
        return n_boot, batch_size - n_boot

    def d_value(self, k: jax.Array) -> jax.Array:
        """The network's `d` input for level k (dt = 2^-k): k, dt, or 0 at the flow level."""
        k = jnp.asarray(k, jnp.float32)
        if self.cfg.d_input == "level":
            return k
        dt = jnp.exp2(-k)
        if self.cfg.flow_level_d == "zero":
            dt = jnp.where(k == self.finest_level, 0.0, dt)
        return dt

    def velocity(self, net_params, x, t, k, y, guidance_mask=None):
        """s(x, t, k) (eval mode); with guidance_mask, rows where it is True get CFG (cfg_scale)."""
        d = self.d_value(k)
        if guidance_mask is None or self.cfg.cfg_scale == 1.0 or not self.conditional:
            return self.apply_net(net_params, x, t, y, d)
        cond, uncond = self.cond_and_null(partial(self.apply_net, net_params), x, t, y, d)
        guided = uncond + self.cfg.cfg_scale * (cond - uncond)
        return jnp.where(bcast(guidance_mask, x), guided, cond)

    def bootstrap_target(self, ema_net, x_t, t, k, y=None):
        """The self-consistency target of ONE row (shortcut eq. 5): two half steps of the EMA network
        at level k + 1 (its step size dt / 2 = 2^-(k+1)), guided at the flow level only.

        x_t [...] (one example), t [] float, k [] int32, y [] int or None.
        Returns SG(clip((v1 + v2) / 2)) [...].
        """
        clip = self.cfg.target_clip
        half = jnp.exp2(-(k + 1).astype(jnp.float32))  # dt / 2
        k_half = (k + 1)[None]
        guide = k_half == self.finest_level  # CFG only where the half steps are flow-level calls
        y_row = None if y is None else y[None]

        def half_step_velocity(x, tt):
            return self.velocity(ema_net, x[None], tt[None], k_half, y_row, guide)[0]

        v1 = half_step_velocity(x_t, t)
        x_mid = jnp.clip(x_t + half * v1, -clip, clip)
        v2 = half_step_velocity(x_mid, t + half)
        return jax.lax.stop_gradient(jnp.clip((v1 + v2) / 2, -clip, clip))

    def bootstrap_targets(self, ema_net, x_t, t, k, y):
        """`bootstrap_target` mapped over the rows with jax.vmap: every level in one batched network
        call per half step (no Python loop over levels). x_t [R, ...], t [R], k int32 [R] (dt = 2^-k),
        y [R] or None."""
        target = partial(self.bootstrap_target, ema_net)
        if y is None:
            return jax.vmap(lambda x, tt, kk: target(x, tt, kk))(x_t, t, k)
        return jax.vmap(target)(x_t, t, k, y)

    def loss(self, params, batch, rng, step, inputs=LossInputs()):
        """Flow-matching rows + bootstrap rows (shortcut sec. 3, Alg. 1)."""
        x1, y = batch["x"], batch.get("y")
        n = x1.shape[0]
        n_boot, n_flow = self.split_rows(n)
        levels = jnp.asarray(self.bootstrap_levels(n_boot))
        k_flow, k_boot = jax.random.split(rng)  # independent streams for the two parts

        # Flow rows: the images after the bootstrap ones (disjoint).
        kf_t, kf_z, kf_lab, kf_drop = jax.random.split(k_flow, 4)
        x1_f, y_f = x1[n_boot:], None if y is None else y[n_boot:]
        m = self.cfg.num_steps_max
        t_f = jax.random.randint(kf_t, (n_flow,), 0, m).astype(jnp.float32) / m
        z_f = jax.random.normal(kf_z, x1_f.shape, x1_f.dtype)
        tb = bcast(t_f, x1_f)
        xt_f = (1 - (1 - EPS) * tb) * z_f + tb * x1_f
        v_f = x1_f - (1 - EPS) * z_f
        if y_f is not None:
            y_f = self.drop_labels(y_f, kf_lab, self.cfg.label_dropout)
        k_f = jnp.full((n_flow,), self.finest_level, jnp.int32)

        # Bootstrap rows: the first n_boot images, targets from the EMA network.
        kb_t, kb_z = jax.random.split(k_boot)
        x1_b, y_b = x1[:n_boot], None if y is None else y[:n_boot]
        grid = jnp.exp2(levels.astype(jnp.float32))  # 2^k steps of size dt = 2^-k
        t_b = jnp.floor(jax.random.uniform(kb_t, (n_boot,)) * grid) / grid
        z_b = jax.random.normal(kb_z, x1_b.shape, x1_b.dtype)
        tb = bcast(t_b, x1_b)
        xt_b = (1 - (1 - EPS) * tb) * z_b + tb * x1_b
        target_b = self.bootstrap_targets(inputs.ema_params["net"], xt_b, t_b, levels, y_b)

        x_all = jnp.concatenate([xt_b, xt_f])
        t_all = jnp.concatenate([t_b, t_f])
        d_all = self.d_value(jnp.concatenate([levels, k_f]))
        y_all = None if y is None else jnp.concatenate([y_b, y_f])
        target = jnp.concatenate([target_b, v_f])
        pred = self.apply_net(params["net"], x_all, t_all, y_all, d_all, train=True, dropout_rng=kf_drop)
        err = per_example_mean((pred - target) ** 2)
        return jnp.mean(err), {
            "flow_mse": jnp.mean(err[n_boot:]),
            "bootstrap_mse": jnp.mean(err[:n_boot]),
        }

    # -- sampling ----------------------------------------------------------
    def check_steps(self, num_steps: int) -> None:
        if num_steps not in self.supported_steps:
            raise ValueError(
                f"shortcut samples with a power-of-two number of steps up to {self.cfg.num_steps_max}: "
                f"{self.supported_steps}; got {num_steps}"
            )

    def sampling_guidance(self, num_steps: int, guidance: float) -> float:
        """eval.guidance at the flow level (num_steps_max steps: the flow-matching rows, the
        paper's d = 0, trained with label dropout), 1 at every coarser step count, whose guidance
        is baked in by the bootstrap targets (cfg_scale; shortcut sec. 3, official code: CFG only
        in the half steps at the flow level, so sampling-time CFG only at 128 steps)."""
        return guidance if num_steps == self.cfg.num_steps_max else 1.0

    def sample(self, params, rng, *, num_samples, labels=None, num_steps, sampler="euler", guidance=1.0):
        """x ~ N(0, I); x <- x + s(x, i/N, log2 N) / N for i < N (shortcut sec. 3.2)."""
        self.check_steps(num_steps)
        self.check_sampler(sampler)
        if guidance != self.sampling_guidance(num_steps, guidance):
            raise ValueError(
                f"shortcut: guidance applies only at the flow level ({self.cfg.num_steps_max} steps); coarser levels "
                "have guidance baked in by training (method.cfg_scale). Evaluations sample them with guidance 1 "
                "(sampling_guidance)"
            )
        y = self.sample_labels(num_samples, labels)
        x = jax.random.normal(rng, (num_samples, *self.info.shape), jnp.float32)

        def u_fn(z, t, r):
            return self.average_velocity(params["net"], z, t, r, y, guidance)

        return flowmap.sample(u_fn, x, flowmap.times("dyadic", num_steps, where="shortcut"))

    def average_velocity(self, net_params, z, t, r, y=None, guidance=1.0):
        """The shortcut model as a flow map in the t = 1 noise convention of methods/flowmap.py:
        u(z, t, r) = -s(z, 1 - t, k) with k = log2(1 / (t - r)), so that z - (t - r) u is its step
        x + dt s(x, t', k) from data time t' = 1 - t. z [B, ...]; t, r [B], t - r a power of two."""
        k = jnp.round(-jnp.log2(t - r))
        return -self.guided(net_params, z, 1.0 - t, y, guidance, d=self.d_value(k))
