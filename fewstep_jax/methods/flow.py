"""Flow matching / rectified flow (Lipman et al. 2023; Liu et al. 2023).

Time convention: t in [0, 1], t = 0 is noise, t = 1 is data (as in the shortcut
models paper, Frans et al. 2024, sec. 2):
  x_t = (1 - t) z + t x0,  z ~ N(0, noise_std^2 I)
  v   = dx_t/dt = x0 - z
The network predicts v directly; the loss is E || v_theta(x_t, t) - v ||^2, whose
minimizer is the marginal velocity E[x0 - z | x_t] (Lipman et al. 2023, Thm. 2).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from fewstep_jax.methods import samplers
from fewstep_jax.methods.base import LossInputs, ODEMethod, bcast, per_example_mean, register

T_SAMPLING = ("uniform", "logit_normal")


@register("flow")
class FlowMatching(ODEMethod):
    title = "flow matching"
    time_convention = "flow t in [0, 1]; t = 0 noise, t = 1 data"
    parameterization = "flow"

    @dataclasses.dataclass(frozen=True)
    class Config:
        noise_std: float = 1.0
        t_sampling: str = "uniform"  # or 'logit_normal' (Esser et al. 2024, SD3)
        logit_mean: float = 0.0
        logit_std: float = 1.0
        label_dropout: float = 0.1

    def check(self) -> None:
        c = self.cfg
        if c.t_sampling not in T_SAMPLING:
            raise ValueError(f"flow: unknown t_sampling {c.t_sampling!r}; known: {', '.join(T_SAMPLING)}")
        if c.noise_std <= 0 or c.logit_std <= 0:
            raise ValueError("flow: noise_std and logit_std must be positive")
        if not 0.0 <= c.label_dropout < 1.0:
            raise ValueError(f"flow: label_dropout must be in [0, 1), got {c.label_dropout}")

    def sample_time(self, rng, n):
        if self.cfg.t_sampling == "uniform":
            return jax.random.uniform(rng, (n,))
        return jax.nn.sigmoid(self.cfg.logit_mean + self.cfg.logit_std * jax.random.normal(rng, (n,)))

    def loss(self, params, batch, rng, step, inputs=LossInputs()):
        """Conditional flow matching loss, mean over pixels and batch."""
        x0, y = batch["x"], batch.get("y")
        k_t, k_z, k_drop, k_lab = jax.random.split(rng, 4)
        t = self.sample_time(k_t, x0.shape[0])
        z = self.cfg.noise_std * jax.random.normal(k_z, x0.shape, x0.dtype)
        tb = bcast(t, x0)
        x_t = (1.0 - tb) * z + tb * x0
        v = x0 - z
        if y is not None:
            y = self.drop_labels(y, k_lab, self.cfg.label_dropout)
        pred = self.apply_net(params["net"], x_t, t, y, train=True, dropout_rng=k_drop)
        err = per_example_mean((pred - v) ** 2)
        return jnp.mean(err), {"mse": jnp.mean(err)}

    def sample(self, params, rng, *, num_samples, labels=None, num_steps, sampler="euler", guidance=1.0):
        """Integrate dx/dt = v_theta(x, t) from t = 0 (noise) to 1 on a uniform grid."""
        x, y = self.start_sampling(rng, num_samples, labels, num_steps, sampler, self.cfg.noise_std)
        grid = jnp.linspace(0.0, 1.0, num_steps + 1, dtype=jnp.float32)

        def velocity(x, t):
            return self.guided(params["net"], x, jnp.full((num_samples,), t, jnp.float32), y, guidance)

        return samplers.integrate(velocity, x, grid, sampler)
