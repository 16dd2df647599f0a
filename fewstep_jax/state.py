"""The training state pytree and its EMA / non-finite-guard updates."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fewstep_jax.config_lib import TrainConfig

#: Codes stored in TrainState.nonfinite[1]: which quantity went non-finite first.
NONFINITE_QUANTITIES = {1: "loss", 2: "gradient norm", 3: "parameter update"}


@flax.struct.dataclass
class TrainState:
    """Everything a checkpoint needs to continue training exactly.

    step:      int32 scalar, number of optimizer steps taken.
    params:    trainable parameters ({'net': ..., plus method extras}).
    ema:       {name: EMA of params} for each configured EMA.
    opt_state: optax state.
    extra:     the method's non-trainable state (methods/base.py: init_extra / update_extra),
               e.g. SCT's reference bank; {} for most methods.
    nonfinite: int32 [2] = (step, quantity code) of the first step whose loss, gradient
               norm or updated parameters were not finite; (-1, 0) while training is healthy.
               From that step on, updates are skipped, so the state stays the last
               good one and the host can stop with a precise message.
    """

    step: jax.Array
    params: Any
    ema: dict[str, Any]
    opt_state: Any
    nonfinite: jax.Array
    extra: dict[str, Any]


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """Exponent gamma of the power-function EMA profile with relative standard deviation
    sigma_rel (EDM2, Karras et al. 2024, sec. 3.1, eq. 126 / Alg. 2): the largest real root of
        gamma^3 + 7 gamma^2 + (16 - sigma_rel^-2) gamma + (12 - sigma_rel^-2) = 0,
    i.e. of sigma_rel^2 = (gamma + 1) / ((gamma + 2)^2 (gamma + 3)). Host-side, float64."""
    if not 0.0 < sigma_rel < gamma_to_sigma_rel(0.0):
        raise ValueError(f"sigma_rel must be in (0, {gamma_to_sigma_rel(0.0):.4f}) (gamma > 0), got {sigma_rel}")
    inv = float(sigma_rel) ** -2
    roots = np.roots([1.0, 7.0, 16.0 - inv, 12.0 - inv])
    return float(np.max(roots[np.abs(roots.imag) < 1e-9].real))


def gamma_to_sigma_rel(gamma: float) -> float:
    """sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3))) (EDM2 eq. 123): the standard
    deviation of the profile t^gamma on [0, 1], relative to its length."""
    g = float(gamma)
    return math.sqrt((g + 1.0) / ((g + 2.0) ** 2 * (g + 3.0)))


@dataclasses.dataclass(frozen=True)
class PowerEMA:
    """EDM2's power-function EMA (Karras et al. 2024, sec. 3.1, eq. 127): after update t (1-based)
    the EMA decays by beta_t = (1 - 1/t)^(gamma + 1). Unrolled, the EMA after T updates is
    sum_t w_t theta_t with w_t = (t^(gamma+1) - (t-1)^(gamma+1)) / T^(gamma+1) = integral of the
    profile (gamma + 1) s^gamma / T^(gamma+1) over [t - 1, t]: the weights of t^gamma, normalized,
    exact for every T (no bias from the initial value: beta_1 = 0)."""

    gamma: float

    def weights(self, step: jax.Array, dtype: Any) -> tuple[jax.Array, jax.Array]:
        """(beta_t, 1 - beta_t) for the update that ends optimizer step `step` (0-based), i.e.
        t = step + 1; 1 - beta is computed as -expm1 so that it stays accurate when beta ~ 1."""
        t = (step + 1).astype(dtype)
        log_beta = (self.gamma + 1.0) * jnp.log1p(-1.0 / t)
        return jnp.exp(log_beta), -jnp.expm1(log_beta)


#: A configured EMA: a constant per-step decay, or a step-dependent power-function profile.
EMADecay = float | PowerEMA


def ema_decays(train: TrainConfig) -> dict[str, EMADecay]:
    """Every configured EMA, by name, in config order: constant decays (`ema_<d>`), half-lives
    (`ema_hl<images>`), then EDM2 power-function EMAs (`ema_sr<sigma_rel>`, PowerEMA).

    Half-lives are given in images, as in EDM (Karras et al. 2022, App. F.1):
    decay = 0.5 ** (batch_size / half_life).
    """
    decays: dict[str, EMADecay] = {}
    for d in train.ema_decays:
        decays[f"ema_{d:g}"] = float(d)
    for h in train.ema_halflives:
        decays[f"ema_hl{h:g}"] = float(0.5 ** (train.batch_size / h))
    for sr in train.ema_sigma_rels:
        decays[f"ema_sr{sr:g}"] = PowerEMA(sigma_rel_to_gamma(sr))
    return decays


def ema_weights(decay: EMADecay, step: jax.Array) -> tuple[Any, Any]:
    """(weight of the old EMA, weight of the new params) for optimizer step `step` (0-based)."""
    if isinstance(decay, PowerEMA):
        return decay.weights(step, jnp.result_type(float))
    return decay, 1.0 - decay


def create(
    params: Any, tx: optax.GradientTransformation, decays: dict[str, EMADecay], extra: dict[str, Any] | None = None
) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        ema={name: params for name in decays},
        opt_state=tx.init(params),
        nonfinite=jnp.array([-1, 0], jnp.int32),
        extra={} if extra is None else extra,
    )


def replace_nonfinite(grads: Any) -> tuple[Any, jax.Array]:
    """(grads with NaN -> 0, +inf -> 1e5, -inf -> -1e5, number of entries replaced): what the EDM
    and ECT training loops do to every gradient before the optimizer step
    (torch.nan_to_num(grad, nan=0, posinf=1e5, neginf=-1e5))."""
    count = sum(jnp.sum(~jnp.isfinite(g)) for g in jax.tree.leaves(grads))
    fixed = jax.tree.map(lambda g: jnp.nan_to_num(g, nan=0.0, posinf=1e5, neginf=-1e5), grads)
    return fixed, jnp.asarray(count, jnp.int32)


def all_finite(tree: Any) -> jax.Array:
    """Whether every entry of every leaf of `tree` is finite (a scalar bool).

    Computed as sqrt(number of non-finite entries) == 0, the count summed over leaves in
    float32 (a sum of non-negative counts is 0 exactly when each is). The square root changes
    nothing but what XLA does with it: a scalar made only of cheap operations (a chain of `and`s
    over the per-leaf flags) is copied into every fusion that reads it, and the update of each
    of the ~1,000 parameter, EMA and optimizer leaves reads this one, which made the optimized
    program quadratic in the number of leaves (several minutes of compilation and over 10 GB of
    compiler memory for a 60M-parameter UNet on a CPU); XLA never duplicates a square root, so
    the flag is computed once.
    """
    bad = sum((jnp.sum(~jnp.isfinite(leaf), dtype=jnp.float32) for leaf in jax.tree.leaves(tree)), jnp.zeros(()))
    return jnp.sqrt(bad) == 0


def apply_gradients(
    state: TrainState,
    grads: Any,
    loss: jax.Array,
    tx: optax.GradientTransformation,
    decays: dict[str, EMADecay],
    update_extra: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]] | None = None,
    project: Callable[[Any], Any] | None = None,
    check_loss: bool = True,
) -> tuple[TrainState, jax.Array]:
    """One optimizer + EMA update, skipped (state kept) if the loss (when check_loss), the
    gradients or the updated parameters are non-finite. The last check catches a step whose loss
    and gradients are fine but whose update is not (a NaN learning rate, a projection dividing
    by zero), so no such parameters ever reach the state, nor a checkpoint of it.

    update_extra(extra, ema) -> extra advances the method's state given the new EMAs; it
    is skipped alike. project(params) -> params is applied to the updated parameters before
    the EMAs see them (EDM2's forced weight normalization, sec. 2.3: a projection after the
    optimizer step, never part of the loss). Returns the new state and the global gradient
    norm (before clipping).
    """
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if project is not None:
        params = project(params)

    def average(old, new, decay):
        keep, take = ema_weights(decay, state.step)
        return jax.tree.map(lambda e, p: (keep * e + take * p).astype(e.dtype), old, new)

    ema = {name: average(state.ema[name], params, d) for name, d in decays.items()}
    extra = state.extra if update_extra is None else update_extra(state.extra, ema)
    params_finite = all_finite(params)
    loss_bad = ~jnp.isfinite(loss) if check_loss else jnp.zeros((), bool)
    code = jnp.where(loss_bad, 1, jnp.where(~jnp.isfinite(grad_norm), 2, jnp.where(params_finite, 0, 3)))
    healthy = (code == 0) & (state.nonfinite[0] < 0)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(healthy, n, o), new, old)  # noqa: E731
    first_bad = (code != 0) & (state.nonfinite[0] < 0)
    nonfinite = jnp.where(first_bad, jnp.stack([state.step, code]).astype(jnp.int32), state.nonfinite)
    new_state = TrainState(
        step=state.step + 1,
        params=keep(params, state.params),
        ema=keep(ema, state.ema),
        opt_state=keep(opt_state, state.opt_state),
        nonfinite=nonfinite,
        extra=keep(extra, state.extra),
    )
    return new_state, grad_norm
