"""fewstep_jax: one- and few-step generative models in JAX/Flax.

TrigFlow diffusion and flow matching (teachers and baselines), with consistency
training (sCM, ECT/SCT), shortcut models and MeanFlow built on the same training
loop. See README.md for the quickstart and docs/ARCHITECTURE.md for the design.
"""

__version__ = "0.1.0"
