"""Decoupled MeanFlow (DMF; Lee, Yu, Shin 2025, "Decoupled MeanFlow: Turning Flow Models into Flow
Maps for Accelerated Sampling", arXiv 2510.24474; official code kyungmnlee/dmf: `loss.py`
DMFLoss, `models/dmft.py`, `samplers.py`).

Time convention: the flow-map core's (methods/flowmap.py): t = 1 noise, t = 0 data,
z_t = (1 - t) x + t e, v_hat = e - x. The network is a flow-matching network of the suite
(methods/flow.py: data time t' = 1 - t, output x0 - z), run DECOUPLED (models/flowmap_nets.py,
decoupled_apply): its first `split` conditioned layers see E(1 - t) + E_y(y), the rest (and
DiT's final layer) E(1 - r) + E_y(y), from the same embedder, so
    u(z, t, r) = -net(z, 1 - t; late layers at 1 - r),   u(z, t, t) = -net(z, 1 - t)
is the base flow model exactly and a flow-matching run initializes it (train.init_from; DMF
fine-tunes a pretrained SiT / flow model). XL/2: 20 of 28 blocks see t (L/2 ablation 18 of 24).

Loss per example (loss.py DMFLoss), two independent (e, t) draws, labels dropped to null with
probability `label_dropout` (each row independently):
  FM branch  t_f ~ logit-normal(fm_mean, fm_std);  u(z_f, t_f, t_f) regressed to v_tgt
  MF branch  t, r = max, min of logit-normal(t_mean, t_std) and logit-normal(r_mean, r_std);
             u_tgt = sg(v_tgt - (t - r) D_t u), D_t u by one jvp with tangents (v_tgt, 1, 0)
  model guidance (g_type 'mg'), with the live model under sg, for kept rows with t in
  [g_min, g_max]: v_tgt = v_hat + omega (u(z, t, t | y) - u(z, t, t | null)) (folded guidance with
  (a, kappa) = (1, omega): the learned CFG scale 1 / (1 - omega)); v_tgt = v_hat elsewhere
  l = log(mean_pixels(delta^2) e^-phi + c) + phi  (loss_form 'log', the code; c = 0.01), with
  phi(t, r) = a zero-initialized Linear over [sinusoids(t), sinusoids(r)] (128 each); the
  paper writes log(e^-phi ||delta||^2 + 1) + phi / 2 (loss_form 'paper', unverified).
  Total = (l_FM + l_MF) / 2, mean over the batch.
Sampling (samplers.py): Euler on t_i -> t_{i+1} over the uniform schedule, optionally shifted
t -> s t / (1 + (s - 1) t) (s = 1 at 256 px, 1.5 at 512 px; `sample_shift`), or gamma-sampling
(`sample_gamma` = 1: the code's restart sampler, x0 = x - t u(x, t, 0) then re-noise); sampling
guidance (eval.guidance != 1) is two-pass CFG inside [sample_g_min, sample_g_max]. Not
reproduced: REPA (the base model's representation alignment; a flow-matching run of this suite
has none) and the fused flash-attention jvp kernels (the jvp here goes through XLA attention).
`conditioning='interval'` is the paper's "MF" ablation on the same base model: no decoupling, every
layer sees E(1 - t) + E_h(t - r), E_h a new embedder whose last layer starts at zero.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from fewstep_jax.methods import flowmap
from fewstep_jax.methods.base import LossInputs, register
from fewstep_jax.models import flowmap_nets
from fewstep_jax.models.layers import positional_embedding

LOSS_FORMS = ("log", "paper")
#: 'decoupled': DMF's network; 'interval': MeanFlow-style conditioning of the same base network, every
#: layer seeing E(1 - t) + E_h(t - r) from a new zero-initialized embedder (the paper's "MF" ablation rows).
CONDITIONINGS = ("decoupled", "interval")
#: Where the interval embedder of conditioning='interval' lives in params['net'] (beside the base network's).
INTERVAL_KEY = "interval_embedding"
SCHEDULES = ("uniform", "shifted")
#: The paper's XL/2 split (20 of 28 blocks see t), used when method.split = 0.
PAPER_SPLIT = 20 / 28


class IntervalEmbedding(nn.Module):
    """E_h(h): sinusoids -> Dense -> SiLU -> zero-initialized Dense, so the tuned network starts as the base."""

    features: int
    freq_dim: int = 256

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        emb = nn.Dense(self.features, name="dense_0")(positional_embedding(h, self.freq_dim))
        return nn.Dense(self.features, kernel_init=nn.initializers.zeros, name="dense_1")(nn.silu(emb))


class PairLogVariance(nn.Module):
    """phi(t, r): a zero-initialized Linear over [sinusoids(t), sinusoids(r)] (dmft.py logvar_linear)."""

    channels: int = 128

    @nn.compact
    def __call__(self, t: jax.Array, r: jax.Array) -> jax.Array:
        emb = jnp.concatenate(
            [
                positional_embedding(t, self.channels, endpoint=False),
                positional_embedding(r, self.channels, endpoint=False),
            ],
            axis=-1,
        )
        return nn.Dense(1, kernel_init=nn.initializers.zeros, name="out")(emb)[:, 0]


@register("dmf")
class DecoupledMeanFlow(flowmap.FlowMapMethod):
    """A flow-matching network turned into a flow map by decoupling its time conditioning."""

    title = "DMF"
    pretrained_method = "flow"
    parameterization = "flow"  # the base network's: x0 - z at data time 1 - t
    jump = "each step is one flow-map jump, u(z, t, r) of the decoupled network"
    time_convention = "flow map t in [0, 1]; t = 0 data, t = 1 noise (the flow network sees 1 - t)"

    @dataclasses.dataclass(frozen=True)
    class Config:
        # Conditioned layers that see t (the rest see r); 0: round(20/28 of them), the paper's XL/2 share.
        split: int = 0
        # 'decoupled' (DMF) or 'interval' (MeanFlow's conditioning on the same base: the ablation's "MF").
        conditioning: str = "decoupled"
        fm_logit_mean: float = 0.0  # FM branch t ~ logit-normal (train_dmf_xl_2_256.sh: P_mean 0.0)
        fm_logit_std: float = 1.0
        t_logit_mean: float = 0.4  # MF branch: t, r = max, min of the two draws (P_mean_t 0.4, P_mean_r -1.2)
        t_logit_std: float = 1.0
        r_logit_mean: float = -1.2
        r_logit_std: float = 1.0
        label_dropout: float = 0.1
        # Model guidance ('mg'): omega (0 = none, the loss's default g_type) inside [g_min, g_max].
        guidance_omega: float = 0.0
        guidance_t_min: float = 0.0
        guidance_t_max: float = 1.0
        loss_form: str = "log"  # 'log' (code) or 'paper' (log(e^-phi l + 1) + phi / 2, unverified)
        loss_c: float = 0.01
        logvar_channels: int = 128
        # Sampling: 'uniform' or 'shifted' by sample_shift; gamma 0 = Euler, 1 = restart.
        sample_schedule: str = "uniform"
        sample_shift: float = 1.0
        sample_gamma: float = 0.0
        sample_g_min: float = 0.0  # two-pass CFG interval when eval.guidance != 1
        sample_g_max: float = 1.0

    def check(self) -> None:
        c = self.cfg
        flowmap_nets.check_decouplable(self.net)
        if getattr(self.net, "use_d", False):
            raise ValueError(
                "dmf: the decoupled network is a flow network without a second input: set model.use_d=False"
            )
        self.num_layers = flowmap_nets.conditioned_layers(self.net, self.info.shape, self.info.num_classes)
        split = c.split or round(PAPER_SPLIT * self.num_layers)
        if not 1 <= split < self.num_layers:
            raise ValueError(
                f"dmf: split={c.split} is outside the network's depth: it has {self.num_layers} conditioned layers, "
                f"so the split must be in [1, {self.num_layers - 1}]"
            )
        self.split = split
        for name in ("fm_logit_std", "t_logit_std", "r_logit_std", "loss_c", "sample_shift"):
            if getattr(c, name) <= 0:
                raise ValueError(f"dmf: {name} must be positive, got {getattr(c, name)}")
        if not 0.0 <= c.label_dropout < 1.0:
            raise ValueError(f"dmf: label_dropout must be in [0, 1), got {c.label_dropout}")
        if c.guidance_omega != 0.0:
            if not self.conditional:
                raise ValueError("dmf: model guidance (guidance_omega != 0) was asked of an unconditional model")
            if c.label_dropout <= 0:
                raise ValueError("dmf: model guidance uses the null-label network: set label_dropout > 0 (paper: 0.1)")
            if not 0.0 < c.guidance_omega < 1.0:
                raise ValueError(
                    f"dmf: guidance_omega must be in (0, 1) (CFG scale 1 / (1 - omega)), got {c.guidance_omega}"
                )
        for lo, hi, what in (
            (c.guidance_t_min, c.guidance_t_max, "guidance_t"),
            (c.sample_g_min, c.sample_g_max, "sample_g"),
        ):
            if not 0.0 <= lo <= hi <= 1.0:
                raise ValueError(f"dmf: need 0 <= {what}_min <= {what}_max <= 1, got [{lo}, {hi}]")
        if c.conditioning not in CONDITIONINGS:
            raise ValueError(f"dmf: unknown conditioning {c.conditioning!r}; known: {', '.join(CONDITIONINGS)}")
        if c.loss_form not in LOSS_FORMS:
            raise ValueError(f"dmf: unknown loss_form {c.loss_form!r}; known: {', '.join(LOSS_FORMS)}")
        if c.sample_schedule not in SCHEDULES:
            raise ValueError(f"dmf: unknown sample_schedule {c.sample_schedule!r}; known: {', '.join(SCHEDULES)}")
        flowmap.gamma_plan(flowmap.times("uniform", 1), c.sample_gamma)  # checks gamma

    # -- parameters --------------------------------------------------------
    @property
    def logvar_net(self) -> PairLogVariance:
        return PairLogVariance(self.cfg.logvar_channels)

    @property
    def interval_net(self) -> IntervalEmbedding:
        return IntervalEmbedding(flowmap_nets.conditioning_width(self.net))

    def init_params(self, rng, example_batch):
        k_net, k_lv, k_h = jax.random.split(rng, 3)
        params = super().init_params(k_net, example_batch)
        zero = jnp.zeros((1,), jnp.float32)
        params["logvar"] = self.logvar_net.init(k_lv, zero, zero)["params"]
        if self.cfg.conditioning == "interval":
            params["net"] = dict(params["net"], **{INTERVAL_KEY: self.interval_net.init(k_h, zero)["params"]})
        return params

    @staticmethod
    def base_params(net_params):
        """The base network's part of params['net'] (without the interval embedder)."""
        return {k: v for k, v in net_params.items() if k != INTERVAL_KEY}

    # -- the flow map ------------------------------------------------------
    def flow_map(self, net_params, z, t, r, y=None, *, train=False, dropout_rng=None):
        """u(z, t, r) = -net(z, 1 - t; layers from `split` on at 1 - r). z [B, ...]; t, r [B]."""
        rngs = {"dropout": dropout_rng} if (train and dropout_rng is not None) else None
        y = y if self.conditional else None
        base = {"params": self.base_params(net_params)}
        if self.cfg.conditioning == "interval":
            added = self.interval_net.apply({"params": net_params[INTERVAL_KEY]}, t - r)
            with flowmap_nets.added_conditioning(added):
                return -self.net.apply(base, z, 1.0 - t, y=y, train=train, rngs=rngs)
        return -flowmap_nets.decoupled_apply(self.net, base, z, 1.0 - t, 1.0 - r, y, self.split, train=train, rngs=rngs)

    def velocity(self, net_params, z, t, y=None, *, train=False, dropout_rng=None):
        """u(z, t, t) = -net(z, 1 - t): the base flow network, one plain call (with conditioning='interval'
        its interval embedding at h = 0 is added)."""
        if self.cfg.conditioning == "interval":
            return self.flow_map(net_params, z, t, t, y, train=train, dropout_rng=dropout_rng)
        return -self.apply_net(self.base_params(net_params), z, 1.0 - t, y, train=train, dropout_rng=dropout_rng)

    # -- training ----------------------------------------------------------
    def guided_target(self, net_params, z, t, v_hat, y_in, dropped):
        """v_tgt (model guidance, the code's g_type 'mg'): v_hat + omega (u(z,t,t|y) - u(z,t,t|null)) for
        kept rows with t in [g_min, g_max], v_hat elsewhere; the live network in eval mode, under sg."""
        c = self.cfg
        if c.guidance_omega == 0.0 or y_in is None:
            return v_hat
        frozen = jax.lax.stop_gradient(net_params)

        def apply(x, tt, yy, d=None):
            del d
            return self.velocity(frozen, x, tt, yy)

        v_cond, v_null = self.cond_and_null(apply, z, t, y_in)
        use = flowmap.in_interval(t, c.guidance_t_min, c.guidance_t_max) & ~dropped
        return flowmap.folded_guidance(v_hat, v_cond, v_null, 1.0, c.guidance_omega, use)

    def branch_loss(self, mean_sq, logvar):
        c = self.cfg
        if c.loss_form == "log":
            return flowmap.log_variance_loss(mean_sq, logvar, c.loss_c)
        return jnp.log(jnp.exp(-logvar) * mean_sq + 1.0) + logvar / 2

    def training_terms(self, params, batch, rng, *, train=True):
        """Everything the loss is built from (keys: fm / mf dicts with t, r, z, v_hat, v_tgt, u, u_tgt,
        logvar; dropped, y_in). The key split of `rng` into (labels, FM time, FM noise, MF times, MF
        noise, network dropout) is part of the contract (tests reproduce the draws)."""
        c = self.cfg
        x, y = batch["x"], batch.get("y")
        n = x.shape[0]
        k_lab, k_tf, k_ef, k_tr, k_er, k_drop = jax.random.split(rng, 6)
        if self.conditional and y is not None:
            dropped = jax.random.bernoulli(k_lab, c.label_dropout, (n,)) if c.label_dropout > 0 else jnp.zeros(n, bool)
            y_in = jnp.where(dropped, self.info.num_classes, jnp.asarray(y, jnp.int32))
        else:
            dropped, y_in = jnp.zeros((n,), bool), None
        net, lv = params["net"], params["logvar"]

        t_f = flowmap.logit_normal(k_tf, n, c.fm_logit_mean, c.fm_logit_std).astype(x.dtype)
        z_f, v_f = flowmap.noisy(x, jax.random.normal(k_ef, x.shape, x.dtype), t_f)
        v_tgt_f = self.guided_target(net, z_f, t_f, v_f, y_in, dropped)
        u_f = self.velocity(net, z_f, t_f, y_in, train=train, dropout_rng=k_drop)
        fm = dict(t=t_f, r=t_f, z=z_f, v_hat=v_f, v_tgt=v_tgt_f, u=u_f, u_tgt=v_tgt_f,
                  logvar=self.logvar_net.apply({"params": lv}, t_f, t_f))  # fmt: skip

        k_t, k_r = jax.random.split(k_tr)
        t, r = flowmap.ordered(
            flowmap.logit_normal(k_t, n, c.t_logit_mean, c.t_logit_std),
            flowmap.logit_normal(k_r, n, c.r_logit_mean, c.r_logit_std),
        )
        t, r = t.astype(x.dtype), r.astype(x.dtype)
        z, v = flowmap.noisy(x, jax.random.normal(k_er, x.shape, x.dtype), t)
        v_tgt = self.guided_target(net, z, t, v, y_in, dropped)

        def u_fn(z_, t_, r_):
            return self.flow_map(net, z_, t_, r_, y_in, train=train, dropout_rng=k_drop)

        u, du_dt = flowmap.total_derivative(u_fn, z, t, r, v_tgt)
        mf = dict(t=t, r=r, z=z, v_hat=v, v_tgt=v_tgt, u=u, du_dt=du_dt, u_tgt=flowmap.mf_target(v_tgt, t, r, du_dt),
                  logvar=self.logvar_net.apply({"params": lv}, t, r))  # fmt: skip
        return dict(fm=fm, mf=mf, dropped=dropped, y_in=y_in)

    def loss(self, params, batch, rng, step, inputs=LossInputs()):
        """(l_FM + l_MF) / 2 per example, mean over the batch (loss.py DMFLoss).

        Metrics: fm_mse / mf_mse (mean squared error per element before the weighting), the mean
        log-variances, dudt_abs_mean and tangent_nonfinite_frac (must be 0)."""
        terms = self.training_terms(params, batch, rng, train=True)
        fm, mf = terms["fm"], terms["mf"]
        fm_sq = flowmap.mean_sq(fm["u"] - fm["u_tgt"])
        mf_sq = flowmap.mean_sq(mf["u"] - mf["u_tgt"])
        per_example = 0.5 * (self.branch_loss(fm_sq, fm["logvar"]) + self.branch_loss(mf_sq, mf["logvar"]))
        flat = mf["du_dt"].reshape(mf["du_dt"].shape[0], -1)
        return jnp.mean(per_example), {
            "fm_mse": jnp.mean(fm_sq),
            "mf_mse": jnp.mean(mf_sq),
            "fm_logvar_mean": jnp.mean(fm["logvar"]),
            "mf_logvar_mean": jnp.mean(mf["logvar"]),
            "dudt_abs_mean": jnp.mean(jnp.abs(flat)),
            "tangent_nonfinite_frac": 1.0 - jnp.mean(jnp.all(jnp.isfinite(flat), axis=1).astype(jnp.float32)),
        }

    # -- sampling ----------------------------------------------------------
    def sample_times(self, num_steps: int):
        c = self.cfg
        self.check_steps(num_steps)
        return flowmap.times(c.sample_schedule, num_steps, shift=c.sample_shift, where="dmf")

    def sample(self, params, rng, *, num_samples, labels=None, num_steps, sampler="euler", guidance=1.0):
        """z_1 ~ N(0, I), then one decoupled-network jump per step on sample_times(k) (Euler, or
        gamma-sampling with sample_gamma), two-pass CFG inside [sample_g_min, sample_g_max] when
        guidance != 1 (a CFG pair counts as one evaluation)."""
        c = self.cfg
        times = self.sample_times(num_steps)
        self.check_sampler(sampler)
        if guidance != 1.0 and not self.conditional:
            raise ValueError(f"dmf: guidance={guidance} was asked of an unconditional model")
        y = self.sample_labels(num_samples, labels)
        k_z, k_noise = jax.random.split(rng)
        z = jax.random.normal(k_z, (num_samples, *self.info.shape), jnp.float32)
        net = params["net"]

        def u_fn(z, t, r):
            if guidance == 1.0:
                return self.flow_map(net, z, t, r, y)
            cond, null = self.cond_and_null(lambda x, tt, yy, rr: self.flow_map(net, x, tt, rr, yy), z, t, y, r)
            use = flowmap.in_interval(t, c.sample_g_min, c.sample_g_max)
            return flowmap.two_pass_guidance(cond, null, guidance, use)

        return flowmap.sample(u_fn, z, times, gamma=c.sample_gamma, rng=k_noise)
