"""Optimizers and learning-rate schedules from the `optim` config section."""

from __future__ import annotations

import jax.numpy as jnp
import optax

from fewstep_jax.config_lib import OptimConfig


def learning_rate(cfg: OptimConfig, num_steps: int) -> optax.Schedule:
    """Linear warmup over `warmup_steps`, then the configured schedule.

    constant:     lr
    cosine:       cosine decay from lr to end_factor * lr at num_steps
    linear:       linear decay from lr to end_factor * lr at num_steps
    inverse_sqrt: lr / sqrt(max(step / decay_steps, 1))   (EDM2, Karras et al. 2024, eq. 16)
    """
    lr, warm = cfg.lr, cfg.warmup_steps
    decay_len = max(num_steps - warm, 1)

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        s = jnp.maximum(step - warm, 0.0)
        if cfg.schedule == "constant":
            value = jnp.asarray(lr, jnp.float32)
        elif cfg.schedule == "cosine":
            frac = jnp.minimum(s / decay_len, 1.0)
            value = lr * (cfg.end_factor + (1 - cfg.end_factor) * 0.5 * (1 + jnp.cos(jnp.pi * frac)))
        elif cfg.schedule == "linear":
            frac = jnp.minimum(s / decay_len, 1.0)
            value = lr * (1.0 - (1.0 - cfg.end_factor) * frac)
        elif cfg.schedule == "inverse_sqrt":
            value = lr / jnp.sqrt(jnp.maximum(step / cfg.decay_steps, 1.0))
        else:
            raise ValueError(f"unknown schedule {cfg.schedule!r}")
        if warm > 0:
            value = value * jnp.minimum((step + 1.0) / warm, 1.0)
        return value

    return schedule


def build(cfg: OptimConfig, num_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optax chain (optional global-norm clipping, then the optimizer) and its schedule."""
    schedule = learning_rate(cfg, num_steps)
    if cfg.weight_decay and cfg.name != "adamw":
        raise ValueError(f"optim.weight_decay is only supported with adamw (got optimizer {cfg.name!r})")
    if cfg.name == "adam":
        opt = optax.adam(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    elif cfg.name == "adamw":
        opt = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
    elif cfg.name == "radam":
        opt = optax.radam(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    else:
        raise ValueError(f"unknown optimizer {cfg.name!r}")
    if cfg.grad_clip > 0:
        opt = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), opt)
    return opt, schedule
