"""Continuous-time consistency models: sCT and sCD (Lu & Song 2024, "sCM", Alg. 1).

Time convention (TrigFlow, as methods/trigflow.py): t in [0, pi/2], t = 0 data,
  x_t = cos(t) x0 + sin(t) z,  z ~ N(0, sigma_d^2 I),
  f_theta(x_t, t) = cos(t) x_t - sin(t) sigma_d F_theta(x_t / sigma_d, t)     (sCM eq. 7)
so f(x, 0) = x by construction.

The training signal is the tangent g = cos(t) d f_{theta^-}(x_t, t) / dt along
the PF-ODE, computed with ONE forward-mode pass (jax.jvp) of the stop-gradient
network in the rearranged form of sCM eq. 8 / Alg. 1:

  (F^-, cs dF^-/dt) = jvp(F_{theta^-}, (x_t / sigma_d, t), (cs dx_t/dt / sigma_d, cs)),  cs = cos t sin t
  g = -cos(t)^2 (sigma_d F^- - dx_t/dt) - r (cs x_t + sigma_d cs dF^-/dt)

(tangent convention (b) of the method notes: the sigma_d factor sits on the last
term; with r = 1, g equals cos(t) d f^-/dt exactly, which tests/test_scm.py
checks against a float64 finite difference). dx_t/dt is cos(t) z - sin(t) x0
for sCT (one-sample estimate) and sigma_d F_teacher(x_t / sigma_d, t) for sCD.
theta^- = stop_gradient(theta) (not an EMA), the same dropout key is used in
the jvp and the trainable pass (so F - F^- = 0 in value), r = min(1, step / H)
warms the tangent up, g is normalized per sample by its L2 norm
(g / (||g|| + c)), and a learned w_phi(t) weights the loss (sCM sec. 4.2):

  L = mean_b[ exp(w_phi(t)) / D ||F_theta - F^- - g||^2 - w_phi(t) ]

The loss value is uninformative (F - F^- = 0), so the metrics report ||g||
before normalization per time bin, w_phi(t), and the fraction of samples whose
tangent is not finite (must be 0).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fewstep_jax.methods.base import JumpMethod, LossInputs, bcast, register
from fewstep_jax.methods.weighting import LogVariance

#: Edges of the time bins for the per-bin tangent-norm metrics.
TIME_BINS = (0.0, 0.4, 0.8, 1.2, np.pi / 2)


@register("scm_sct")
class SCMTraining(JumpMethod):
    """Consistency training (sCT): the tangent uses the one-sample dx_t/dt."""

    title = "sCT"
    pretrained_method = "trigflow"
    step_cost_target = 1.6
    jump = "each step is one consistency jump to t = 0"
    time_convention = "TrigFlow t in [0, pi/2]; t = 0 data, t = pi/2 noise"
    parameterization = "trigflow"
    supported_steps = None
    default_steps = (1, 2)

    @dataclasses.dataclass(frozen=True)
    class Config:
        sigma_d: float = 0.5
        # Proposal: tau ~ N(p_mean, p_std^2), t = arctan(exp(tau) / sigma_d) (sCM sec. 3).
        p_mean: float = -1.0
        p_std: float = 1.4
        tangent_warmup: int = 10_000  # H: r = min(1, step / H); 0 disables the warmup
        tangent_norm: bool = True  # g <- g / (||g||_2 + c), per sample
        tangent_norm_c: float = 0.1
        adaptive_weighting: bool = True  # learned w_phi(t)
        weighting_channels: int = 128
        label_dropout: float = 0.0
        # Sampling (sCM sec. 5): start at t_max = arctan(sigma_max / sigma_d); the
        # 2-step sampler re-noises to t_mid (or to arctan(sigma_mid / sigma_d) if
        # sigma_mid > 0, which keeps the noise level when sigma_d changes).
        sigma_max: float = 80.0
        t_mid: float = 1.1
        sigma_mid: float = 0.0
        # sCD only: the teacher (a TrigFlow workdir, or an EDM / EDM2 file) and its guidance.
        teacher: str = ""
        teacher_guidance_min: float = 1.0  # guidance s ~ U[min, max] per example (sCM sec. 5,
        teacher_guidance_max: float = 1.0  # ImageNet-512); (1, 1) = no guidance

    distill = False

    def check(self) -> None:
        c = self.cfg
        if c.sigma_d <= 0 or c.p_std <= 0 or c.sigma_max <= 0:
            raise ValueError(f"{self.name}: sigma_d, p_std and sigma_max must be positive")
        if c.tangent_warmup < 0 or c.tangent_norm_c < 0:
            raise ValueError(f"{self.name}: tangent_warmup and tangent_norm_c must be >= 0")
        if not 0.0 <= c.label_dropout < 1.0:
            raise ValueError(f"{self.name}: label_dropout must be in [0, 1), got {c.label_dropout}")
        if not 0.0 < c.t_mid < np.pi / 2:
            raise ValueError(f"{self.name}: t_mid must be in (0, pi/2), got {c.t_mid}")
        if not self.distill and (c.teacher or c.teacher_guidance_max != 1.0 or c.teacher_guidance_min != 1.0):
            raise ValueError("scm_sct trains without a teacher: method.teacher / teacher_guidance_* are for 'scm_scd'")

    # -- parameters --------------------------------------------------------
    @property
    def weighting_net(self) -> LogVariance:
        return LogVariance(channels=self.cfg.weighting_channels)

    def init_params(self, rng, example_batch):
        k_net, k_w = jax.random.split(rng)
        params = super().init_params(k_net, example_batch)
        if self.cfg.adaptive_weighting:
            params["weight"] = self.weighting_net.init(k_w, jnp.zeros((1,), jnp.float32))["params"]
        return params

    # -- the model ---------------------------------------------------------
    @property
    def t_max(self) -> float:
        return float(np.arctan(self.cfg.sigma_max / self.cfg.sigma_d))

    @property
    def mid_time(self) -> float:
        c = self.cfg
        return float(np.arctan(c.sigma_mid / c.sigma_d)) if c.sigma_mid > 0 else c.t_mid

    def consistency_fn(self, net_params, x_t, t, y=None, d=None):
        """f_theta(x_t, t) = cos(t) x_t - sin(t) sigma_d F_theta(x_t / sigma_d, t) (sCM eq. 7)."""
        sd = self.cfg.sigma_d
        F = self.apply_net(net_params, x_t / sd, t, y, d)
        return bcast(jnp.cos(t), x_t) * x_t - bcast(jnp.sin(t), x_t) * sd * F

    def sample_time(self, rng, n):
        tau = self.cfg.p_mean + self.cfg.p_std * jax.random.normal(rng, (n,))
        return jnp.arctan(jnp.exp(tau) / self.cfg.sigma_d)

    # -- the tangent (sCM Alg. 1) -------------------------------------------
    def tangent(self, net_params, x_t, t, dxdt, y=None, d=None, *, r=1.0, train=True, dropout_rng=None):
        """(F^-, g): the stop-gradient network output and the raw tangent (sCM Alg. 1).

        One jax.jvp of (u, tt) -> F_{theta^-}(u, tt) at (x_t / sigma_d, t) with
        tangents (cs dx_t/dt / sigma_d, cs) gives cs dF^-/dt; then
        g = -cos(t)^2 (sigma_d F^- - dx_t/dt) - r (cs x_t + sigma_d cs dF^-/dt).
        With r = 1, g = cos(t) d/dt f_{theta^-}(x_t, t) along dx_t/dt.
        Shapes: x_t, dxdt [B, ...]; t [B]; returns two [B, ...] arrays (float32 or wider).
        """
        sd = self.cfg.sigma_d
        frozen_net = jax.lax.stop_gradient(net_params)
        cs = jnp.cos(t) * jnp.sin(t)

        def F_minus(u, tt):
            return self.apply_net(frozen_net, u, tt, y, d, train=train, dropout_rng=dropout_rng)

        F_m, cs_dF = jax.jvp(F_minus, (x_t / sd, t), (bcast(cs, x_t) * dxdt / sd, cs))
        cos2 = bcast(jnp.cos(t) ** 2, x_t)
        g = -cos2 * (sd * F_m - dxdt) - r * (bcast(cs, x_t) * x_t + sd * cs_dF)
        return F_m, jax.lax.stop_gradient(g)

    def velocity(self, x0, z, x_t, t, y, frozen, guidance):
        """dx_t/dt for the tangent: sCT uses the one-sample cos(t) z - sin(t) x0."""
        del x_t, y, frozen, guidance
        return bcast(jnp.cos(t), x0) * z - bcast(jnp.sin(t), x0) * x0

    def student_d(self, guidance):
        """The second conditioning input of the student (sCD: the guidance scale)."""
        del guidance
        return None

    def loss(self, params, batch, rng, step, inputs=LossInputs()):
        """sCM loss (Alg. 1); see the module docstring."""
        c = self.cfg
        x0, y = batch["x"], batch.get("y")
        n = x0.shape[0]
        k_t, k_z, k_drop, k_lab, k_s = jax.random.split(rng, 5)
        t = self.sample_time(k_t, n)
        z = c.sigma_d * jax.random.normal(k_z, x0.shape, x0.dtype)
        x_t = bcast(jnp.cos(t), x0) * x0 + bcast(jnp.sin(t), x0) * z
        if y is not None:
            y = self.drop_labels(y, k_lab, c.label_dropout)
        guidance = jax.random.uniform(k_s, (n,), minval=c.teacher_guidance_min, maxval=c.teacher_guidance_max)
        dxdt = self.velocity(x0, z, x_t, t, y, inputs.frozen, guidance)
        d = self.student_d(guidance)
        r = 1.0 if c.tangent_warmup == 0 else jnp.minimum(1.0, step.astype(jnp.float32) / c.tangent_warmup)
        F_m, g = self.tangent(params["net"], x_t, t, dxdt, y, d, r=r, train=True, dropout_rng=k_drop)

        flat = g.reshape(n, -1)
        g_norm = jnp.sqrt(jnp.sum(flat**2, axis=1))  # per-sample L2 over all non-batch dims
        finite = jnp.all(jnp.isfinite(flat), axis=1)
        if c.tangent_norm:
            g = g / bcast(g_norm + c.tangent_norm_c, g)
        F = self.apply_net(params["net"], x_t / c.sigma_d, t, y, d, train=True, dropout_rng=k_drop)
        err = jnp.sum(((F - F_m - g) ** 2).reshape(n, -1), axis=1) / flat.shape[1]
        if c.adaptive_weighting:
            w = self.weighting_net.apply({"params": params["weight"]}, t)
            per_example = jnp.exp(w) * err - w
        else:
            w = jnp.zeros_like(t)
            per_example = err
        metrics = {
            "tangent_nonfinite_frac": 1.0 - jnp.mean(finite.astype(jnp.float32)),
            "tangent_warmup_r": jnp.asarray(r, jnp.float32),
            "w_phi_mean": jnp.mean(w),
        }
        for lo, hi in zip(TIME_BINS[:-1], TIME_BINS[1:]):
            in_bin = (t >= lo) & (t < hi)
            count = jnp.maximum(jnp.sum(in_bin), 1)
            tag = f"t{lo:.1f}-{hi:.1f}"
            metrics[f"g_norm/{tag}"] = jnp.sum(jnp.where(in_bin, g_norm, 0.0)) / count
            metrics[f"w_phi/{tag}"] = jnp.sum(jnp.where(in_bin, w, 0.0)) / count
        return jnp.mean(per_example), metrics

    # -- sampling ----------------------------------------------------------
    def sample_times(self, num_steps: int) -> list[float]:
        """t_max, then num_steps - 1 re-noising times t_mid * (N-1-i)/(N-1), i = 0..N-2.

        1 step: [t_max]; 2 steps: [t_max, t_mid] (sCM sec. 5, t_mid = 1.1); N steps
        spread the intermediate times evenly below t_mid.
        """
        mids = [self.mid_time * (num_steps - 1 - i) / (num_steps - 1) for i in range(num_steps - 1)]
        return [self.t_max, *mids]

    def check_guidance(self, guidance: float) -> None:
        if guidance != 1.0:
            raise ValueError(f"{self.name}: classifier-free guidance is not available at sampling time")

    def sample(self, params, rng, *, num_samples, labels=None, num_steps, sampler="euler", guidance=1.0):
        """Multistep consistency sampling (Song et al. 2023, Alg. 1 in TrigFlow form):
        x = sigma_d z at t_max, x0 = f(x, t_max); for each later time t_i:
        x = cos(t_i) x0 + sin(t_i) sigma_d z_i, x0 = f(x, t_i)."""
        self.check_steps(num_steps)
        self.check_sampler(sampler)
        self.check_guidance(guidance)
        y = self.sample_labels(num_samples, labels)
        d = self.student_d(jnp.full((num_samples,), guidance, jnp.float32))
        shape = (num_samples, *self.info.shape)
        keys = jax.random.split(rng, num_steps)
        sd = self.cfg.sigma_d
        x0 = jnp.zeros(shape, jnp.float32)
        for i, t_i in enumerate(self.sample_times(num_steps)):
            noise = sd * jax.random.normal(keys[i], shape, jnp.float32)
            x = noise if i == 0 else np.cos(t_i) * x0 + np.sin(t_i) * noise
            x0 = self.consistency_fn(params["net"], x, jnp.full((num_samples,), t_i, jnp.float32), y, d)
        return x0


@register("scm_scd")
class SCMDistillation(SCMTraining):
    """Consistency distillation (sCD): dx_t/dt = sigma_d F_teacher(x_t / sigma_d, t).

    The teacher is the EMA network of a TrigFlow run (method.teacher = its
    workdir), or an official EDM / EDM2 model (method.teacher = the released .pkl or
    its import_weights folder) through the exact EDM -> TrigFlow conversion,
    evaluated in eval mode. With teacher guidance (ImageNet-512 recipe)
    each example draws s ~ U[min, max], the teacher velocity is
    F_u + s (F_c - F_u), and the student receives s as its `d` input.
    """

    title = "sCD"
    teacher_method = "trigflow"
    distill = True

    def check(self) -> None:
        super().check()
        c = self.cfg
        if not c.teacher:
            raise ValueError(
                "scm_scd needs method.teacher: the workdir of a trained TrigFlow run, or an official EDM / EDM2 file"
            )
        if not 1.0 <= c.teacher_guidance_min <= c.teacher_guidance_max:
            raise ValueError("scm_scd: need 1 <= teacher_guidance_min <= teacher_guidance_max")
        if self.guided_teacher:
            if not self.conditional:
                raise ValueError("scm_scd: teacher guidance needs class-conditional data")
            if not getattr(self.net, "use_d", False):
                raise ValueError(
                    "scm_scd: teacher guidance feeds the scale to the student as `d`: set model.use_d=True"
                )

    @property
    def guided_teacher(self) -> bool:
        return self.cfg.teacher_guidance_max > 1.0

    def teacher_config(self, config: Any, source: str) -> Any:
        """The teacher's config (model, data, method sections) as this method uses it, checked: a
        TrigFlow run on this data, or an official EDM / EDM2 file (or its import_weights folder),
        an EDM-preconditioned denoiser used through the exact TrigFlow conversion
        (models.pretrained.as_trigflow), whose data shape and labels were checked when it was loaded
        (experiment.check_imported_data). Raises a one-line ValueError otherwise."""
        from fewstep_jax.models import pretrained

        if "pretrained" in config and config.method.name != self.teacher_method:
            config = pretrained.as_trigflow(config)
            if self.guided_teacher:
                raise ValueError(
                    f"scm_scd: teacher guidance (method.teacher_guidance_max > 1) needs the teacher's "
                    f"unconditional output at the null label, and {source} has none: NVlabs' EDM / EDM2 models "
                    "were trained without label dropout (EDM2 guides with separate unconditional files); set "
                    "--config.method.teacher_guidance_max=1.0 --config.model.use_d=False"
                )
        if config.method.name != self.teacher_method:
            raise ValueError(
                f"scm_scd: the teacher at {source} is a {config.method.name!r} run, not {self.teacher_method!r}"
            )
        self.check_teacher_data(source, config)
        if abs(config.method.sigma_d - self.cfg.sigma_d) > 1e-12:
            raise ValueError(
                f"scm_scd: teacher sigma_d={config.method.sigma_d} differs from method.sigma_d={self.cfg.sigma_d}"
            )
        return config

    def load_frozen(self, loader):
        """The teacher's EMA network params (and its network, built from its checked config,
        teacher_config)."""
        from fewstep_jax import models  # methods stay free of model imports at module level

        config, teacher_params = loader(self.cfg.teacher)
        config = self.teacher_config(config, self.cfg.teacher)
        self.teacher_net = models.build(config.model, data_shape=self.info.shape, num_classes=self.info.num_classes)
        return {"teacher": teacher_params}

    def teacher_velocity(self, teacher_params: Any, x_t, t, y, guidance):
        """sigma_d F_teacher(x_t / sigma_d, t), guided per example when configured."""
        sd = self.cfg.sigma_d

        def apply(x, tt, yy, d=None):
            del d  # the teacher takes no guidance input
            yy = yy if self.conditional else None
            return self.teacher_net.apply({"params": teacher_params}, x, tt, y=yy, train=False)

        u = x_t / sd
        if not self.guided_teacher or y is None:
            return sd * apply(u, t, y)
        cond, uncond = self.cond_and_null(apply, u, t, y)
        return sd * (uncond + bcast(guidance, cond) * (cond - uncond))

    def velocity(self, x0, z, x_t, t, y, frozen, guidance):
        del x0, z
        if frozen is None:
            raise ValueError("scm_scd: the teacher parameters were not passed to the loss")
        return jax.lax.stop_gradient(self.teacher_velocity(frozen["teacher"], x_t, t, y, guidance))

    def student_d(self, guidance):
        return guidance if self.guided_teacher else None

    def check_guidance(self, guidance: float) -> None:
        if not self.guided_teacher and guidance != 1.0:
            raise ValueError("scm_scd: guidance at sampling time needs a student distilled with teacher guidance")
