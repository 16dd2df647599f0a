"""Training objectives and samplers behind one interface (see base.py).

Importing this package registers every method. The import order below is the order of
REGISTRY, which listings of every method follow (benchmarks, the reproduction report): each
pretrained model before the methods that start from it, then the ones trained from scratch.
"""

# isort: off
from fewstep_jax.methods import trigflow, scm, edm, ect, sct, flow, shortcut, meanflow, imf, alphaflow, ayf, dmf  # noqa: F401  (registration)

# isort: on
from fewstep_jax.methods.base import REGISTRY, JumpMethod, LossInputs, Method, ODEMethod, build, register

__all__ = ["REGISTRY", "JumpMethod", "LossInputs", "Method", "ODEMethod", "build", "register"]
