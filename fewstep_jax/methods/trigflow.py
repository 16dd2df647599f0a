"""TrigFlow diffusion (Lu & Song 2024, "sCM", sec. 2-3): the teacher and baseline.

Time convention: t in [0, pi/2], t = 0 is data, t = pi/2 is pure noise.
  x_t = cos(t) x0 + sin(t) z,  z ~ N(0, sigma_d^2 I)               (sCM eq. 3)
  v_t = dx_t/dt = cos(t) z - sin(t) x0
The network F_theta(x_t / sigma_d, c_noise(t) = t) predicts v_t / sigma_d, and
  f_theta(x_t, t) = cos(t) x_t - sin(t) sigma_d F_theta(x_t / sigma_d, t)  (sCM eq. 7)
is the denoiser (one DDIM step from t to 0). The PF-ODE is
  dx_t/dt = sigma_d F_theta(x_t / sigma_d, t).
Sampling works in EDM's sigma space (sigma = sigma_d tan t, x_sigma = x_t / cos t),
where DDIM is exactly Euler and EDM's Heun sampler applies unchanged.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from fewstep_jax.methods import samplers
from fewstep_jax.methods.base import LossInputs, ODEMethod, bcast, per_example_mean, register
from fewstep_jax.methods.weighting import LearnedLogVariance


@register("trigflow")
class TrigFlow(LearnedLogVariance, ODEMethod):
    title = "TrigFlow"
    time_convention = "TrigFlow t in [0, pi/2]; t = 0 data, t = pi/2 noise"
    parameterization = "trigflow"  # F predicts v_t / sigma_d from (x_t / sigma_d, t)

    @dataclasses.dataclass(frozen=True)
    class Config:
        sigma_d: float = 0.5
        # Log-normal proposal on EDM sigma = sigma_d tan t (sCM sec. 3).
        p_mean: float = -1.0
        p_std: float = 1.4
        learned_weighting: bool = True  # EDM2 log-variance head u(t)
        logvar_channels: int = 128
        logvar_form: str = "positional"  # or 'mp_fourier', EDM2's head (methods/weighting.py)
        label_dropout: float = 0.1  # rows trained with the null label (for CFG)
        # Sampling schedule (EDM): rho-spaced sigmas in [sigma_min, sigma_max], then 0.
        sigma_min: float = 0.002
        sigma_max: float = 80.0
        rho: float = 7.0

    def check(self) -> None:
        c = self.cfg
        if c.sigma_d <= 0 or c.p_std <= 0:
            raise ValueError("trigflow: sigma_d and p_std must be positive")
        if not 0.0 <= c.label_dropout < 1.0:
            raise ValueError(f"trigflow: label_dropout must be in [0, 1), got {c.label_dropout}")
        if not 0 < c.sigma_min < c.sigma_max:
            raise ValueError("trigflow: need 0 < sigma_min < sigma_max")
        self.check_logvar()

    # -- the model ---------------------------------------------------------
    def denoise(self, net_params, x_t, t, y=None, *, guidance=1.0):
        """f_theta(x_t, t) = cos(t) x_t - sin(t) sigma_d F_theta(x_t / sigma_d, t) (sCM eq. 7)."""
        sd = self.cfg.sigma_d
        F = self.guided(net_params, x_t / sd, t, y, guidance)
        ct, st = bcast(jnp.cos(t), x_t), bcast(jnp.sin(t), x_t)
        return ct * x_t - st * sd * F

    def sample_time(self, rng, n):
        """t = arctan(exp(tau) / sigma_d), tau ~ N(P_mean, P_std^2) (sCM sec. 3)."""
        tau = self.cfg.p_mean + self.cfg.p_std * jax.random.normal(rng, (n,))
        return jnp.arctan(jnp.exp(tau) / self.cfg.sigma_d)

    def loss(self, params, batch, rng, step, inputs=LossInputs()):
        """TrigFlow diffusion loss with the EDM2 learned weighting (sCM sec. 3):
        E_t[ exp(-u(t)) / sigma_d^2 * mean_pixels (sigma_d F - v_t)^2 + u(t) ]."""
        c = self.cfg
        x0, y = batch["x"], batch.get("y")
        k_t, k_z, k_drop, k_lab = jax.random.split(rng, 4)
        t = self.sample_time(k_t, x0.shape[0])
        z = c.sigma_d * jax.random.normal(k_z, x0.shape, x0.dtype)
        ct, st = bcast(jnp.cos(t), x0), bcast(jnp.sin(t), x0)
        x_t = ct * x0 + st * z
        v_t = ct * z - st * x0
        if y is not None:
            y = self.drop_labels(y, k_lab, c.label_dropout)
        F = self.apply_net(params["net"], x_t / c.sigma_d, t, y, train=True, dropout_rng=k_drop)
        err = per_example_mean((c.sigma_d * F - v_t) ** 2) / c.sigma_d**2
        if c.learned_weighting:
            u = self.logvar_net.apply({"params": params["logvar"]}, t)
            per_example = jnp.exp(-u) * err + u
        else:
            per_example = err
        return jnp.mean(per_example), {"mse": jnp.mean(err)}

    # -- sampling ----------------------------------------------------------
    def sample(self, params, rng, *, num_samples, labels=None, num_steps, sampler="euler", guidance=1.0):
        """PF-ODE sampling from t_max = arctan(sigma_max / sigma_d); DDIM == 'euler'."""
        c = self.cfg
        # x_t ~ N(0, sigma_d^2) at t_max, i.e. x_sigma = x_t / cos(t_max).
        scale = (c.sigma_max**2 + c.sigma_d**2) ** 0.5
        x, y = self.start_sampling(rng, num_samples, labels, num_steps, sampler, scale)
        sigmas = samplers.karras_sigmas(num_steps, c.sigma_min, c.sigma_max, c.rho)

        def velocity(x_sigma, sigma):
            t = jnp.full((num_samples,), jnp.arctan(sigma / c.sigma_d), jnp.float32)
            x_t = bcast(jnp.cos(t), x_sigma) * x_sigma
            denoised = self.denoise(params["net"], x_t, t, y, guidance=guidance)
            return (x_sigma - denoised) / sigma

        return samplers.integrate(velocity, x, sigmas, sampler)
