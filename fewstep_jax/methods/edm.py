"""EDM preconditioning and EDM diffusion training (Karras et al. 2022, "Elucidating the Design
Space of Diffusion-Based Generative Models", sec. 5 and Table 1).

Time convention (EDM / variance exploding): t is the noise level sigma >= 0, t = 0 is data,
  x_t = x0 + t eps,  eps ~ N(0, I).
Any network F of the suite becomes a denoiser through the preconditioning (EDM Table 1):
  D(x, t) = c_skip(t) x + c_out(t) F(c_in(t) x, c_noise(t)),
  c_in = 1 / sqrt(t^2 + sigma_d^2),  c_noise = ln(t) / 4,
  c_skip = sigma_d^2 / (t^2 + sigma_d^2),  c_out = t sigma_d / sqrt(t^2 + sigma_d^2).
ECT's CIFAR-10 code evaluates consistency models with c_skip and c_out shifted by
sigma_min = 0.003 (`shift`): c_skip = sigma_d^2 / ((t - shift)^2 + sigma_d^2),
c_out = (t - shift) sigma_d / sqrt(t^2 + sigma_d^2), so D(x, shift) = x exactly (the
consistency boundary condition at the smallest noise level). Training never shifts.

The `edm` method is EDM's diffusion loss (eq. 8, weighting lambda = 1 / c_out^2 of
Table 1): E[ lambda(t) ||D(x0 + t eps, t) - x0||^2 ] with ln t ~ N(P_mean, P_std^2); it is
ECT's stage 0 and produces the pretrained model ECT / SCT tune from (train.init_from).
Sampling integrates the PF-ODE dx/dt = (x - D(x, t)) / t (eq. 3 with s = 1) on EDM's
rho = 7 schedule with Euler or Heun (methods/samplers.py).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from fewstep_jax.methods import samplers
from fewstep_jax.methods.base import LossInputs, Method, ODEMethod, bcast, per_example_mean, register
from fewstep_jax.methods.weighting import LearnedLogVariance


def edm_scalings(t: jax.Array, sigma_d: float, shift: float = 0.0) -> tuple[jax.Array, ...]:
    """(c_skip, c_out, c_in, c_noise) of EDM Table 1 for noise levels t [B]; `shift` is ECT's
    sigma_min shift of c_skip and c_out (eval only)."""
    ts = t - shift
    c_skip = sigma_d**2 / (ts**2 + sigma_d**2)
    c_out = ts * sigma_d / jnp.sqrt(t**2 + sigma_d**2)
    c_in = 1.0 / jnp.sqrt(t**2 + sigma_d**2)
    c_noise = jnp.log(t) / 4.0
    return c_skip, c_out, c_in, c_noise


class Preconditioned(Method):
    """A method whose network is used through EDM's preconditioning (see the module docstring)."""

    parameterization = "edm"  # F(c_in x, ln(t) / 4) with EDM's c_skip / c_out

    def denoise(
        self,
        net_params,
        x: jax.Array,
        t: jax.Array,
        y: jax.Array | None = None,
        *,
        train: bool = False,
        dropout_rng: jax.Array | None = None,
        shift: float = 0.0,
    ) -> jax.Array:
        """D(x, t) = c_skip x + c_out F(c_in x, c_noise) (EDM Table 1); x [B, ...], t [B] > 0."""
        c_skip, c_out, c_in, c_noise = edm_scalings(t, self.cfg.sigma_d, shift)
        F = self.apply_net(net_params, bcast(c_in, x) * x, c_noise, y, train=train, dropout_rng=dropout_rng)
        return bcast(c_skip, x) * x + bcast(c_out, x) * F

    def log_normal_time(self, rng: jax.Array, n: int) -> jax.Array:
        """t = exp(P_mean + P_std N(0, 1)) (EDM sec. 5; ECT sec. 3)."""
        return jnp.exp(self.cfg.p_mean + self.cfg.p_std * jax.random.normal(rng, (n,)))

    def check_common(self) -> None:
        c = self.cfg
        if c.sigma_d <= 0 or c.p_std <= 0 or c.sigma_max <= 0:
            raise ValueError(f"{self.name}: sigma_d, p_std and sigma_max must be positive")
        if not 0.0 <= c.label_dropout < 1.0:
            raise ValueError(f"{self.name}: label_dropout must be in [0, 1), got {c.label_dropout}")


@register("edm")
class EDM(LearnedLogVariance, Preconditioned, ODEMethod):
    """EDM diffusion: the pretrained model for ECT / SCT, and a baseline."""

    title = "EDM"
    time_convention = "EDM sigma: x_t = x0 + t eps, t = 0 data"

    @dataclasses.dataclass(frozen=True)
    class Config:
        sigma_d: float = 0.5
        p_mean: float = -1.2  # EDM's training proposal ln t ~ N(-1.2, 1.2^2)
        p_std: float = 1.2
        label_dropout: float = 0.1  # rows trained with the null label (for CFG)
        learned_weighting: bool = False  # EDM2's learned log-variance u(t) (Karras et al. 2024, sec. 5)
        logvar_channels: int = 128
        logvar_form: str = "positional"  # or 'mp_fourier', EDM2's head (methods/weighting.py)
        sigma_min: float = 0.002  # sampling schedule (EDM eq. 5)
        sigma_max: float = 80.0
        rho: float = 7.0

    def check(self) -> None:
        self.check_common()
        if not 0 < self.cfg.sigma_min < self.cfg.sigma_max:
            raise ValueError("edm: need 0 < sigma_min < sigma_max")
        self.check_logvar()

    def loss(self, params, batch, rng, step, inputs=LossInputs()):
        """EDM eq. 8 with lambda(t) = (t^2 + sigma_d^2) / (t sigma_d)^2, mean over pixels; with
        EDM2's learned weighting: exp(-u(t)) lambda(t) err + u(t), u a function of c_noise."""
        c = self.cfg
        x0, y = batch["x"], batch.get("y")
        k_t, k_e, k_drop, k_lab = jax.random.split(rng, 4)
        t = self.log_normal_time(k_t, x0.shape[0])
        x_t = x0 + bcast(t, x0) * jax.random.normal(k_e, x0.shape, x0.dtype)
        if y is not None:
            y = self.drop_labels(y, k_lab, c.label_dropout)
        D = self.denoise(params["net"], x_t, t, y, train=True, dropout_rng=k_drop)
        weight = (t**2 + c.sigma_d**2) / (t * c.sigma_d) ** 2
        err = per_example_mean((D - x0) ** 2)
        per_example = weight * err
        if c.learned_weighting:
            u = self.logvar_net.apply({"params": params["logvar"]}, jnp.log(t) / 4.0)
            per_example = jnp.exp(-u) * per_example + u
        return jnp.mean(per_example), {"mse": jnp.mean(err)}

    def sample(self, params, rng, *, num_samples, labels=None, num_steps, sampler="euler", guidance=1.0):
        """PF-ODE from x = sigma_max z: dx/dt = (x - D(x, t)) / t, with CFG on D."""
        c = self.cfg
        x, y = self.start_sampling(rng, num_samples, labels, num_steps, sampler, c.sigma_max)
        grid = samplers.karras_sigmas(num_steps, c.sigma_min, c.sigma_max, c.rho)

        def denoise(x, t, y, d=None):
            del d
            return self.denoise(params["net"], x, t, y)

        def velocity(x, t):
            tt = jnp.full((num_samples,), t, jnp.float32)
            if self.conditional and guidance != 1.0:
                cond, uncond = self.cond_and_null(denoise, x, tt, y)
                D = uncond + guidance * (cond - uncond)
            else:
                D = denoise(x, tt, y)
            return (x - D) / t

        return samplers.integrate(velocity, x, grid, sampler)
