"""MeanFlow (Geng, Deng, Bai, Kolter, He 2025, "Mean Flows for One-step Generative Modeling").

Time convention (the paper's, opposite to flow.py and shortcut.py): t in [0, 1], t = 0 data,
t = 1 noise,
  z_t = (1 - t) x + t e,  e ~ N(0, I),  v = dz_t/dt = e - x   (conditional velocity, eq. 11).
The network predicts the average velocity over [r, t] (eq. 3),
  u(z_t, r, t) = 1/(t - r) int_r^t v(z_tau, tau) dtau,
as u_theta(z, t, h = t - r, y): t enters as the network's time input and the interval h as its
second scalar input `d` (both raw, no 1000x), so the network needs model.use_d = True.

Training (eq. 6, 8, 9, 11; official JAX code):
  MeanFlow identity (eq. 6)   u(z_t, r, t) = v(z_t, t) - (t - r) du/dt
  total derivative (eq. 8)    du/dt = v . d_z u + d_t u
                              = jvp of (z, r, t) -> u_theta(z, t, t - r, y) with tangent (v_g, 0, 1)
  target (eq. 18)             u_tgt = SG(v_g - clip(t - r, 0, 1) du/dt)
  loss (eq. 9 + sec. 4.3)     l = sum over pixels (u - u_tgt)^2, loss = mean_b l / SG(l + c)^p
The primal output of the same jvp is the trainable u (one forward-mode pass, as the official
code); du/dt only enters the stop-gradient target, so no second-order terms are computed.

Guidance folded into training (sec. 4.2, eq. 13-19; App. B.1 for kappa), with the live network
in eval mode under stop-gradient, for rows with t in [t_start, t_end] whose label was kept:
  v_g = omega v + kappa u_theta(z_t, t, 0 | y) + (1 - omega - kappa) u_theta(z_t, t, 0 | null)
(effective scale omega / (1 - kappa)); elsewhere v_g = v. omega = 1, kappa = 0 is no guidance.
Rows whose label is dropped get the null label and v_g = v. Which rows (`label_dropout_policy`):
'first_rows' (default; the official JAX code's cond_drop) draws the count as the number of
Bernoulli(label_dropout) successes over the batch and drops the FIRST that many rows. The first
rows are the r = t rows (sample_t_r, as the JAX code's sample_tr), so the null label is trained at
h = 0 only, which is where guidance queries it (u(z_t, t, 0 | null)). 'independent' drops each row
with probability label_dropout wherever it is, so the null label also sees r != t.

(t, r) sampling (sec. 4.3): two draws from logit-normal (or uniform) distributions with their own
parameters, ordered by `tr_order`, then a fixed share `ratio_r_neq_t` of each batch keeps r != t
and the other rows get r = t (plain flow matching: u_tgt = v_g). The official codebases name
this knob with opposite meanings: the JAX code's `data_proportion` (0.75 on ImageNet) is the
share with r = t, the PyTorch CIFAR code's `ratio` (0.75) is the share with r != t; here it is
always the share with r != t (ImageNet 0.25, CIFAR 0.75).

Sampling (eq. 12): z_1 ~ N(0, I), then z_{t_{i+1}} = z_{t_i} - (t_i - t_{i+1}) u(z_{t_i}, t_i,
t_i - t_{i+1}) over an explicit schedule 1 = t_0 > ... > t_k = 0: `sample_schedule` for its own
step count, otherwise uniform t_i = 1 - i/k (2 steps: [1, 0.5, 0]). A k-step request always takes
exactly k network evaluations. No guidance at sampling time: it is folded into training.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, ClassVar, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fewstep_jax.methods import flowmap
from fewstep_jax.methods.base import JumpMethod, LossInputs, register

T_SAMPLING = ("logit_normal", "uniform")
TR_ORDERS = ("sort", "clamp_r")
LABEL_DROPOUT_POLICIES = ("first_rows", "independent")


@register("meanflow")
class MeanFlow(JumpMethod):
    """Average-velocity network trained with the MeanFlow identity; 1-step and k-step sampling."""

    title = "MeanFlow"
    step_cost_target = 1.25
    jump = "each step is one average-velocity jump, eq. 12"
    time_convention = "MeanFlow t in [0, 1]; t = 0 data, t = 1 noise"
    parameterization: ClassVar[str] = "meanflow"
    supported_steps = None
    default_steps = (1, 2, 4)

    @dataclasses.dataclass(frozen=True)
    class Config:
        # (t, r) proposal: t ~ sigmoid(N(t_logit_mean, t_logit_std^2)), r likewise with its own
        # parameters (or both U[0, 1] with t_sampling='uniform'). ImageNet (JAX code): both
        # (-0.4, 1.0). CIFAR-10 improved PyTorch recipe: t (-0.6, 1.6), r (-4.0, 1.6).
        t_sampling: str = "logit_normal"
        t_logit_mean: float = -0.4
        t_logit_std: float = 1.0
        r_logit_mean: float = -0.4
        r_logit_std: float = 1.0
        # 'sort': t, r = max, min of the two draws (JAX code; PyTorch 'v0', the paper's sec. 4.3).
        # 'clamp_r': keep t, r = min(t, r) (PyTorch 'v1', the improved CIFAR recipe).
        tr_order: str = "sort"
        # Share of each batch with r != t (the rest has r = t). NOT the JAX code's
        # `data_proportion`, which is the share with r = t: ImageNet 0.25 here = 0.75 there.
        ratio_r_neq_t: float = 0.25
        label_dropout: float = 0.1  # dropped rows: null label, target v, no guidance
        # Which rows lose their label: 'first_rows' (the official JAX code: the first rows, all
        # r = t) or 'independent' (each row with probability label_dropout). See dropped_rows.
        label_dropout_policy: str = "first_rows"
        # Guidance folded into training (sec. 4.2, App. B.1); (1, 0) = none.
        cfg_omega: float = 1.0
        cfg_kappa: float = 0.0
        cfg_t_start: float = 0.0  # guidance only where t_start <= t <= t_end
        cfg_t_end: float = 1.0
        # Adaptive loss weight w = 1 / SG(l + c)^p (sec. 4.3; the code's norm_p, norm_eps).
        adaptive_p: float = 1.0
        adaptive_c: float = 0.01
        # Explicit sampling schedule 1 = t_0 > ... > t_k = 0, used for k = len - 1 steps; every
        # other step count uses the uniform schedule. () = uniform for every k.
        sample_schedule: tuple[float, ...] = ()

    def check(self) -> None:
        c = self.cfg
        if c.t_sampling not in T_SAMPLING:
            raise ValueError(f"meanflow: unknown t_sampling {c.t_sampling!r}; known: {', '.join(T_SAMPLING)}")
        if c.t_logit_std <= 0 or c.r_logit_std <= 0:
            raise ValueError(
                f"meanflow: t_logit_std and r_logit_std must be positive, got {c.t_logit_std}, {c.r_logit_std}"
            )
        if c.tr_order not in TR_ORDERS:
            raise ValueError(f"meanflow: unknown tr_order {c.tr_order!r}; known: {', '.join(TR_ORDERS)}")
        if not 0.0 <= c.ratio_r_neq_t <= 1.0:
            raise ValueError(
                f"meanflow: ratio_r_neq_t (share of rows with r != t) must be in [0, 1], got {c.ratio_r_neq_t}"
            )
        if not 0.0 <= c.label_dropout < 1.0:
            raise ValueError(f"meanflow: label_dropout must be in [0, 1), got {c.label_dropout}")
        if c.label_dropout_policy not in LABEL_DROPOUT_POLICIES:
            raise ValueError(
                f"meanflow: unknown label_dropout_policy {c.label_dropout_policy!r}; "
                f"known: {', '.join(LABEL_DROPOUT_POLICIES)}"
            )
        if (
            self.conditional
            and c.label_dropout > 0
            and c.label_dropout_policy == "first_rows"
            and c.ratio_r_neq_t == 1.0
        ):
            raise ValueError(
                "meanflow: label_dropout_policy='first_rows' drops labels on r = t rows only and "
                "ratio_r_neq_t = 1 leaves none: use label_dropout_policy='independent' or ratio_r_neq_t < 1"
            )
        if c.cfg_omega < 0:
            raise ValueError(f"meanflow: cfg_omega must be >= 0, got {c.cfg_omega}")
        if not 0.0 <= c.cfg_kappa < 1.0:
            raise ValueError(f"meanflow: cfg_kappa must be in [0, 1) (scale omega / (1 - kappa)), got {c.cfg_kappa}")
        if not 0.0 <= c.cfg_t_start <= c.cfg_t_end <= 1.0:
            raise ValueError(f"meanflow: need 0 <= cfg_t_start <= cfg_t_end <= 1, got [{c.cfg_t_start}, {c.cfg_t_end}]")
        if self.guided_training:
            if not self.conditional:
                raise ValueError(
                    "meanflow: guidance in training (cfg_omega != 1 or cfg_kappa != 0) needs class-conditional data"
                )
            if c.label_dropout <= 0:
                raise ValueError(
                    "meanflow: guidance in training uses the null-label network: set label_dropout > 0 (paper: 0.1)"
                )
        if c.adaptive_p < 0 or c.adaptive_c <= 0:
            raise ValueError(
                f"meanflow: need adaptive_p >= 0 and adaptive_c > 0, got p={c.adaptive_p}, c={c.adaptive_c}"
            )
        if c.sample_schedule:
            check_schedule(c.sample_schedule, "method.sample_schedule")
        if not getattr(self.net, "use_d", False):
            raise ValueError("meanflow: the network must take the interval h = t - r as `d`: set model.use_d=True")

    @property
    def guided_training(self) -> bool:
        return self.cfg.cfg_omega != 1.0 or self.cfg.cfg_kappa != 0.0

    # -- the model ---------------------------------------------------------
    def average_velocity(self, net_params, z, r, t, y=None, *, train=False, dropout_rng=None):
        """u_theta(z, r, t) = net(z, t, d = t - r | y). z [B, ...]; r, t [B]."""
        return self.apply_net(net_params, z, t, y, t - r, train=train, dropout_rng=dropout_rng)

    def u_and_dudt(self, net_params, z, r, t, tangent, y=None, *, train=False, dropout_rng=None):
        """(u, du/dt) from ONE jax.jvp (eq. 8) of (z, t, r) -> u_theta(z, r, t) at (z_t, t, r)
        with tangent (tangent, 1, 0): du/dt = tangent . d_z u + d_t u along dz/dt = tangent,
        dr/dt = 0 (h = t - r is formed inside, so it moves with t; flowmap.total_derivative).
        Shapes: z, tangent [B, ...]; r, t [B]."""

        def u_fn(z_, t_, r_):
            return self.average_velocity(net_params, z_, r_, t_, y, train=train, dropout_rng=dropout_rng)

        return flowmap.total_derivative(u_fn, z, t, r, tangent)

    # -- training ------------------------------------------------------------
    def sample_t_r(self, rng, n: int) -> tuple[jax.Array, jax.Array]:
        """(t, r), each [n], t >= r (sec. 4.3). The first n - round(n ratio_r_neq_t) rows get r = t
        (a fixed count per batch, as the JAX code; the batch order is random)."""
        c = self.cfg
        k_t, k_r = jax.random.split(rng)
        if c.t_sampling == "uniform":
            t, r = jax.random.uniform(k_t, (n,)), jax.random.uniform(k_r, (n,))
        else:
            t = flowmap.logit_normal(k_t, n, c.t_logit_mean, c.t_logit_std)
            r = flowmap.logit_normal(k_r, n, c.r_logit_mean, c.r_logit_std)
        t, r = flowmap.ordered(t, r, c.tr_order)
        r = jnp.where(self.r_eq_t_rows(n), t, r)
        return t, r

    def r_eq_t_rows(self, n: int) -> np.ndarray:
        """Static mask [n] of the rows trained with r = t."""
        return flowmap.first_rows(n, n - int(round(n * self.cfg.ratio_r_neq_t)))

    def dropped_rows(self, rng, n: int) -> jax.Array:
        """Bool [n]: the rows trained with the null label (label_dropout, label_dropout_policy).

        'first_rows' (MeanFlow official JAX code, cond_drop): count = number of Bernoulli(p)
        successes over the n rows, and rows 0 .. count - 1 are dropped. The first rows are the
        r = t rows (r_eq_t_rows, the same order as the code's sample_tr), so every dropped row has
        r = t and h = 0. The count is capped at the number of r = t rows; the code does not cap it,
        but its ImageNet setting (75% of rows at r = t, p = 0.1) never reaches the cap in practice.
        The code drops the first rows of each device's batch under pmap; here the batch is global
        (its first rows are its r = t rows), and a sum of per-device binomial counts is the same
        binomial over the whole batch. 'independent': each row with probability p.
        """
        c = self.cfg
        if c.label_dropout <= 0:
            return jnp.zeros((n,), bool)
        coin = jax.random.bernoulli(rng, c.label_dropout, (n,))
        if c.label_dropout_policy == "independent":
            return coin
        n_eq = int(np.sum(self.r_eq_t_rows(n)))
        count = jnp.minimum(jnp.sum(coin), n_eq)
        return jnp.arange(n) < count

    def guided_velocity(self, net_params, z_t, t, v, y, dropped):
        """v_g (eq. 19, App. B.1): the guided velocity for rows with t in [t_start, t_end] whose
        label is kept, v elsewhere; the network terms in eval mode, all under stop-gradient.

        z_t, v [B, ...]; t [B]; y [B] labels (before dropout); dropped [B] bool.
        """
        c = self.cfg
        if not self.guided_training or y is None:
            return v
        frozen = jax.lax.stop_gradient(net_params)
        h0 = jnp.zeros_like(t)  # u(z, t, t) is the instantaneous velocity
        if c.cfg_kappa == 0.0:  # only the null term is needed (one network call)
            u_null = self.apply_net(frozen, z_t, t, self.null_labels(t.shape[0]), h0)
            u_cond = jnp.zeros_like(u_null)
        else:  # one call on the doubled batch [y; null]
            u_cond, u_null = self.cond_and_null(partial(self.apply_net, frozen), z_t, t, y, h0)
        use = flowmap.in_interval(t, c.cfg_t_start, c.cfg_t_end) & ~dropped
        return flowmap.folded_guidance(v, u_cond, u_null, c.cfg_omega, c.cfg_kappa, use)

    def training_terms(self, net_params, batch, rng, *, train=True) -> dict[str, Any]:
        """Everything the loss is built from (keys: t, r, z_t, v, v_g, y_in, dropped, u, du_dt, u_tgt).

        The key split of `rng` into (t/r, noise, label dropout, network dropout) is part of the
        contract (tests reproduce the draws).
        """
        x, y = batch["x"], batch.get("y")
        n = x.shape[0]
        k_tr, k_e, k_lab, k_drop = jax.random.split(rng, 4)
        t, r = self.sample_t_r(k_tr, n)
        t, r = t.astype(x.dtype), r.astype(x.dtype)
        e = jax.random.normal(k_e, x.shape, x.dtype)
        z_t, v = flowmap.noisy(x, e, t)
        if self.conditional and y is not None:
            y = jnp.asarray(y, jnp.int32)
            dropped = self.dropped_rows(k_lab, n)
            y_in = jnp.where(dropped, self.info.num_classes, y)
        else:
            y, y_in, dropped = None, None, jnp.zeros((n,), bool)
        v_g = self.guided_velocity(net_params, z_t, t, v, y, dropped)
        u, du_dt = self.u_and_dudt(net_params, z_t, r, t, v_g, y_in, train=train, dropout_rng=k_drop)
        u_tgt = flowmap.mf_target(v_g, t, r, du_dt)
        return dict(t=t, r=r, z_t=z_t, v=v, v_g=v_g, y_in=y_in, dropped=dropped, u=u, du_dt=du_dt, u_tgt=u_tgt)

    def loss(self, params, batch, rng, step, inputs=LossInputs()):
        """MeanFlow loss (eq. 9 with the target of eq. 18) with the adaptive weight of sec. 4.3:
        l = sum over pixels (u - u_tgt)^2, loss = mean_b l / SG(l + c)^p.

        Metrics: mse (mean squared error per element, before weighting) overall and for the
        r = t / r != t rows, v_mse (u against the conditional velocity v, as the official code's
        v_loss), dudt_abs_mean, tangent_nonfinite_frac (rows whose du/dt, the jvp's output
        tangent, is not finite; must be 0) and the mean adaptive weight.
        """
        c = self.cfg
        terms = self.training_terms(params["net"], batch, rng, train=True)
        u, u_tgt, du_dt = terms["u"], terms["u_tgt"], terms["du_dt"]
        n = u.shape[0]
        sq = ((u - u_tgt) ** 2).reshape(n, -1)
        per_example = jnp.sum(sq, axis=1)
        weight = flowmap.adaptive_weight(per_example, c.adaptive_c, c.adaptive_p)
        loss = jnp.mean(weight * per_example)

        mse_rows = jnp.mean(sq, axis=1)
        eq_rows = jnp.asarray(self.r_eq_t_rows(n))

        def masked_mean(values, mask):
            return jnp.sum(jnp.where(mask, values, 0.0)) / jnp.maximum(jnp.sum(mask), 1)

        flat_dudt = du_dt.reshape(n, -1)
        metrics = {
            "mse": jnp.mean(mse_rows),
            "mse_r_eq_t": masked_mean(mse_rows, eq_rows),
            "mse_r_neq_t": masked_mean(mse_rows, ~eq_rows),
            "v_mse": jnp.mean((u - terms["v"]) ** 2),
            "dudt_abs_mean": jnp.mean(jnp.abs(flat_dudt)),
            "tangent_nonfinite_frac": 1.0 - jnp.mean(jnp.all(jnp.isfinite(flat_dudt), axis=1).astype(jnp.float32)),
            "adaptive_weight_mean": jnp.mean(weight),
        }
        return loss, metrics

    # -- sampling ----------------------------------------------------------
    def nfe(self, num_steps, sampler):
        """One evaluation per step, for a step count `sample` accepts."""
        nfe = super().nfe(num_steps, sampler)
        self.check_steps(num_steps)
        return nfe

    def check_guidance(self, guidance: float) -> None:
        if guidance != 1.0:
            raise ValueError(
                f"meanflow: no classifier-free guidance at sampling time (got guidance={guidance}); guidance is "
                "folded into training (method.cfg_omega, method.cfg_kappa) and sampling keeps 1 NFE per step"
            )

    def sample_times(self, num_steps: int) -> np.ndarray:
        """The schedule [t_0 = 1, ..., t_k = 0] (float64, k + 1 entries) for k = num_steps:
        method.sample_schedule when it has k + 1 entries, else uniform t_i = 1 - i / k."""
        self.check_steps(num_steps)
        if len(self.cfg.sample_schedule) == num_steps + 1:
            return flowmap.times("custom", num_steps, custom=self.cfg.sample_schedule, where="meanflow")
        return flowmap.times("uniform", num_steps, where="meanflow")

    def sample(
        self,
        params,
        rng,
        *,
        num_samples,
        labels=None,
        num_steps,
        sampler="euler",
        guidance=1.0,
        schedule: Sequence[float] | None = None,
    ):
        """z_1 ~ N(0, I); z_{t_{i+1}} = z_{t_i} - (t_i - t_{i+1}) u(z_{t_i}, r = t_{i+1}, t = t_i) (eq. 12)
        over `schedule` (k + 1 times from 1 down to 0) or sample_times(k). Exactly k network calls."""
        self.check_steps(num_steps)
        self.check_sampler(sampler)
        self.check_guidance(guidance)
        if schedule is None:
            times = self.sample_times(num_steps)
        else:
            times = check_schedule(schedule, "schedule")
            if len(times) != num_steps + 1:
                raise ValueError(
                    f"meanflow: a {num_steps}-step sample needs a schedule of {num_steps + 1} times, got {len(times)}"
                )
        y = self.sample_labels(num_samples, labels)
        z = jax.random.normal(rng, (num_samples, *self.info.shape), jnp.float32)

        def u_fn(z, t, r):
            return self.average_velocity(params["net"], z, r, t, y)

        return flowmap.sample(u_fn, z, times)


def check_schedule(schedule: Sequence[float], where: str) -> np.ndarray:
    """A sampling schedule as float64: at least 2 times, from exactly 1 down to exactly 0, strictly decreasing."""
    return flowmap.check_times(schedule, f"meanflow: {where}")
