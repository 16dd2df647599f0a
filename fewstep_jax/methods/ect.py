"""ECT: Easy Consistency Tuning (Geng et al. 2024, "Consistency Models Made Easy"), as in its
official code (CIFAR-10 and ImageNet-64 branches).

Time convention (EDM, as methods/edm.py): t is the noise level sigma, x_t = x0 + t eps, t = 0
data. The consistency function is the preconditioned denoiser f(x, t) = D(x, t) (ECT eq. 5 with
EDM's c_skip / c_out), so f(x, 0) = x; for CIFAR-10, sampling shifts c_skip / c_out by
sigma_min = 0.003 so that f(x, 0.003) = x exactly (`sigma_min_shift`).

Training (ECT sec. 3, Alg. 1), per sample:
- t = exp(P_mean + P_std N(0, 1))                       (log-normal, like EDM)
- r = max(0, t (1 - n(t) / q^e)), n(t) = 1 + k sigmoid(-b t)   (the "sigmoid" mapping, eq. 9)
  with e = stage + offset, stage = max(step - 1, 0) // d for the 0-based optimizer step (see
  training_stage: the official tick loop enters stage s >= 1 at step s d + 1, not s d). offset = 1
  is the official code (its stage 0 already tunes a pretrained diffusion model); offset = 0 is
  the paper's q^stage, whose stage 0 gives r = 0, i.e. diffusion pre-training. `mapping='smooth'`
  replaces the stage by the continuous max(step - 1, 0) / d (SCT's smoother schedule, see
  methods/sct.py), which equals the stage at the first step of every stage.
- one noise eps for both points: x_t = x0 + t eps, x_r = x_t - (t - r) eps = x0 + r eps
- prediction f_theta(x_t, t) and target SG(f_theta(x_r, r)) with the SAME online weights and
  the same dropout key, both in train mode (not an EMA teacher); where r = 0 the target is x_r
  (= x0); nan_to_num on the target
- L = w(t, r) (sqrt(||f_t - f_r||^2 + c^2) - c)  (pseudo-Huber, sum over pixels; c = 0 gives the
  L2 norm), with w = 1 / (t - r) (CIFAR-10) or 1 / t^2 + 1 / sigma_d^2 (ImageNet-64).
Sampling (ECT sec. 4): x = sigma_max z, x0 = f(x, sigma_max); each later step re-noises to an
intermediate t_i (x = x0 + t_i z_i) and denoises again. 2 steps use t_mid (0.821 on CIFAR-10,
1.526 on ImageNet-64).

methods/sct.py builds SCT on this class through two hooks: `target_eps` (the noise direction
that defines x_r) and the phase edges (phased / multistep consistency).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fewstep_jax.methods.base import JumpMethod, LossInputs, bcast, register
from fewstep_jax.methods.edm import Preconditioned

MAPPINGS = ("stages", "smooth")
WEIGHTINGS = ("inv_dt", "edm")


def training_stage(iteration: jax.Array, d: int, *, smooth: bool = False) -> jax.Array:
    """The stage (float32) of ECT's mapping at the 0-based optimizer step `iteration`, as the
    official training loop (locuslab/ect, training/ct_training_loop.py) schedules it:
    max(iteration - 1, 0) // d, or max(iteration - 1, 0) / d with smooth (SCT's schedule).

    The official loop counts kimg "ticks" and moves to the next stage only at a tick's end
    (stage = (ticks done - 1) // double_ticks, d = double_ticks x iterations per tick), and its
    tick 0 is a single iteration. So steps 0 .. d train in stage 0 and stage s >= 1 starts at
    step s d + 1: one step after iteration // d, the number of images seen before the step over
    the images per stage, would switch. The smooth exponent uses the same count, so it meets the
    stages at the first step of each stage and floor(smooth) == stage at every step.
    """
    done = jnp.maximum(jnp.asarray(iteration) - 1, 0)
    if smooth:
        return done.astype(jnp.float32) / d
    return (done.astype(jnp.int32) // d).astype(jnp.float32)


def mapping_ratio(
    t: jax.Array, iteration: jax.Array, *, q: float, d: int, k: float, b: float, offset: int, smooth: bool
) -> jax.Array:
    """r / t of ECT's sigmoid mapping function (ECT eq. 9 and Sec. 3.3):
    1 - n(t) / q^e, n(t) = 1 + k sigmoid(-b t), e = offset + training_stage(iteration, d, smooth),
    clipped at 0 (r >= 0)."""
    stage = training_stage(iteration, d, smooth=smooth)
    n = 1.0 + k * jax.nn.sigmoid(-b * t)
    return jnp.maximum(0.0, 1.0 - n / jnp.power(q, offset + stage))


def pseudo_huber(sq_dist: jax.Array, c: float) -> jax.Array:
    """sqrt(d + c^2) - c of a squared distance d >= 0 (ECT sec. 3.3; c = 0: the L2 norm), with a
    finite gradient at d = 0."""
    if c > 0:
        return jnp.sqrt(sq_dist + c**2) - c
    positive = sq_dist > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq_dist, 1.0)), 0.0)


@register("ect")
class ECT(Preconditioned, JumpMethod):
    title = "ECT"
    pretrained_method = "edm"
    step_cost_target = 1.4
    jump = "one consistency jump per step"
    time_convention = "EDM sigma: x_t = x0 + t eps, t = 0 data"
    supported_steps = None
    default_steps = (1, 2)

    @dataclasses.dataclass(frozen=True)
    class Config:
        sigma_d: float = 0.5
        p_mean: float = -1.1  # CIFAR-10 (-1.1, 2.0); ImageNet-64 (-0.8, 1.6)
        p_std: float = 2.0
        # The mapping t -> r (ECT eq. 9): r = max(0, t (1 - n(t) / q^e)).
        mapping: str = "stages"  # 'stages' (e = stage + offset) or 'smooth' (SCT: the stage without the floor)
        q: float = 2.0  # CIFAR-10: 2; ImageNet-64: 4
        stage_length: int = 25_000  # d: iterations per stage (stage s >= 1 starts at step s d + 1)
        k: float = 8.0
        b: float = 1.0
        stage_offset: int = 1  # 1: q^(stage + 1), the official code; 0: q^stage, the paper (stage 0 = diffusion)
        huber_c: float = 0.0  # pseudo-Huber c; 0 on CIFAR-10, 0.06 on ImageNet-64
        weighting: str = "inv_dt"  # 'inv_dt': 1 / (t - r) (CIFAR-10); 'edm': 1 / t^2 + 1 / sigma_d^2 (ImageNet-64)
        label_dropout: float = 0.0
        # Sampling.
        sigma_max: float = 80.0
        sigma_min_shift: float = 0.0  # 0.003 on CIFAR-10 (eval only)
        t_mid: float = 0.821  # 2-step intermediate t (CIFAR-10 0.821, ImageNet-64 1.526)
        mid_ratio: float = 0.1  # N > 2 steps: t_mid * mid_ratio^(i / (N - 2)), i = 0..N-2

    def check(self) -> None:
        self.check_common()
        c = self.cfg
        if c.mapping not in MAPPINGS:
            raise ValueError(f"{self.name}: mapping must be one of {MAPPINGS}, got {c.mapping!r}")
        if c.weighting not in WEIGHTINGS:
            raise ValueError(f"{self.name}: weighting must be one of {WEIGHTINGS}, got {c.weighting!r}")
        if c.q <= 1 or c.stage_length < 1 or c.k < 0 or c.stage_offset not in (0, 1):
            raise ValueError(f"{self.name}: need q > 1, stage_length >= 1, k >= 0 and stage_offset in (0, 1)")
        if c.huber_c < 0:
            raise ValueError(f"{self.name}: huber_c must be >= 0")
        if not 0 <= c.sigma_min_shift < c.t_mid < c.sigma_max or not 0 < c.mid_ratio <= 1:
            raise ValueError(f"{self.name}: need 0 <= sigma_min_shift < t_mid < sigma_max and 0 < mid_ratio <= 1")

    # -- training ------------------------------------------------------------
    def mapping(self, t: jax.Array, step: jax.Array) -> jax.Array:
        """r(t) at this iteration (ECT eq. 9); see mapping_ratio."""
        c = self.cfg
        ratio = mapping_ratio(
            t, step, q=c.q, d=c.stage_length, k=c.k, b=c.b, offset=c.stage_offset, smooth=c.mapping == "smooth"
        )
        return t * ratio

    def lower_edge(self, t: jax.Array) -> jax.Array:
        """s(t): the noise level the consistency function maps to (0: data; see methods/sct.py)."""
        return jnp.zeros_like(t)

    def consistency(self, net_params, x, t, s, y=None, **kw) -> jax.Array:
        """f(x, t) = (s / t) x + (1 - s / t) D(x, t): a DDIM step from t to the lower edge s
        (SCT's phased consistency function; s = 0 gives ECT's f = D)."""
        D = self.denoise(net_params, x, t, y, **kw)
        ratio = bcast(s / t, x)
        return ratio * x + (1.0 - ratio) * D

    def target_eps(self, x0, y0, x_t, t, eps, y, extra) -> tuple[jax.Array, dict[str, jax.Array]]:
        """The noise direction that places x_r on the trajectory of x_t: ECT uses the sampled eps.

        x0, y0: the clean batch and its labels; y: the labels the rows are trained with (after
        label dropout); extra: the method's state (methods/base.py)."""
        del x0, y0, x_t, t, y, extra
        return eps, {}

    def loss(self, params, batch, rng, step, inputs=LossInputs()):
        """ECT's loss (see the module docstring); returns (mean loss, metrics)."""
        c = self.cfg
        x0, y_true = batch["x"], batch.get("y")
        n = x0.shape[0]
        k_t, k_e, k_drop, k_lab = jax.random.split(rng, 4)
        t = self.log_normal_time(k_t, n)
        eps = jax.random.normal(k_e, x0.shape, x0.dtype)
        x_t = x0 + bcast(t, x0) * eps
        y = None if y_true is None else self.drop_labels(y_true, k_lab, c.label_dropout)
        s = self.lower_edge(t)
        r = jnp.maximum(self.mapping(t, step), s)
        eps_hat, est_metrics = self.target_eps(x0, y_true, x_t, t, eps, y, inputs.extra)
        x_r = x_t - bcast(t - r, x0) * jax.lax.stop_gradient(eps_hat)

        f_t = self.consistency(params["net"], x_t, t, s, y, train=True, dropout_rng=k_drop)
        at_edge = r <= s  # the target is x_r itself (f(x, s) = x); r = 0 in ECT
        r_safe = jnp.where(at_edge, t, r)  # keeps ln(r) finite where the value is discarded
        f_r = self.consistency(jax.lax.stop_gradient(params["net"]), x_r, r_safe, s, y, train=True, dropout_rng=k_drop)
        target = jax.lax.stop_gradient(jnp.where(bcast(at_edge, x_r), x_r, jnp.nan_to_num(f_r)))

        sq = jnp.sum(((f_t - target) ** 2).reshape(n, -1), axis=1)
        per_example = pseudo_huber(sq, c.huber_c)
        if c.weighting == "inv_dt":
            weight = 1.0 / (t - r)
        else:
            weight = 1.0 / t**2 + 1.0 / c.sigma_d**2
        metrics = {
            "dt_over_t": jnp.mean((t - r) / t),
            "at_edge_frac": jnp.mean(at_edge.astype(jnp.float32)),
            "target_nonfinite_frac": jnp.mean(~jnp.all(jnp.isfinite(f_r.reshape(n, -1)), axis=1) & ~at_edge),
            "unweighted": jnp.mean(per_example),
            **est_metrics,
        }
        return jnp.mean(weight * per_example), metrics

    # -- sampling --------------------------------------------------------------
    def sample_times(self, num_steps: int) -> list[float]:
        """sigma_max, then num_steps - 1 re-noising levels: [t_mid] for 2 steps (ECT sec. 4),
        t_mid * mid_ratio^(i / (N - 2)) for N > 2."""
        c = self.cfg
        if num_steps == 1:
            return [c.sigma_max]
        if num_steps == 2:
            return [c.sigma_max, c.t_mid]
        return [c.sigma_max] + [c.t_mid * c.mid_ratio ** (i / (num_steps - 2)) for i in range(num_steps - 1)]

    def check_guidance(self, guidance: float, params: dict[str, Any]) -> None:
        del params
        if guidance != 1.0:
            raise ValueError(f"{self.name}: guidance is not available (SCT's 'sct' has snapshot guidance)")

    def sampling_denoiser(self, params, guidance: float):
        """(x, t, y) -> D in eval mode with the sigma_min shift (SCT adds guidance here)."""
        shift = self.cfg.sigma_min_shift

        def D(x, t, y):
            return self.denoise(params["net"], x, t, y, shift=shift)

        return D

    def sample(self, params, rng, *, num_samples, labels=None, num_steps, sampler="euler", guidance=1.0):
        """Multistep consistency sampling (ECT sec. 4; Song et al. 2023, Alg. 1)."""
        self.check_steps(num_steps)
        self.check_sampler(sampler)
        self.check_guidance(guidance, params)
        y = self.sample_labels(num_samples, labels)
        D = self.sampling_denoiser(params, guidance)
        shape = (num_samples, *self.info.shape)
        keys = jax.random.split(rng, num_steps)
        x0 = jnp.zeros(shape, jnp.float32)
        for i, t_i in enumerate(self.sample_times(num_steps)):
            x = (0.0 if i == 0 else x0) + np.float32(t_i) * jax.random.normal(keys[i], shape, jnp.float32)
            x0 = D(x, jnp.full((num_samples,), t_i, jnp.float32), y)
        return x0
