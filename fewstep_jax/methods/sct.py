"""SCT: Stable Consistency Tuning (Wang, Geng, Li 2024, "Stable Consistency Tuning:
Understanding and Improving Consistency Models"), built on ECT (methods/ect.py).

Time convention (EDM, as ECT): t is the noise level sigma, x_t = x0 + t eps, t = 0 data.

SCT's official repository publishes no code, so the formulas marked INTERPRETATION below are
this suite's reading of the paper; each is behind a config flag (README, "Methods").

1. Variance-reduced target (SCT sec. 4.1, the score identity / "stable target field"): instead
   of the single sample that produced x_t, the direction to x_r uses the posterior estimate
   from a reference set R_i (the mini-batch, plus an optional bank of recent batches; for
   class-conditional training only references of the same class, unless the row's label was
   dropped to the null class):
       w_ij = softmax_j(-||x_t,i - x0_j||^2 / (2 t_i^2)),   x0_hat_i = sum_j w_ij x0_j,
       eps_hat_i = (x_t,i - x0_hat_i) / t_i,   x_r,i = x_t,i - (t_i - r_i) eps_hat_i.
   The own sample is always in R_i. Its term is evaluated exactly, from its own noise
   (||x_t,i - x0_i|| = t_i ||eps_i||, and (x_t,i - x0_i) / t_i = eps_i), which avoids the
   cancellation of (x_t - x0) / t at small t; so with |R_i| = 1 (`reference_set='own'`) the
   target is ECT's bit for bit (in eager mode; under jit XLA may fuse the two graphs
   differently, at the level of float32 rounding). Other distances use ||a||^2 - 2 a.b + ||b||^2 with a
   full-precision matmul. Where r = 0 the target is x0_hat (INTERPRETATION).
2. Smoother schedule (sec. 4.2, INTERPRETATION): r = max(0, t (1 - n(t) / q^(1 + iteration / d)))
   (`mapping='smooth'`, the default here), with iCT's 1 / (t - r) weighting. The iteration is
   counted as ECT's stages are (methods/ect.py, training_stage: max(step - 1, 0) for the 0-based
   step), so the smooth exponent equals ECT's stage exponent at the first step of every stage.
3. Phased ("multistep") consistency tuning (sec. 4.3): edges 0 = s_0 < s_1 < ... < s_M =
   sigma_max (`phase_edges` holds the interior ones). A sample at t in (s_{m-1}, s_m] learns the
   map to its lower edge, f(x_t, t) = (s/t) x_t + (1 - s/t) D(x_t, t) with s = s_{m-1} (a DDIM
   step), with r = max(s, r(t)) and target x_r itself where r = s. Sampling walks the M edges.
   Edge skipping (INTERPRETATION): after the jump to edge s_m the network is queried at
   s_m - eta (s_m - s_{m-1}) instead of at s_m, where a phased model is discontinuous, and its
   denoised estimate takes the DDIM step from s_m to s_{m-1} (`edge_skip_eta`; 0 = plain phased
   sampling).
4. Guidance from an earlier snapshot of the same model (sec. 4.4, autoguidance style,
   INTERPRETATION): the first EMA is copied into the train state after `guide_snapshot_step`
   optimizer steps, and sampling with guidance g uses D_weak + g (D - D_weak) in every step,
   i.e. f + w (f - f_weak) with w = g - 1 in the paper's notation (g = 1: unguided). The
   guided pair counts as one network evaluation, as for classifier-free guidance.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fewstep_jax.methods.base import register
from fewstep_jax.methods.ect import ECT

REFERENCE_SETS = ("batch", "own")


def score_identity_eps(
    x_t: jax.Array, t: jax.Array, eps: jax.Array, refs: jax.Array, ref_mask: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Posterior estimate of the noise of x_t from a reference set (SCT sec. 4.1).

    Args:
      x_t: [B, ...] noisy samples, x_t,i = x0_i + t_i eps_i.
      t: [B] noise levels.
      eps: [B, ...] each row's own noise (its own clean sample is always a reference).
      refs: [R, ...] other clean references x0_j.
      ref_mask: [B, R] bool, whether reference j belongs to the set of row i.
    Returns:
      eps_hat [B, ...] = sum_j w_ij (x_t,i - x0_j) / t_i over {own} + references, and the
      weights [B, 1 + R] (column 0: own sample).
    """
    b = x_t.shape[0]
    dim = int(np.prod(x_t.shape[1:]))
    xt, e, rf = x_t.reshape(b, dim), eps.reshape(b, dim), refs.reshape(refs.shape[0], dim)
    hi = jax.lax.Precision.HIGHEST  # the default TPU matmul precision would swamp small distances
    sq = jnp.sum(xt**2, 1)[:, None] - 2.0 * jnp.matmul(xt, rf.T, precision=hi) + jnp.sum(rf**2, 1)[None, :]
    logits = -jnp.maximum(sq, 0.0) / (2.0 * t[:, None] ** 2)
    own = -0.5 * jnp.sum(e**2, axis=1, keepdims=True)  # -||x_t - x0_own||^2 / (2 t^2), exactly
    logits = jnp.concatenate([own, jnp.where(ref_mask, logits, -jnp.inf)], axis=1)
    w = jax.nn.softmax(logits, axis=1)
    w_own, w_ref = w[:, :1], w[:, 1:]
    w_other = jnp.sum(w_ref, axis=1, keepdims=True)  # = 1 - w_own, without its cancellation
    others = (w_other * xt - jnp.matmul(w_ref, rf, precision=hi)) / t[:, None]
    return (w_own * e + others).reshape(x_t.shape), w


@register("sct")
class StableConsistencyTuning(ECT):
    """ECT plus SCT's variance-reduced target, smooth schedule, phases and snapshot guidance."""

    title = "SCT"

    @dataclasses.dataclass(frozen=True)
    class Config(ECT.Config):
        mapping: str = "smooth"  # SCT's continuous schedule (INTERPRETATION)
        reference_set: str = "batch"  # 'batch': the mini-batch (+ bank); 'own': |R| = 1, i.e. ECT's target
        reference_bank: int = 0  # images of recent batches kept as extra references (paper value not public)
        class_masked: bool = True  # conditional data: references of the row's class only
        phase_edges: tuple = ()  # interior edges s_1 < ... < s_{M-1} of phased training; () = one phase
        edge_skip_eta: float = 0.0  # edge-skipping sampler (INTERPRETATION); 0 = plain phased sampling
        guide_snapshot_step: int = 0  # copy the first EMA after this many steps for guidance; 0 = never

    def check(self) -> None:
        super().check()
        c = self.cfg
        if c.reference_set not in REFERENCE_SETS:
            raise ValueError(f"sct: reference_set must be one of {REFERENCE_SETS}, got {c.reference_set!r}")
        if c.reference_bank < 0 or c.guide_snapshot_step < 0:
            raise ValueError("sct: reference_bank and guide_snapshot_step must be >= 0")
        if c.reference_bank and c.reference_set == "own":
            raise ValueError("sct: reference_bank needs reference_set='batch'")
        edges = [float(e) for e in c.phase_edges]
        if any(not 0 < e < c.sigma_max for e in edges) or edges != sorted(set(edges)):
            raise ValueError(f"sct: phase_edges must increase strictly inside (0, sigma_max), got {c.phase_edges}")
        if not 0.0 <= c.edge_skip_eta < 1.0:
            raise ValueError(f"sct: edge_skip_eta must be in [0, 1), got {c.edge_skip_eta}")
        if c.edge_skip_eta and not edges:
            raise ValueError("sct: edge_skip_eta applies to phased models: set phase_edges")
        if edges:
            self.supported_steps = (len(edges) + 1,)
            self.default_steps = self.supported_steps

    @property
    def edges(self) -> list[float]:
        """0 = s_0 < s_1 < ... < s_M = sigma_max."""
        return [0.0, *[float(e) for e in self.cfg.phase_edges], self.cfg.sigma_max]

    # -- the method's state: reference bank and guidance snapshot ---------------
    def init_extra(self, params):
        c = self.cfg
        extra: dict[str, Any] = {}
        if c.reference_bank:
            extra["bank_x"] = jnp.zeros((c.reference_bank, *self.info.shape), jnp.float32)
            extra["bank_y"] = jnp.zeros((c.reference_bank,), jnp.int32)
            extra["bank_count"] = jnp.zeros((), jnp.int32)
        if c.guide_snapshot_step:
            extra["weak"] = params["net"]
            extra["weak_step"] = jnp.array(-1, jnp.int32)
        return extra

    def update_extra(self, extra, *, batch, step, ema_params):
        c = self.cfg
        extra = dict(extra)
        if c.reference_bank:  # newest first; the oldest images fall off the end
            k = c.reference_bank
            y = batch.get("y", jnp.zeros(batch["x"].shape[:1], jnp.int32))
            extra["bank_x"] = jnp.concatenate([batch["x"].astype(jnp.float32), extra["bank_x"]])[:k]
            extra["bank_y"] = jnp.concatenate([y.astype(jnp.int32), extra["bank_y"]])[:k]
            extra["bank_count"] = jnp.minimum(extra["bank_count"] + batch["x"].shape[0], k)
        if c.guide_snapshot_step:
            if ema_params is None:
                raise ValueError(
                    "sct: the guidance snapshot copies an EMA: set train.ema_decays, ema_halflives or ema_sigma_rels"
                )
            take = step + 1 == c.guide_snapshot_step
            extra["weak"] = jax.tree.map(lambda e, w: jnp.where(take, e, w), ema_params["net"], extra["weak"])
            extra["weak_step"] = jnp.where(take, step + 1, extra["weak_step"])
        return extra

    def sampling_inputs(self, extra):
        if self.cfg.guide_snapshot_step and int(jax.device_get(extra["weak_step"])) >= 0:
            return {"weak": extra["weak"]}
        return {}

    # -- training ---------------------------------------------------------------
    def lower_edge(self, t):
        interior = jnp.asarray([0.0, *self.cfg.phase_edges], jnp.float32)
        return jnp.max(jnp.where(interior[None, :] < t[:, None], interior[None, :], 0.0), axis=1)

    def reference_mask(self, y_row, ref_y):
        """[B, R]: same class as the row (conditional, class_masked), or any for null-label rows."""
        if not (self.conditional and self.cfg.class_masked) or y_row is None:
            return jnp.ones((1, ref_y.shape[0]), bool)
        return (ref_y[None, :] == y_row[:, None]) | (y_row[:, None] == self.info.num_classes)

    def target_eps(self, x0, y0, x_t, t, eps, y, extra):
        """eps_hat from the reference set (score identity); see score_identity_eps."""
        c = self.cfg
        n = x0.shape[0]
        y0 = jnp.zeros((n,), jnp.int32) if y0 is None else y0.astype(jnp.int32)
        refs, ref_y, valid = x0, y0, ~jnp.eye(n, dtype=bool)  # the batch, without the own row
        if c.reference_set == "own":  # no other reference: the estimator returns eps itself
            refs, ref_y, valid = x0[:0], y0[:0], jnp.zeros((n, 0), bool)
        elif c.reference_bank:
            refs = jnp.concatenate([refs, extra["bank_x"].astype(x0.dtype)])
            ref_y = jnp.concatenate([ref_y, extra["bank_y"]])
            in_bank = jnp.arange(c.reference_bank) < extra["bank_count"]
            valid = jnp.concatenate([valid, jnp.broadcast_to(in_bank, (n, c.reference_bank))], axis=1)
        mask = valid & self.reference_mask(y, ref_y)
        eps_hat, w = score_identity_eps(x_t, t, eps, jax.lax.stop_gradient(refs), mask)
        metrics = {
            "ref_own_weight": jnp.mean(w[:, 0]),
            "ref_effective_size": jnp.mean(1.0 / jnp.sum(w**2, axis=1)),
            "ref_set_size": jnp.mean(1.0 + jnp.sum(mask, axis=1)),
        }
        return eps_hat, metrics

    # -- sampling ---------------------------------------------------------------
    def can_guide(self, params):
        return "weak" in params

    def check_guidance(self, guidance, params):
        if guidance != 1.0 and "weak" not in params:
            raise ValueError(
                "sct: guidance needs the EMA snapshot: set method.guide_snapshot_step and train past that step"
            )

    def sampling_denoiser(self, params, guidance):
        D = super().sampling_denoiser(params, 1.0)
        if guidance == 1.0:
            return D
        D_weak = super().sampling_denoiser({"net": params["weak"]}, 1.0)

        def guided(x, t, y):
            weak = D_weak(x, t, y)
            return weak + guidance * (D(x, t, y) - weak)

        return guided

    def sample(self, params, rng, *, num_samples, labels=None, num_steps, sampler="euler", guidance=1.0):
        """Unphased: ECT's multistep sampler. Phased: deterministic walk over the M edges, from
        x at s_m to s_{m-1}: x <- (s_{m-1}/s_m) x + (1 - s_{m-1}/s_m) D(x, t_q), with t_q = s_m
        for the first step and s_m - eta (s_m - s_{m-1}) after it (edge skipping)."""
        if not self.cfg.phase_edges:
            return super().sample(
                params, rng, num_samples=num_samples, labels=labels, num_steps=num_steps, sampler=sampler,
                guidance=guidance,
            )  # fmt: skip
        self.check_steps(num_steps)
        self.check_sampler(sampler)
        self.check_guidance(guidance, params)
        y = self.sample_labels(num_samples, labels)
        D = self.sampling_denoiser(params, guidance)
        edges, eta = self.edges, self.cfg.edge_skip_eta
        x = np.float32(edges[-1]) * jax.random.normal(rng, (num_samples, *self.info.shape), jnp.float32)
        for m in range(len(edges) - 1, 0, -1):
            hi, lo = edges[m], edges[m - 1]
            t_q = hi if m == len(edges) - 1 else hi - eta * (hi - lo)
            ratio = np.float32(lo / hi)
            x = ratio * x + (1.0 - ratio) * D(x, jnp.full((num_samples,), t_q, jnp.float32), y)
        return x
