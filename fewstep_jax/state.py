"""The training state pytree and its EMA / non-finite-guard updates."""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from fewstep_jax.config_lib import TrainConfig

#: Codes stored in TrainState.nonfinite[1]: which quantity went non-finite first.
NONFINITE_QUANTITIES = {1: "loss", 2: "gradient norm"}


@flax.struct.dataclass
class TrainState:
    """Everything a checkpoint needs to continue training exactly.

    step:      int32 scalar, number of optimizer steps taken.
    params:    trainable parameters ({'net': ..., plus method extras}).
    ema:       {name: EMA of params} for each configured EMA.
    opt_state: optax state.
    extra:     the method's non-trainable state (methods/base.py: init_extra / update_extra),
               e.g. SCT's reference bank; {} for most methods.
    nonfinite: int32 [2] = (step, quantity code) of the first step whose loss or
               gradient norm was not finite; (-1, 0) while training is healthy.
               From that step on, updates are skipped, so the state stays the last
               good one and the host can stop with a precise message.
    """

    step: jax.Array
    params: Any
    ema: dict[str, Any]
    opt_state: Any
    nonfinite: jax.Array
    extra: dict[str, Any]


def ema_decays(train: TrainConfig) -> dict[str, float]:
    """Per-step decay of every configured EMA, by name.

    Half-lives are given in images, as in EDM (Karras et al. 2022, App. F.1):
    decay = 0.5 ** (batch_size / half_life).
    """
    decays: dict[str, float] = {}
    for d in train.ema_decays:
        decays[f"ema_{d:g}"] = float(d)
    for h in train.ema_halflives:
        decays[f"ema_hl{h:g}"] = float(0.5 ** (train.batch_size / h))
    return decays


def create(
    params: Any, tx: optax.GradientTransformation, decays: dict[str, float], extra: dict[str, Any] | None = None
) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        ema={name: params for name in decays},
        opt_state=tx.init(params),
        nonfinite=jnp.array([-1, 0], jnp.int32),
        extra={} if extra is None else extra,
    )


def apply_gradients(
    state: TrainState,
    grads: Any,
    loss: jax.Array,
    tx: optax.GradientTransformation,
    decays: dict[str, float],
    update_extra: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]] | None = None,
) -> tuple[TrainState, jax.Array]:
    """One optimizer + EMA update, skipped (state kept) if loss or grads are non-finite.

    update_extra(extra, ema) -> extra advances the method's state given the new EMAs; it
    is skipped alike. Returns the new state and the global gradient norm (before clipping).
    """
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = {
        name: jax.tree.map(lambda e, p, d=d: d * e + (1.0 - d) * p, state.ema[name], params)
        for name, d in decays.items()
    }
    extra = state.extra if update_extra is None else update_extra(state.extra, ema)
    code = jnp.where(~jnp.isfinite(loss), 1, jnp.where(~jnp.isfinite(grad_norm), 2, 0))
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
