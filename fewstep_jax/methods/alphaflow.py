"""alpha-Flow (Zhang et al. 2025, "AlphaFlow: Understanding and Improving MeanFlow Models",
arXiv 2510.20771; official code snap-research/alphaflow, `src/training/loss.py` AlphaFlowLoss and
`infra/experiments/experiments-alphaflow.yaml`).

Time convention: the flow-map core's (methods/flowmap.py), t = 1 noise. The network is MeanFlow's,
u(z, t, r) = net(z, t, d = t - r) (DiT adaLN with c = E_t(t) + E_h(t - r) + E_y(y), raw times).

The alpha objective (paper eq. 8): with s = alpha r + (1 - alpha) t and z_s = z_t - (t - s) v~,
  L_alpha = E[ alpha^-1 || u(z_t, t, r) - (alpha v~ + (1 - alpha) u^-(z_s, s, r)) ||^2 ],
theta^- = sg of the CURRENT parameters (no EMA); v~ is the (guided) sample velocity. alpha = 1 is
flow matching with an r input, alpha = 1/2 with v~ = u^-(z_t, t, s) the shortcut target, and
alpha -> 0 MeanFlow (gradient-equivalent: the target becomes v~ - (t - r) D_t u^-).
The code's path (AlphaFlowLoss.forward), with one alpha per step:
  - the first int(B ratio_r_eq_t) rows have r = t; the others (t, r) = max, min of two
    logit-normal(-0.4, 1) draws;
  - rows with r = t, or every row once alpha = 0: u_tgt = v~ - (t - r) D_t u^- by one jvp;
  - 0 < alpha < 1: u_tgt = clip(alpha v~ + (1 - alpha) u^-(z_s, s, r), +-4); alpha = 1:
    u_tgt = clip(v~), without a network call;
  the three cases are the branches of ONE lax.switch on alpha (never both targets for every row);
  - l = mean over elements of (u - u_tgt)^2; weight (1 on r = t rows and at alpha = 0, alpha
    otherwise) / (sg(l) + 1e-3). The paper's alpha^-1 factor is not in the code (`inverse_alpha`).
The curriculum (sec. 4): alpha_k = 1 - sigmoid(gamma (k - k_mid) / (k_end - k_start)), 1 before
k_start and 0 after k_end, gamma = 25, snapped to 0 below 0.005 and to 1 above 0.995.
Guidance folded into training, inside (t_min, t_max) only (strict, as the code):
  v~ = omega v_hat + kappa u^-(z, t, t | c) + (1 - omega - kappa) u^-(z, t, t | null),
label dropout only inside the interval, where a dropped row's own target is self-guided (its
"conditional" term is the null one). theta^- targets run in eval mode.
Sampling: trajectory (the deterministic flow-map composition, z <- z - (t_i - t_{i+1}) u(z, t_i,
t_{i+1})) or consistency (x0 = z - t u(z, t, 0), re-noised to the next time: gamma = 1 of the core
sampler), on the uniform schedule or `sample_schedule` (XL/2 2-NFE: consistency on [1, 0.55, 0]).
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from fewstep_jax.methods import flowmap
from fewstep_jax.methods.base import LossInputs, bcast, register

ALPHA_SCHEDULES = ("sigmoid", "constant")


@register("alphaflow")
class AlphaFlow(flowmap.FlowMapMethod):
    """MeanFlow's network trained with the alpha objective under a sigmoid curriculum."""

    title = "alpha-Flow"
    parameterization = "meanflow"  # u(z, t, r) = net(z, t, d = t - r)
    jump = "each step is one average-velocity jump (trajectory) or a jump to t = 0 (consistency)"
    no_guidance_because = "it is folded into training (method.cfg_omega, method.cfg_kappa)"

    @dataclasses.dataclass(frozen=True)
    class Config:
        t_logit_mean: float = -0.4  # (t, r) = max, min of two logit-normal draws
        t_logit_std: float = 1.0
        r_logit_mean: float = -0.4
        r_logit_std: float = 1.0
        ratio_r_eq_t: float = 0.5  # the code's ratio_fm: the first int(B ratio) rows have r = t
        alpha_schedule: str = "sigmoid"  # or 'constant' (alpha_value at every step)
        alpha_start: int = 0  # k_init: alpha = 1 before
        alpha_end: int = 400_000  # k_end: alpha = 0 after (B/2 without CFG: the whole 400k run)
        alpha_mid: float = -1.0  # k_mid; < 0: the midpoint of [alpha_start, alpha_end]
        alpha_gamma: float = 25.0
        alpha_snap: float = 0.005  # the code's clamp_value
        alpha_value: float = 1.0  # the constant schedule's alpha
        target_clip: float = 4.0  # the code's clamp_utgt (discrete targets only)
        adaptive_c: float = 1e-3  # weight / (sg(l) + c), l a per-element mean
        alpha_weight: bool = True  # the code's weight alpha on discrete rows
        inverse_alpha: bool = False  # the paper's alpha^-1 factor (absent from the code)
        label_dropout: float = 0.0  # inside the guidance interval only (the code: 0.1 with CFG)
        cfg_omega: float = 1.0  # v~ = omega v_hat + kappa u(c) + (1 - omega - kappa) u(null)
        cfg_kappa: float = 0.0
        cfg_t_min: float = 0.0  # guidance where t_min < t < t_max
        cfg_t_max: float = 1.0
        sample_gamma: float = 0.0  # 0: trajectory sampling, 1: consistency sampling
        sample_schedule: tuple[float, ...] = ()  # for k = len - 1 steps; others uniform

    def check(self) -> None:
        c = self.cfg
        if c.t_logit_std <= 0 or c.r_logit_std <= 0:
            raise ValueError("alphaflow: t_logit_std and r_logit_std must be positive")
        if not 0.0 <= c.ratio_r_eq_t <= 1.0:
            raise ValueError(f"alphaflow: ratio_r_eq_t must be in [0, 1], got {c.ratio_r_eq_t}")
        if c.alpha_schedule not in ALPHA_SCHEDULES:
            raise ValueError(
                f"alphaflow: unknown alpha_schedule {c.alpha_schedule!r}; known: {', '.join(ALPHA_SCHEDULES)}"
            )
        if not 0.0 <= c.alpha_value <= 1.0:
            raise ValueError(f"alphaflow: alpha must be in [0, 1], got alpha_value={c.alpha_value}")
        if c.alpha_start < 0 or c.alpha_end < c.alpha_start:
            raise ValueError(f"alphaflow: need 0 <= alpha_start <= alpha_end, got {c.alpha_start}, {c.alpha_end}")
        if c.alpha_mid >= 0 and not c.alpha_start <= c.alpha_mid <= c.alpha_end:
            raise ValueError(f"alphaflow: alpha_mid={c.alpha_mid} is outside [alpha_start, alpha_end]")
        if c.alpha_gamma <= 0 or not 0.0 <= c.alpha_snap < 0.5:
            raise ValueError("alphaflow: need alpha_gamma > 0 and 0 <= alpha_snap < 0.5")
        if c.target_clip <= 0 or c.adaptive_c <= 0:
            raise ValueError("alphaflow: target_clip and adaptive_c must be positive")
        if not 0.0 <= c.label_dropout < 1.0:
            raise ValueError(f"alphaflow: label_dropout must be in [0, 1), got {c.label_dropout}")
        if not 0.0 <= c.cfg_t_min < c.cfg_t_max <= 1.0:
            raise ValueError(f"alphaflow: need 0 <= cfg_t_min < cfg_t_max <= 1, got [{c.cfg_t_min}, {c.cfg_t_max}]")
        if self.guided_training:
            if not self.conditional:
                raise ValueError(
                    "alphaflow: guidance (cfg_omega != 1 or cfg_kappa != 0) was asked of an unconditional model"
                )
            if c.label_dropout <= 0:
                raise ValueError(
                    "alphaflow: guidance in training needs the null label: set label_dropout > 0 (code: 0.1)"
                )
        if not 0.0 <= c.cfg_kappa < 1.0:
            raise ValueError(f"alphaflow: cfg_kappa must be in [0, 1), got {c.cfg_kappa}")
        if c.sample_schedule:
            flowmap.check_times(c.sample_schedule, "alphaflow: method.sample_schedule")
        flowmap.gamma_plan(flowmap.times("uniform", 1), c.sample_gamma)
        if not getattr(self.net, "use_d", False):
            raise ValueError("alphaflow: the network must take the interval h = t - r as `d`: set model.use_d=True")

    @property
    def guided_training(self) -> bool:
        return self.cfg.cfg_omega != 1.0 or self.cfg.cfg_kappa != 0.0

    # -- the model ---------------------------------------------------------
    def flow_map(self, net_params, z, t, r, y=None, *, train=False, dropout_rng=None):
        """u(z, t, r) = net(z, t, d = t - r | y). z [B, ...]; t, r [B]."""
        return self.apply_net(net_params, z, t, y, t - r, train=train, dropout_rng=dropout_rng)

    def alpha(self, step: jax.Array) -> jax.Array:
        """alpha at the 0-based optimizer step (the sigmoid curriculum, or the constant)."""
        c = self.cfg
        if c.alpha_schedule == "constant":
            return jnp.asarray(c.alpha_value, jnp.float32)
        mid = None if c.alpha_mid < 0 else c.alpha_mid
        return flowmap.sigmoid_curriculum(step, c.alpha_start, c.alpha_end, mid, c.alpha_gamma, c.alpha_snap)

    # -- training ----------------------------------------------------------
    def sample_t_r(self, rng, n: int) -> tuple[jax.Array, jax.Array]:
        c = self.cfg
        k_t, k_r = jax.random.split(rng)
        t, r = flowmap.ordered(
            flowmap.logit_normal(k_t, n, c.t_logit_mean, c.t_logit_std),
            flowmap.logit_normal(k_r, n, c.r_logit_mean, c.r_logit_std),
        )
        return t, jnp.where(flowmap.first_rows(n, int(n * c.ratio_r_eq_t)), t, r)

    def guided_velocity(self, frozen, z, t, v_hat, y_in, use):
        """v~ (folded guidance): omega v_hat + kappa u^-(z, t, t | y_in) + (1 - omega - kappa) u^-(z, t, t | null)
        on the rows of `use`, v_hat elsewhere. Dropped rows carry the null label in y_in."""
        c = self.cfg
        if not self.guided_training or y_in is None:
            return v_hat
        h0 = jnp.zeros_like(t)
        v_cond, v_null = self.cond_and_null(partial(self.apply_net, frozen), z, t, y_in, h0)
        return flowmap.folded_guidance(v_hat, v_cond, v_null, c.cfg_omega, c.cfg_kappa, use)

    def targets(self, frozen, z, t, r, v, y_in, alpha):
        """u_tgt [B, ...]: one lax.switch on alpha over (0: the jvp MeanFlow target for every row,
        (0, 1): the discrete alpha target, 1: clip(v~)); rows with r = t get v~ in the last two."""
        clip = self.cfg.target_clip
        same = bcast(r == t, v)

        def meanflow_target(_):
            def u_fn(z_, t_, r_):
                return self.flow_map(frozen, z_, t_, r_, y_in)

            _, du_dt = flowmap.total_derivative(u_fn, z, t, r, v)
            return flowmap.mf_target(v, t, r, du_dt)

        def discrete_target(_):
            s, z_s = flowmap.alpha_point(z, t, r, v, alpha)
            u_next = self.flow_map(frozen, z_s, s, r, y_in)
            target = jnp.clip(flowmap.alpha_target(v, u_next, alpha), -clip, clip)
            return jnp.where(same, v, target)

        def flow_matching_target(_):
            return jnp.where(same, v, jnp.clip(v, -clip, clip))

        index = jnp.where(alpha <= 0.0, 0, jnp.where(alpha >= 1.0, 2, 1))
        target = jax.lax.switch(index, (meanflow_target, discrete_target, flow_matching_target), None)
        return jax.lax.stop_gradient(target)

    def training_terms(self, params, batch, rng, step, *, train=True) -> dict[str, Any]:
        """Everything the loss is built from (keys: t, r, z_t, v_hat, v, y_in, dropped, alpha, u, u_tgt,
        row_weight). The key split of `rng` into (t/r, noise, label dropout, network dropout) is part
        of the contract."""
        c = self.cfg
        x, y = batch["x"], batch.get("y")
        n = x.shape[0]
        k_tr, k_e, k_lab, k_drop = jax.random.split(rng, 4)
        t, r = self.sample_t_r(k_tr, n)
        t, r = t.astype(x.dtype), r.astype(x.dtype)
        z, v_hat = flowmap.noisy(x, jax.random.normal(k_e, x.shape, x.dtype), t)
        inside = flowmap.in_interval(t, c.cfg_t_min, c.cfg_t_max, strict=True)
        if self.conditional and y is not None:
            coin = jax.random.bernoulli(k_lab, c.label_dropout, (n,)) if c.label_dropout > 0 else jnp.zeros(n, bool)
            dropped = coin & inside
            y_in = jnp.where(dropped, self.info.num_classes, jnp.asarray(y, jnp.int32))
        else:
            dropped, y_in = jnp.zeros((n,), bool), None
        frozen = jax.lax.stop_gradient(params["net"])
        v = self.guided_velocity(frozen, z, t, v_hat, y_in, inside)
        alpha = self.alpha(step).astype(x.dtype)
        u_tgt = self.targets(frozen, z, t, r, v, y_in, alpha)
        jvp_rows = (r == t) | (alpha <= 0.0)
        row_weight = jnp.where(jvp_rows, 1.0, alpha if c.alpha_weight else 1.0)
        if c.inverse_alpha:
            row_weight = jnp.where(jvp_rows, row_weight, row_weight / jnp.maximum(alpha, 1e-12))
        u = self.flow_map(params["net"], z, t, r, y_in, train=train, dropout_rng=k_drop)
        return dict(t=t, r=r, z_t=z, v_hat=v_hat, v=v, y_in=y_in, dropped=dropped, alpha=alpha, u=u, u_tgt=u_tgt,
                    row_weight=row_weight.astype(x.dtype))  # fmt: skip

    def loss(self, params, batch, rng, step, inputs=LossInputs()):
        """mean_b row_weight l / (sg(l) + c), l = mean over elements of (u - u_tgt)^2 (AlphaFlowLoss).

        Metrics: alpha, mse (unweighted) overall and on the r = t / r != t rows, and the
        trajectory flow-matching error ||u - v~||^2 (the code's trajectory_FM)."""
        c = self.cfg
        terms = self.training_terms(params, batch, rng, step, train=True)
        ell = flowmap.mean_sq(terms["u"] - terms["u_tgt"])
        loss = jnp.mean(terms["row_weight"] * flowmap.adaptive_weight(ell, c.adaptive_c) * ell)
        eq = terms["r"] == terms["t"]

        def masked_mean(values, mask):
            return jnp.sum(jnp.where(mask, values, 0.0)) / jnp.maximum(jnp.sum(mask), 1)

        return loss, {
            "alpha": terms["alpha"].astype(jnp.float32),
            "mse": jnp.mean(ell),
            "mse_r_eq_t": masked_mean(ell, eq),
            "mse_r_neq_t": masked_mean(ell, ~eq),
            "trajectory_fm": jnp.mean(flowmap.mean_sq(terms["u"] - terms["v"])),
        }
