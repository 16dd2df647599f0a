"""The Method interface across the registry: class names, the class attributes tools read instead
of lists of their own, the sampler rule of each kind of method, and LossInputs as a pytree."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re

import jax
import jax.numpy as jnp
import pytest
from conftest import load_config

from fewstep_jax import data as data_lib
from fewstep_jax import methods, models

JUMP_METHODS = [name for name, cls in methods.REGISTRY.items() if issubclass(cls, methods.JumpMethod)]


def build_smoke(name: str) -> methods.Method:
    """configs/<name>_toy2d.py:smoke's method (sCD with a teacher path it never reads)."""
    config = load_config(f"{name}_toy2d")
    if methods.REGISTRY[name].teacher_method:
        config.method.teacher = "unread"
    info = data_lib.dataset_info(config.data)
    net = models.build(config.model, data_shape=info.shape, num_classes=info.num_classes)
    return methods.build(config.method, net, info)


def test_no_two_classes_in_methods_share_a_name():
    seen: dict[str, str] = {}
    for module_info in pkgutil.iter_modules(methods.__path__):
        module = importlib.import_module(f"fewstep_jax.methods.{module_info.name}")
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__:
                assert name not in seen, f"{name} in {module.__name__} and {seen[name]}"
                seen[name] = module.__name__
    assert {"SCMTraining", "SCMDistillation", "StableConsistencyTuning"} <= set(seen)


def test_class_attributes_name_registered_methods():
    """What a method starts from is a registered method whose network output means the same
    (train.init_from refuses others); a teacher is a registered method; every method is sampled
    either by integrating a PF-ODE or by jumps."""
    for name, cls in methods.REGISTRY.items():
        assert cls.name == name and cls.title, name
        if cls.pretrained_method:
            assert methods.REGISTRY[cls.pretrained_method].parameterization == cls.parameterization, name
        if cls.teacher_method:
            assert cls.teacher_method in methods.REGISTRY, name
        assert issubclass(cls, methods.ODEMethod) != issubclass(cls, methods.JumpMethod), name
    assert methods.REGISTRY["scm_scd"].teacher_method == "trigflow"
    assert [n for n, c in methods.REGISTRY.items() if c.pretrained_method == "edm"] == ["ect", "sct"]


@pytest.mark.parametrize("name", JUMP_METHODS)
def test_jump_methods_take_one_evaluation_per_step_with_euler_only(name):
    method = build_smoke(name)
    assert method.nfe(2, "euler") == 2
    message = re.escape(f"{name} samples with 'euler' only ({method.jump}), got 'heun'")
    with pytest.raises(ValueError, match=message):
        method.nfe(2, "heun")
    with pytest.raises(ValueError, match=message):
        method.sample({}, jax.random.key(0), num_samples=2, num_steps=2, sampler="heun")


def test_loss_inputs_are_a_pytree_that_crosses_jit():
    inputs = methods.LossInputs(ema_params={"net": {"w": jnp.ones((2,))}}, extra={"count": jnp.int32(3)})
    assert len(jax.tree.leaves(inputs)) == 2 and inputs.frozen is None
    scaled = jax.jit(lambda i: i.ema_params["net"]["w"] * i.extra["count"])(inputs)
    assert scaled.tolist() == [3.0, 3.0]
