"""Align Your Flow (AYF; Sabour, Fidler, Kreis 2025, "Align Your Flow: Scaling Continuous-Time Flow
Map Distillation", arXiv 2506.14603, NeurIPS 2025; code in NVlabs/FastGen >= v0.2.0, AYFModel):
flow-map distillation from a flow or diffusion teacher.

Time convention: the flow-map core's (methods/flowmap.py), t = 1 noise. The student is
f(x_t, t, s) = x_t + (s - t) F(x_t, t, s), so F = u with s = r; the network is MeanFlow's,
u(z, t, r) = net(z, t, d = t - r). The teacher velocity v_phi(z, t) (in this convention) comes
from a frozen run or official file (`method.teacher`, loaded through `load_frozen`; NVlabs' EDM /
EDM2 `.pkl` and SiT / REPA `.pt` files as docs/PRETRAINED.md lists them) of one parameterization
(`teacher_kind`):
  flow      the suite's flow matching (data time 1 - t, output x0 - e): v = -net(z, 1 - t)
  edm       EDM preconditioning: sigma = t / (1 - t), v = (z - D(z / (1 - t); sigma)) / t, t <= 80/81
  trigflow  TrigFlow: the same with s = arctan(sigma / sigma_d) and D = cos(s) x_s - sin(s) sigma_d
            F(x_s / sigma_d, s), x_s = cos(s) z / (1 - t)
and is autoguided (AYF sec. 4, Karras et al. 2024): lambda v_phi + (1 - lambda) v_weak with the
weaker teacher run `weak_teacher` (lambda = `autoguidance`; 1 = off).

Eulerian map distillation (AYF Theorem 3.2, eq. 9; EMD): with jvp tangents (v_phi, 1, 0) on (z, t, s)
  g = (F^- - v_phi) + r_w (t - s) D_t F^-,   loss = || F_theta - sg(F^- - g^) ||^2,
g^ = g / (||g|| + c) (tangent normalization, c = 0.1) and r_w warmed up linearly from 0 to r_max
= 0.99 over `tangent_warmup` steps (length unverified). At r_w = 1 without normalization g is the
MeanFlow residual with the teacher velocity (MeanFlow distillation); at s = t or r_w = 0 it is
flow-matching distillation (g = F^- - v_phi). F^- is the same forward pass as F_theta, under sg
(one jvp gives both; the jvp's tangent only enters the target).
Lagrangian map distillation (LMD, eq. 10; `objective='lagrangian'`): jvp tangents (0, 0, 1),
  l = F^- + (s - t) d_s F^- - v_phi(x_t + (s - t) F^-, s),   loss = || F_theta - sg(F^- - l^) ||^2.
The paper finds it over-smooths images (ImageNet-512 4-step FID 6.70 vs 1.70 for EMD).
Not implemented: the adversarial fine-tune (RpGAN with R1/R2 and a StyleGAN2 discriminator,
about 3k iterations; ImageNet-512 AYF-S 1-step 3.32 -> 1.92, 4-step 1.70 -> 1.64), which the
published numbers after fine-tuning need. Unverified and kept as knobs: the (t, s) proposal, the
warmup length, lambda, the weaker model.
Sampling: deterministic composition on the uniform or a custom schedule, or gamma-sampling
(`sample_gamma`: 0 deterministic, 1 restart); no guidance at sampling time.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from fewstep_jax.methods import flowmap
from fewstep_jax.methods.base import REGISTRY, LossInputs, ODEMethod, bcast, register
from fewstep_jax.methods.edm import edm_scalings

OBJECTIVES = ("eulerian", "lagrangian")
#: Teacher parameterizations (the `parameterization` of the teacher run's method).
TEACHER_KINDS = ("flow", "edm", "trigflow")
#: EDM / TrigFlow teachers: t = sigma / (1 + sigma) up to sigma = 80 (EDM's sigma_max).
EDM_T_MAX = 80.0 / 81.0


@register("ayf")
class AlignYourFlow(flowmap.FlowMapMethod):
    """Flow-map distillation (EMD or LMD) from a frozen flow / EDM / TrigFlow teacher."""

    title = "AYF"
    teacher_method = "flow"  # the teacher of the toy2d / digits runs
    parameterization = "meanflow"  # F(z, t, s) = net(z, t, d = t - s)
    jump = "each step is one flow-map jump, f(x_t, t, s) = x_t + (s - t) F"
    no_guidance_because = "the teacher is autoguided in training (method.autoguidance)"

    @dataclasses.dataclass(frozen=True)
    class Config:
        teacher: str = ""  # workdir of the teacher run, or an official file (EDM / EDM2 .pkl, SiT .pt)
        teacher_kind: str = "flow"  # its parameterization: 'flow', 'edm' or 'trigflow'
        weak_teacher: str = ""  # workdir (or official file) of the weaker model for autoguidance
        autoguidance: float = 1.0  # lambda: lambda v_phi + (1 - lambda) v_weak; 1 = off
        objective: str = "eulerian"  # or 'lagrangian'
        t_logit_mean: float = -0.4  # (t, s) = max, min of two logit-normal draws (unverified)
        t_logit_std: float = 1.0
        r_logit_mean: float = -0.4
        r_logit_std: float = 1.0
        ratio_r_eq_t: float = 0.0  # share of rows with s = t (flow-matching distillation rows)
        tangent_warmup: int = 10_000  # r_w goes 0 -> r_max linearly over these steps (unverified)
        r_max: float = 0.99
        tangent_norm: bool = True  # g <- g / (||g|| + c)
        tangent_norm_c: float = 0.1
        sample_gamma: float = 0.0  # 0: deterministic composition, 1: restart
        sample_schedule: tuple[float, ...] = ()  # for k = len - 1 steps; others uniform

    def check(self) -> None:
        c = self.cfg
        if not c.teacher:
            raise ValueError(
                "ayf needs method.teacher: the workdir of a trained flow, EDM or TrigFlow run, or an official "
                "EDM / EDM2 / SiT file (docs/PRETRAINED.md)"
            )
        if c.teacher_kind not in TEACHER_KINDS:
            raise ValueError(f"ayf: teacher_kind must be one of {', '.join(TEACHER_KINDS)}, got {c.teacher_kind!r}")
        if c.objective not in OBJECTIVES:
            raise ValueError(f"ayf: unknown objective {c.objective!r}; known: {', '.join(OBJECTIVES)}")
        if c.autoguidance < 1.0:
            raise ValueError(f"ayf: autoguidance (lambda) must be >= 1 (1 = off), got {c.autoguidance}")
        if c.autoguidance != 1.0 and not c.weak_teacher:
            raise ValueError(
                "ayf: autoguidance != 1 needs method.weak_teacher, the workdir (or official file) of a weaker teacher"
            )
        if c.t_logit_std <= 0 or c.r_logit_std <= 0 or c.tangent_norm_c < 0:
            raise ValueError("ayf: t_logit_std and r_logit_std must be positive and tangent_norm_c >= 0")
        if not 0.0 <= c.ratio_r_eq_t <= 1.0 or not 0.0 <= c.r_max <= 1.0 or c.tangent_warmup < 0:
            raise ValueError("ayf: need ratio_r_eq_t and r_max in [0, 1] and tangent_warmup >= 0")
        if c.sample_schedule:
            flowmap.check_times(c.sample_schedule, "ayf: method.sample_schedule")
        flowmap.gamma_plan(flowmap.times("uniform", 1), c.sample_gamma)
        if not getattr(self.net, "use_d", False):
            raise ValueError("ayf: the student must take the interval h = t - s as `d`: set model.use_d=True")

    # -- the teacher -------------------------------------------------------
    def teacher_config(self, config: Any, source: str) -> Any:
        """The teacher's config (model, data, method sections) as this method uses it, checked: a
        run of `teacher_kind`'s parameterization on this data, sampled by its PF-ODE, or an
        official file (or its import_weights folder) of that parameterization: NVlabs' EDM / EDM2
        models are EDM-preconditioned ('edm'; with teacher_kind 'trigflow' they go through the
        exact TrigFlow conversion models.pretrained.as_trigflow, as sCD's teacher does), SiT's and
        REPA's are 'flow'. Raises a one-line ValueError otherwise."""
        from fewstep_jax.models import pretrained  # methods stay free of model imports at module level

        c = self.cfg
        released = "pretrained" in config
        if released and config.method.name == "edm" and c.teacher_kind == "trigflow":
            config = pretrained.as_trigflow(config)
        method = REGISTRY.get(config.method.name)
        kind = method.parameterization if method is not None else "unknown"
        what = f"a released {config.pretrained.family!r} file" if released else f"a {config.method.name!r} run"
        if method is not None and not issubclass(method, ODEMethod):
            raise ValueError(
                f"ayf: the teacher at {source} is {what}, not a diffusion or flow model sampled by its PF-ODE"
            )
        if kind != c.teacher_kind:
            fix = f"; set --config.method.teacher_kind={kind}" if kind in TEACHER_KINDS else ""
            raise ValueError(
                f"ayf: the teacher at {source} is {what} ({kind} parameterization); "
                f"method.teacher_kind={c.teacher_kind!r} needs a {c.teacher_kind} one{fix}"
            )
        self.check_teacher_data(source, config)
        if kind == "flow" and config.method.get("noise_std", 1.0) != 1.0:
            raise ValueError(f"ayf: the flow teacher at {source} uses noise_std={config.method.noise_std}, not 1")
        return config

    def load_frozen(self, loader):
        """{'teacher': EMA params[, 'weak': EMA params]} of the teacher runs or files, whose networks
        are built from their checked configs (teacher_config)."""
        from fewstep_jax import models  # methods stay free of model imports at module level

        c = self.cfg
        frozen, self.teachers = {}, {}
        for key, source in (("teacher", c.teacher), ("weak", c.weak_teacher if c.autoguidance != 1.0 else "")):
            if not source:
                continue
            config, params = loader(source)
            config = self.teacher_config(config, source)
            net = models.build(config.model, data_shape=self.info.shape, num_classes=self.info.num_classes)
            self.teachers[key] = (net, float(config.method.get("sigma_d", 0.5)))
            frozen[key] = params
        return frozen

    def teacher_velocity(self, which: str, params: Any, z, t, y):
        """v_phi(z, t) in the t = 1 noise convention (see the module docstring); z [B, ...], t [B]."""
        net, sigma_d = self.teachers[which]
        kind = self.cfg.teacher_kind
        y = y if self.conditional else None

        def apply(x, tt):
            return net.apply({"params": params}, x, tt, y=y, train=False)

        if kind == "flow":
            return -apply(z, 1.0 - t)
        t = jnp.minimum(t, EDM_T_MAX)
        sigma = t / (1.0 - t)
        x_sigma = z / bcast(1.0 - t, z)
        if kind == "edm":
            c_skip, c_out, c_in, c_noise = edm_scalings(sigma, sigma_d)
            denoised = bcast(c_skip, z) * x_sigma + bcast(c_out, z) * apply(bcast(c_in, z) * x_sigma, c_noise)
        else:  # trigflow
            s = jnp.arctan(sigma / sigma_d)
            x_s = bcast(jnp.cos(s), z) * x_sigma
            denoised = bcast(jnp.cos(s), z) * x_s - bcast(jnp.sin(s), z) * sigma_d * apply(x_s / sigma_d, s)
        return (z - denoised) / bcast(t, z)

    def guided_teacher(self, frozen, z, t, y):
        """lambda v_phi + (1 - lambda) v_weak (autoguidance), under sg."""
        if frozen is None or "teacher" not in frozen:
            raise ValueError("ayf: the teacher parameters were not passed to the loss")
        lam = self.cfg.autoguidance
        v = self.teacher_velocity("teacher", frozen["teacher"], z, t, y)
        if lam != 1.0:
            v = lam * v + (1.0 - lam) * self.teacher_velocity("weak", frozen["weak"], z, t, y)
        return jax.lax.stop_gradient(v)

    # -- the student -------------------------------------------------------
    def flow_map(self, net_params, z, t, r, y=None, *, train=False, dropout_rng=None):
        """F(z, t, s = r) = net(z, t, d = t - r | y). z [B, ...]; t, r [B]."""
        return self.apply_net(net_params, z, t, y, t - r, train=train, dropout_rng=dropout_rng)

    def sample_t_r(self, rng, n: int):
        c = self.cfg
        k_t, k_r = jax.random.split(rng)
        t, r = flowmap.ordered(
            flowmap.logit_normal(k_t, n, c.t_logit_mean, c.t_logit_std),
            flowmap.logit_normal(k_r, n, c.r_logit_mean, c.r_logit_std),
        )
        return t, jnp.where(flowmap.first_rows(n, int(n * c.ratio_r_eq_t)), t, r)

    def residual(self, params, batch, rng, step, frozen, *, train=True) -> dict[str, Any]:
        """(keys: t, r, z_t, u, g, r_w) the student output and the raw residual g of EMD or l of LMD.
        The key split of `rng` into (t/s, noise, dropout) is part of the contract."""
        c = self.cfg
        x, y = batch["x"], batch.get("y")
        n = x.shape[0]
        k_tr, k_e, k_drop = jax.random.split(rng, 3)
        t, r = self.sample_t_r(k_tr, n)
        t, r = t.astype(x.dtype), r.astype(x.dtype)
        z, _ = flowmap.noisy(x, jax.random.normal(k_e, x.shape, x.dtype), t)
        y = jnp.asarray(y, jnp.int32) if (self.conditional and y is not None) else None

        def u_fn(z_, t_, r_):
            return self.flow_map(params["net"], z_, t_, r_, y, train=train, dropout_rng=k_drop)

        r_w = flowmap.linear_warmup(step, c.tangent_warmup, c.r_max).astype(x.dtype)
        if c.objective == "eulerian":
            v_phi = self.guided_teacher(frozen, z, t, y)
            u, du_dt = flowmap.total_derivative(u_fn, z, t, r, v_phi)
            u_m = jax.lax.stop_gradient(u)
            g = (u_m - v_phi) + r_w * bcast(t - r, z) * jax.lax.stop_gradient(du_dt)
        else:
            u, du_ds = flowmap.partial_r(u_fn, z, t, r)
            u_m = jax.lax.stop_gradient(u)
            x_s = z + bcast(r - t, z) * u_m
            g = u_m + bcast(r - t, z) * jax.lax.stop_gradient(du_ds) - self.guided_teacher(frozen, x_s, r, y)
        return dict(t=t, r=r, z_t=z, u=u, g=jax.lax.stop_gradient(g), r_w=r_w)

    def loss(self, params, batch, rng, step, inputs=LossInputs()):
        """mean_b mean_pixels (F - sg(F^- - g^))^2 (AYF eq. 9 / 10 with tangent normalization).

        The value is ||g^||^2 / D (uninformative once normalized); metrics report ||g|| before
        normalization, r_w, and the fraction of rows whose g is not finite (must be 0)."""
        c = self.cfg
        terms = self.residual(params, batch, rng, step, inputs.frozen, train=True)
        u, g = terms["u"], terms["g"]
        g_norm = jnp.sqrt(flowmap.sum_sq(g))
        g_hat = flowmap.tangent_normalize(g, c.tangent_norm_c) if c.tangent_norm else g
        target = jax.lax.stop_gradient(u - g_hat)
        per_example = flowmap.mean_sq(u - target)
        flat = g.reshape(g.shape[0], -1)
        return jnp.mean(per_example), {
            "g_norm": jnp.mean(g_norm),
            "tangent_warmup_r": jnp.asarray(terms["r_w"], jnp.float32),
            "tangent_nonfinite_frac": 1.0 - jnp.mean(jnp.all(jnp.isfinite(flat), axis=1).astype(jnp.float32)),
        }
