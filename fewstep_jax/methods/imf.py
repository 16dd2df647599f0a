"""improved MeanFlow (iMF; Geng et al. 2025, "Improved Mean Flows: On the Challenges of Fastforward
Generative Models", arXiv 2512.02012; official JAX code Lyy-iiis/imeanflow, `imf.py`,
`models/imfDiT.py`), trained from scratch.

Time convention: the flow-map core's (methods/flowmap.py), t = 1 noise. The network predicts
u(z | h = t - r, omega, t_min, t_max, y) and, from an auxiliary head, the instantaneous velocity
v(z | ...); t itself is not an input (`condition_on_t` adds it; the paper writes (r, t)).
Networks: the iMF DiT (models/imf_dit.py, model name 'imf_dit'), or any MLP / UNet / DiT of the
suite wrapped by models/flowmap_nets.GuidanceInputs (the guidance inputs added to its
conditioning vector, the v-head a second copy of the network); their `t` input then receives h.

Changes from MeanFlow (paper sec. 3-4; the ablation of Table 2: 6.17 -> 3.39 FID at B/2):
  1. the loss is on V = u + (t - r) sg(D_t u), regressed to the guided velocity v_g (with tangent
     v_hat this equals MeanFlow's loss and gradient exactly);
  2. the jvp tangent is the model's own guided velocity v_c from the auxiliary v-head
     (`tangent='v_head'`; 'boundary' uses u(z, t, t), 'sample' v_hat = e - x);
  3. the CFG scale omega and the CFG interval [t_min, t_max] are network inputs, drawn per row;
  4. the iMF DiT (in-context tokens, RMSNorm, SwiGLU, RoPE, QK-norm, zero-init gates).
Training step (imf.py:331-401):
  - t, r = max, min of two logit-normal(-0.4, 1) draws; the first int(B ratio_r_eq_t) rows r = t;
  - omega ~ p(omega) ~ omega^-beta on [1, omega_max] (beta = 1: omega = omega_max^U);
  - t_min ~ U[0, 0.5], t_max ~ U[0.5, 1]; the r = t rows get [0, 1]; omega~ = omega if t is in
    [t_min, t_max], else 1;
  - one call on the doubled batch [z; z] with labels [y; null], scales [omega~; 1], h = 0 and the
    interval [0, 1] gives the v-head's v_c and v_u (the code's three calls give the same numbers:
    its full-omega v_c only serves r = t rows, whose interval is [0, 1]);
    v_g = sg(v_hat + (1 - 1/omega~)(v_c - v_u)) (folded guidance (a, kappa) = (1, 1 - 1/omega~));
  - dropped rows (the first Binomial(B, 0.1) rows, all r = t, as the code's cond_drop) get the
    null label and v_g = v_hat;
  - (u, D_t u, v_aux) = ONE jvp of (z, t, r) -> net(z | t - r, omega, t_min, t_max, y) with
    tangents (v_c, 1, 0); V = u + (t - r) sg(D_t u);
  - loss = mean_b phi(sum (V - v_g)^2) + phi(sum (v_aux - v_g)^2), phi(l) = l / sg(l + 0.01).
Sampling: z <- z - (t_i - t_{i+1}) u(z | h, omega, t_min, t_max, y) on the uniform schedule, EMA
weights, one network call per step (no CFG pass): omega is eval.guidance (1 = unguided) and the
interval [sample_t_min, sample_t_max] (the paper's tuned values: B/2 8.0 on [0.4, 0.65], M/2
and L/2 10.5 on [0.4, 0.6], XL/2 8.0 on [0.42, 0.62], XL/2 2-NFE 4.0 on [0.36, 0.64]).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fewstep_jax.methods import flowmap
from fewstep_jax.methods.base import LossInputs, bcast, register
from fewstep_jax.models import flowmap_nets

TANGENTS = ("v_head", "boundary", "sample")


@register("imf")
class ImprovedMeanFlow(flowmap.FlowMapMethod):
    """MeanFlow with the v-loss, an auxiliary v-head tangent and guidance as network inputs."""

    title = "iMF"
    parameterization = "imf"  # u(z | h, 1 - 1/omega, t_min, t_max, y) and an auxiliary v
    jump = "each step is one average-velocity jump"

    @dataclasses.dataclass(frozen=True)
    class Config:
        t_logit_mean: float = -0.4  # both draws logit-normal(P_mean, P_std), sorted
        t_logit_std: float = 1.0
        ratio_r_eq_t: float = 0.5  # the code's data_proportion: the first int(B ratio) rows r = t
        omega_max: float = 8.0  # omega on [1, omega_max] (the code: 1 + s_max, s_max = 7); 1 = no guidance
        omega_beta: float = 1.0  # p(omega) ~ omega^-beta (the code's cfg_beta)
        t_min_high: float = 0.5  # t_min ~ U[0, t_min_high]
        t_max_low: float = 0.5  # t_max ~ U[t_max_low, 1]
        label_dropout: float = 0.1  # the first rows (all r = t), as the code's cond_drop
        adaptive_c: float = 0.01  # phi(l) = l / sg(l + c)^p, l a sum over pixels
        adaptive_p: float = 1.0
        tangent: str = "v_head"  # 'v_head' (code), 'boundary' (u(z, t, t)) or 'sample' (e - x)
        v_head: bool = True  # train the auxiliary v-head (its loss term); needed by tangent='v_head'
        condition_on_t: bool = False  # t as a network input too (the paper's notation)
        sample_t_min: float = 0.0  # the CFG interval fed at sampling time (omega = eval.guidance)
        sample_t_max: float = 1.0
        sample_schedule: tuple[float, ...] = ()  # for k = len - 1 steps; others uniform

    def check(self) -> None:
        c = self.cfg
        self.native = bool(getattr(self.net, "takes_guidance_inputs", False))
        if self.native:
            if getattr(self.net, "condition_on_t", False) != c.condition_on_t:
                raise ValueError("imf: method.condition_on_t must equal the network's model.condition_on_t")
            self.model = self.net
        else:
            flowmap_nets.conditioning_width(self.net)  # a network the wrapper knows
            if c.condition_on_t and not getattr(self.net, "use_d", False):
                raise ValueError("imf: condition_on_t feeds h as the network's `d`: set model.use_d=True")
            self.model = flowmap_nets.GuidanceInputs(self.net, v_head=c.v_head)
        if c.t_logit_std <= 0:
            raise ValueError(f"imf: t_logit_std must be positive, got {c.t_logit_std}")
        if not 0.0 <= c.ratio_r_eq_t <= 1.0:
            raise ValueError(f"imf: ratio_r_eq_t must be in [0, 1], got {c.ratio_r_eq_t}")
        if c.omega_max < 1.0:
            raise ValueError(f"imf: omega_max must be >= 1 (1 = no guidance), got {c.omega_max}")
        if c.omega_max > 1.0 and not self.conditional:
            raise ValueError("imf: guidance (omega_max > 1) was asked of an unconditional model: set omega_max=1")
        if c.omega_max > 1.0 and c.label_dropout <= 0:
            raise ValueError("imf: guidance uses the null-label velocity: set label_dropout > 0 (code: 0.1)")
        if not (0.0 <= c.t_min_high <= 1.0 and 0.0 <= c.t_max_low <= 1.0):
            raise ValueError("imf: t_min_high and t_max_low must be in [0, 1]")
        if not 0.0 <= c.label_dropout < 1.0:
            raise ValueError(f"imf: label_dropout must be in [0, 1), got {c.label_dropout}")
        if self.conditional and c.label_dropout > 0 and c.ratio_r_eq_t == 0.0:
            raise ValueError("imf: dropped labels go to the r = t rows (the first rows): set ratio_r_eq_t > 0")
        if c.adaptive_c <= 0 or c.adaptive_p < 0:
            raise ValueError("imf: need adaptive_c > 0 and adaptive_p >= 0")
        if c.tangent not in TANGENTS:
            raise ValueError(f"imf: unknown tangent {c.tangent!r}; known: {', '.join(TANGENTS)}")
        if c.tangent == "v_head" and not c.v_head:
            raise ValueError("imf: tangent='v_head' needs the auxiliary v-head (method.v_head=True)")
        if not 0.0 <= c.sample_t_min <= c.sample_t_max <= 1.0:
            raise ValueError(
                f"imf: need 0 <= sample_t_min <= sample_t_max <= 1, got [{c.sample_t_min}, {c.sample_t_max}]"
            )
        if c.sample_schedule:
            flowmap.check_times(c.sample_schedule, "imf: method.sample_schedule")

    @property
    def guided_training(self) -> bool:
        return self.conditional and self.cfg.omega_max > 1.0

    # -- the network -------------------------------------------------------
    def init_params(self, rng, example_batch):
        x = jnp.asarray(example_batch["x"][:1])
        t = jnp.zeros((1,), jnp.float32)
        y = self.null_labels(1) if self.conditional else None
        extra = jnp.asarray([[0.0, 0.0, 1.0]], jnp.float32)
        t_in, d_in = self.time_inputs(t, t)
        heads = "uv" if self.cfg.v_head else "u"
        variables = self.model.init({"params": rng}, x, t_in, y=y, d=d_in, train=False, extra=extra, heads=heads)
        return {"net": variables["params"]}

    def time_inputs(self, t, h):
        """(t input, d input) of the network: the iMF DiT takes (t, d = h); a wrapped network takes h as
        its time input, or (t, d = h) with condition_on_t."""
        if self.native or self.cfg.condition_on_t:
            return t, h
        return h, None

    def network(self, net_params, z, t, r, omega, t_min, t_max, y, *, heads="u", train=False, dropout_rng=None):
        """u(z | h = t - r, omega, t_min, t_max, y), the auxiliary v (heads='v') or both ('uv').
        z [B, ...]; the others [B]."""
        rngs = {"dropout": dropout_rng} if (train and dropout_rng is not None) else None
        extra = jnp.stack([1.0 - 1.0 / omega, t_min, t_max], axis=1).astype(jnp.promote_types(t.dtype, jnp.float32))
        t_in, d_in = self.time_inputs(t, t - r)
        y = y if self.conditional else None
        return self.model.apply({"params": net_params}, z, t_in, y=y, d=d_in, train=train, extra=extra, heads=heads,
                                rngs=rngs)  # fmt: skip

    # -- training ----------------------------------------------------------
    def sample_t_r(self, rng, n: int):
        c = self.cfg
        k_t, k_r = jax.random.split(rng)
        t, r = flowmap.ordered(
            flowmap.logit_normal(k_t, n, c.t_logit_mean, c.t_logit_std),
            flowmap.logit_normal(k_r, n, c.t_logit_mean, c.t_logit_std),
        )
        return t, jnp.where(self.r_eq_t_rows(n), t, r)

    def r_eq_t_rows(self, n: int) -> np.ndarray:
        return flowmap.first_rows(n, int(n * self.cfg.ratio_r_eq_t))

    def guidance_inputs(self, rng, t, r_eq_t):
        """(omega, t_min, t_max), each [B]: omega ~ omega^-beta on [1, omega_max], t_min ~ U[0, t_min_high],
        t_max ~ U[t_max_low, 1]; the r = t rows get the interval [0, 1] (imf.py sample_cfg_*)."""
        c = self.cfg
        n = t.shape[0]
        k_w, k_lo, k_hi = jax.random.split(rng, 3)
        omega = flowmap.power_law(k_w, n, c.omega_max, c.omega_beta).astype(t.dtype)
        t_min = jax.random.uniform(k_lo, (n,), t.dtype, 0.0, c.t_min_high)
        t_max = jax.random.uniform(k_hi, (n,), t.dtype, c.t_max_low, 1.0)
        return omega, jnp.where(r_eq_t, 0.0, t_min), jnp.where(r_eq_t, 1.0, t_max)

    def dropped_rows(self, rng, n: int) -> jax.Array:
        """The first (number of Bernoulli(p) successes) rows, capped at the r = t rows (cond_drop)."""
        c = self.cfg
        if c.label_dropout <= 0 or not self.conditional:
            return jnp.zeros((n,), bool)
        count = jnp.sum(jax.random.bernoulli(rng, c.label_dropout, (n,)))
        return jnp.arange(n) < jnp.minimum(count, int(np.sum(self.r_eq_t_rows(n))))

    def boundary_velocities(self, net_params, z, t, omega_in, y):
        """(v_c, v_u): the guided-tangent velocity at (h = 0, omega_in, [0, 1], y) and the null one at
        (h = 0, 1, [0, 1], null), from ONE call on the doubled batch; the v-head's ('v_head') or
        u's ('boundary'). Under sg."""
        frozen = jax.lax.stop_gradient(net_params)
        n = z.shape[0]
        ones = jnp.ones_like(t)
        y2 = None if y is None else jnp.concatenate([y, self.null_labels(n)])
        heads = "v" if self.cfg.tangent == "v_head" else "u"
        out = self.network(frozen, jnp.concatenate([z, z]), jnp.concatenate([t, t]), jnp.concatenate([t, t]),
                           jnp.concatenate([omega_in, ones]), jnp.zeros_like(jnp.concatenate([t, t])),
                           jnp.concatenate([ones, ones]), y2, heads=heads)  # fmt: skip
        return jax.lax.stop_gradient(out[:n]), jax.lax.stop_gradient(out[n:])

    def training_terms(self, params, batch, rng, *, train=True) -> dict[str, Any]:
        """Everything the loss is built from (keys: t, r, z_t, v_hat, omega, t_min, t_max, omega_used,
        dropped, y_in, tangent, v_g, u, du_dt, v_aux, V). The key split of `rng` into (t/r, noise,
        label dropout, network dropout), MeanFlow's, and fold_in(rng, 1) for the guidance inputs is part
        of the contract."""
        c = self.cfg
        x, y = batch["x"], batch.get("y")
        n = x.shape[0]
        k_tr, k_e, k_lab, k_drop = jax.random.split(rng, 4)
        k_g = jax.random.fold_in(rng, 1)
        t, r = self.sample_t_r(k_tr, n)
        t, r = t.astype(x.dtype), r.astype(x.dtype)
        z, v_hat = flowmap.noisy(x, jax.random.normal(k_e, x.shape, x.dtype), t)
        r_eq_t = jnp.asarray(self.r_eq_t_rows(n))
        y = jnp.asarray(y, jnp.int32) if (self.conditional and y is not None) else None
        if self.guided_training:
            omega, t_min, t_max = self.guidance_inputs(k_g, t, r_eq_t)
        else:
            omega, t_min, t_max = jnp.ones_like(t), jnp.zeros_like(t), jnp.ones_like(t)
        omega_used = jnp.where(flowmap.in_interval(t, t_min, t_max), omega, 1.0)
        dropped = self.dropped_rows(k_lab, n)
        if c.tangent == "sample" and not self.guided_training:
            v_c = v_g = v_hat
        else:
            v_c, v_u = self.boundary_velocities(params["net"], z, t, omega_used, y)
            v_g = (
                v_hat
                if not self.guided_training
                else flowmap.folded_guidance(v_hat, v_c, v_u, 1.0, 1.0 - 1.0 / omega_used)
            )
            if c.tangent == "sample":
                v_c = v_hat
        v_g = jax.lax.stop_gradient(jnp.where(bcast(dropped, v_g), v_hat, v_g))
        y_in = None if y is None else jnp.where(dropped, self.info.num_classes, y)
        with_v = c.v_head

        heads = "uv" if with_v else "u"

        def u_fn(z_, t_, r_):
            out = self.network(params["net"], z_, t_, r_, omega, t_min, t_max, y_in, heads=heads, train=train,
                               dropout_rng=k_drop)  # fmt: skip
            return out if with_v else (out, jnp.zeros_like(out))

        u, du_dt, v_aux = flowmap.total_derivative(u_fn, z, t, r, v_c, has_aux=True)
        V = u + bcast(t - r, u) * jax.lax.stop_gradient(du_dt)
        return dict(t=t, r=r, z_t=z, v_hat=v_hat, omega=omega, t_min=t_min, t_max=t_max, omega_used=omega_used,
                    dropped=dropped, y_in=y_in, tangent=v_c, v_g=v_g, u=u, du_dt=du_dt, v_aux=v_aux, V=V)  # fmt: skip

    def loss(self, params, batch, rng, step, inputs=LossInputs()):
        """mean_b phi(sum (V - v_g)^2) + phi(sum (v_aux - v_g)^2), phi(l) = l / sg(l + c)^p (imf.py forward).

        Metrics: loss_u, loss_v (mean squared errors per element, before the weighting, as the code),
        dudt_abs_mean, tangent_nonfinite_frac (must be 0)."""
        c = self.cfg
        terms = self.training_terms(params, batch, rng, train=True)
        l_u = flowmap.sum_sq(terms["V"] - terms["v_g"])
        per_example = flowmap.adaptive_weight(l_u, c.adaptive_c, c.adaptive_p) * l_u
        metrics = {"loss_u": jnp.mean(flowmap.mean_sq(terms["V"] - terms["v_g"]))}
        if c.v_head:
            l_v = flowmap.sum_sq(terms["v_aux"] - terms["v_g"])
            per_example = per_example + flowmap.adaptive_weight(l_v, c.adaptive_c, c.adaptive_p) * l_v
            metrics["loss_v"] = jnp.mean(flowmap.mean_sq(terms["v_aux"] - terms["v_g"]))
        flat = terms["du_dt"].reshape(terms["du_dt"].shape[0], -1)
        metrics["dudt_abs_mean"] = jnp.mean(jnp.abs(flat))
        metrics["tangent_nonfinite_frac"] = 1.0 - jnp.mean(jnp.all(jnp.isfinite(flat), axis=1).astype(jnp.float32))
        return jnp.mean(per_example), metrics

    # -- sampling ----------------------------------------------------------
    def sample(self, params, rng, *, num_samples, labels=None, num_steps, sampler="euler", guidance=1.0):
        """z_1 ~ N(0, I); z <- z - (t_i - t_{i+1}) u(z | t_i - t_{i+1}, omega = guidance, [sample_t_min,
        sample_t_max], y): one network call per step, guidance as an input (no CFG pass)."""
        c = self.cfg
        times = self.sample_times(num_steps)
        self.check_sampler(sampler)
        if guidance != 1.0 and not self.conditional:
            raise ValueError(f"imf: guidance={guidance} was asked of an unconditional model")
        if guidance < 1.0:
            raise ValueError(f"imf: the CFG scale omega (eval.guidance) must be >= 1, got {guidance}")
        y = self.sample_labels(num_samples, labels)
        z = jax.random.normal(rng, (num_samples, *self.info.shape), jnp.float32)

        def u_fn(z, t, r):
            full = jnp.ones_like(t)
            return self.network(
                params["net"], z, t, r, guidance * full, c.sample_t_min * full, c.sample_t_max * full, y
            )

        return flowmap.sample(u_fn, z, times)
