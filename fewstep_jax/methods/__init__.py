"""Training objectives and samplers behind one interface (see base.py).

Importing this package registers every method.
"""

from fewstep_jax.methods import ect, edm, flow, meanflow, scm, sct, shortcut, trigflow  # noqa: F401  (registration)
from fewstep_jax.methods.base import REGISTRY, Method, build, register

__all__ = ["REGISTRY", "Method", "build", "register"]
