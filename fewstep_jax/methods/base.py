"""The Method interface and registry.

A method turns a network into a training objective and a sampler. It holds only
static things (its typed config, the Flax module, the dataset info); every
function it exposes is pure, so the training loop can `jax.jit` it:

  init_params(rng, example_batch)             -> params pytree
  project_params(params)                      -> params after the post-update projection
  loss(params, batch, rng, step, inputs)      -> (scalar loss, metrics dict)
  sample(params, rng, num_samples=, labels=, num_steps=, sampler=, guidance=) -> x
  nfe(num_steps, sampler)                     -> exact network evaluations

`params` is a dict: {'net': network params, ...extra trainable pieces (e.g. a
learned loss weighting)}. `sample` needs only {'net': ...} (EMA trees qualify).
Everything else a loss may read comes in one `LossInputs` (default: none), and a
method reads only the fields it needs:
- `ema_params`: the first EMA (shortcut's bootstrap targets).
- `frozen`: parameters the method reads but never trains (sCD's teacher):
  `load_frozen(loader)` builds them once, the loop passes them to every step as
  an explicit argument, and they are not part of the checkpoint.
- `extra`: the method's own non-trainable state, which IS checkpointed (SCT's
  reference bank of recent batches, an EMA snapshot for guidance):
  `init_extra(params)` creates it, `update_extra(extra, batch=, step=, ema_params=)`
  advances it after every optimizer step, and `sampling_inputs(extra)` names what
  sampling needs from it (merged into the params given to `sample`).
The loop never branches on the method: everything specific lives behind this
interface. Methods register themselves with `@register('name')`; class attributes
say what tools need to know about a method without a list of their own (its
paper's name, the method it starts from or distils, its step-cost target).

Samplers come in two kinds: `ODEMethod`s integrate a PF-ODE (methods/samplers.py:
Euler or Heun, any step count); `JumpMethod`s take one network jump per step
(consistency models, flow maps) and sample with 'euler' only.
"""

from __future__ import annotations

import abc
import dataclasses
from functools import partial
from typing import Any, Callable, ClassVar, Mapping

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from fewstep_jax import models
from fewstep_jax.config_lib import typed_view
from fewstep_jax.methods import samplers

Params = Any
Batch = Mapping[str, jax.Array]

#: name -> class, in registration order (the import order of methods/__init__.py), which listings
#: of every method (benchmarks, the reproduction report) follow.
REGISTRY: dict[str, type["Method"]] = {}


def register(name: str) -> Callable[[type["Method"]], type["Method"]]:
    def wrap(cls: type[Method]) -> type[Method]:
        if name in REGISTRY and REGISTRY[name] is not cls:
            raise ValueError(f"method {name!r} registered twice")
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return wrap


@flax.struct.dataclass
class LossInputs:
    """What a loss may read besides params, batch, key and step; each method reads the fields
    it needs (see the module docstring), and a loss that needs none is called without them.

    ema_params: the first EMA's params, {'net': ...}, or the live params without an EMA.
    frozen: `load_frozen`'s output (never trained, never checkpointed), e.g. {'teacher': ...}.
    extra: the method's checkpointed non-trainable state (`init_extra` / `update_extra`).
    """

    ema_params: Params | None = None
    frozen: Params | None = None
    extra: Mapping[str, Any] | None = None


def build(method_cfg: Mapping[str, Any], net: nn.Module, info: Any) -> "Method":
    """Method named by `method_cfg.name`, with its typed config checked."""
    name = method_cfg.get("name", None)
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(sorted(REGISTRY))}")
    cls = REGISTRY[name]
    section = {k: v for k, v in method_cfg.items() if k != "name"}
    cfg = typed_view(cls.Config, section, "method")
    return cls(cfg, net, info)


class Method(abc.ABC):
    """Base class; see the module docstring for the contract."""

    name: ClassVar[str] = ""
    #: One line stating the time convention used internally.
    time_convention: ClassVar[str] = ""
    #: What the network's output means (its preconditioning); train.init_from only copies a
    #: pretrained network whose method has the same parameterization.
    parameterization: ClassVar[str] = ""
    #: The method's name in its paper (reports, tables).
    title: ClassVar[str] = ""
    #: The registered method whose trained network the paper's recipe starts from (the configs'
    #: train.init_from); "" when it trains from scratch.
    pretrained_method: ClassVar[str] = ""
    #: The registered method whose trained network `load_frozen` reads as a frozen teacher; "" for none.
    teacher_method: ClassVar[str] = ""
    #: Compared at many steps as well as few (its samples keep improving with the step count: the
    #: PF-ODE baselines, shortcut's flow level): reports sweep its NFEs beyond the few-step range.
    many_steps: ClassVar[bool] = False
    #: Training-step cost relative to flow matching's on the same network that the method should
    #: stay within (benchmarks/bench.py reports it next to the measured ratio); None: no target.
    step_cost_target: ClassVar[float | None] = None

    @dataclasses.dataclass(frozen=True)
    class Config:
        pass

    def __init__(self, cfg: Any, net: nn.Module, info: Any):
        self.cfg = cfg
        self.net = net
        self.info = info
        self.conditional = info.num_classes > 0
        self.check()

    def check_teacher_data(self, source: str, config: Any) -> None:
        """A frozen teacher's config (load_frozen) must come from a run on this run's data. An
        official file whose data is none of the suite's datasets has no data name; its shape, labels
        and latent preset are checked when it is loaded (experiment.check_imported_data)."""
        if config.data.name != self.info.name and not ("pretrained" in config and not config.data.name):
            raise ValueError(
                f"{self.name}: the teacher at {source} was trained on {config.data.name!r} "
                f"(this run: {self.info.name!r})"
            )

    def check(self) -> None:
        """Validate the typed config (raise ValueError); called at construction."""

    # -- parameters --------------------------------------------------------
    def init_params(self, rng: jax.Array, example_batch: Batch) -> Params:
        x = jnp.asarray(example_batch["x"][:1])
        t = jnp.zeros((1,), jnp.float32)
        y = self.null_labels(1) if self.conditional else None
        d = jnp.zeros((1,), jnp.float32) if getattr(self.net, "use_d", False) else None
        variables = self.net.init({"params": rng}, x, t, y=y, d=d, train=False)
        return {"net": variables["params"]}

    def project_params(self, params: Params) -> Params:
        """The projection the training loop applies at init and after every optimizer update:
        the network's own (models.param_projection, e.g. EDM2's forced weight normalization) on
        params['net'], the identity elsewhere. Methods with more projected pieces extend it."""
        return dict(params, net=models.param_projection(self.net)(params["net"]))

    def apply_net(
        self,
        net_params: Params,
        x: jax.Array,
        t: jax.Array,
        y: jax.Array | None = None,
        d: jax.Array | None = None,
        *,
        train: bool = False,
        dropout_rng: jax.Array | None = None,
    ) -> jax.Array:
        """Network call with the suite's keyword convention; t, d are [B] float32."""
        rngs = {"dropout": dropout_rng} if (train and dropout_rng is not None) else None
        if not self.conditional:
            y = None
        return self.net.apply({"params": net_params}, x, t, y=y, d=d, train=train, rngs=rngs)

    # -- labels ------------------------------------------------------------
    def null_labels(self, n: int) -> jax.Array:
        return jnp.full((n,), self.info.num_classes, jnp.int32)

    def drop_labels(self, y: jax.Array, rng: jax.Array, p: float) -> jax.Array:
        """Replace each label by the null class with probability p (for CFG training)."""
        if not self.conditional or p <= 0:
            return y
        drop = jax.random.bernoulli(rng, p, y.shape)
        return jnp.where(drop, self.info.num_classes, y)

    # -- the contract ------------------------------------------------------
    def load_frozen(self, loader: Callable[[str], tuple[Any, Params]]) -> Params | None:
        """Frozen inputs of the loss (e.g. a teacher), via loader(workdir) -> (config, EMA net params)."""
        del loader
        return None

    def init_extra(self, params: Params) -> dict[str, Any]:
        """The method's non-trainable, checkpointed state (default: none)."""
        del params
        return {}

    def update_extra(self, extra: dict[str, Any], *, batch: Batch, step: jax.Array, ema_params: Params) -> dict:
        """`extra` after the optimizer step `step` (0-based) on `batch`; ema_params are the updated first EMA."""
        del batch, step, ema_params
        return extra

    def sampling_inputs(self, extra: Mapping[str, Any]) -> dict[str, Any]:
        """Entries of `extra` that `sample` reads, added to its params (host side, outside jit)."""
        del extra
        return {}

    @abc.abstractmethod
    def loss(
        self, params: Params, batch: Batch, rng: jax.Array, step: jax.Array, inputs: LossInputs = LossInputs()
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Scalar training loss and a dict of scalar metrics at the 0-based optimizer step `step`."""

    @abc.abstractmethod
    def sample(
        self,
        params: Params,
        rng: jax.Array,
        *,
        num_samples: int,
        labels: jax.Array | None = None,
        num_steps: int,
        sampler: str = "euler",
        guidance: float = 1.0,
    ) -> jax.Array:
        """Draw samples [num_samples, *shape] in data space."""

    def sampling_guidance(self, num_steps: int, guidance: float) -> float:
        """The classifier-free guidance scale an evaluation asked for `guidance` (eval.guidance)
        samples with at num_steps steps. Default: `guidance` at every step count; a method whose
        guidance applies at some step counts only (shortcut: its flow level) returns 1 elsewhere."""
        del num_steps
        return guidance

    def can_guide(self, params: Params) -> bool:
        """Whether `sample` can use guidance != 1 with these params (SCT: once its snapshot exists)."""
        del params
        return True

    @abc.abstractmethod
    def nfe(self, num_steps: int, sampler: str) -> int:
        """Exact number of network evaluations of `sample` (a CFG pair counts as one)."""

    #: Step counts the sampler accepts (None: any positive count) and the ones to report.
    supported_steps: ClassVar[tuple[int, ...] | None] = None
    default_steps: ClassVar[tuple[int, ...]] = (1, 2, 4, 8)

    def check_steps(self, num_steps: int) -> None:
        if num_steps < 1 or (self.supported_steps is not None and num_steps not in self.supported_steps):
            allowed = "any positive count" if self.supported_steps is None else str(self.supported_steps)
            raise ValueError(f"method {self.name!r} cannot sample with {num_steps} steps; allowed: {allowed}")

    def sample_labels(self, num_samples: int, labels: jax.Array | None) -> jax.Array | None:
        """Labels for sampling: given ones, else the null class (unconditional draw)."""
        if not self.conditional:
            return None
        if labels is None:
            return self.null_labels(num_samples)
        labels = jnp.asarray(labels, jnp.int32)
        if labels.shape != (num_samples,):
            raise ValueError(f"labels must have shape ({num_samples},), got {labels.shape}")
        return labels

    def cond_and_null(
        self, apply: Callable, x: jax.Array, t: jax.Array, y: jax.Array, d: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """(output for labels y, output for the null label) of ONE call apply(x, t, y, d) on the
        doubled batch [x; x] with labels [y; null]: the two terms of classifier-free guidance."""
        n = x.shape[0]
        both = apply(
            jnp.concatenate([x, x]),
            jnp.concatenate([t, t]),
            jnp.concatenate([y, self.null_labels(n)]),
            None if d is None else jnp.concatenate([d, d]),
        )
        return both[:n], both[n:]

    def guided(
        self,
        net_params: Params,
        x: jax.Array,
        t: jax.Array,
        y: jax.Array | None,
        guidance: float,
        d: jax.Array | None = None,
    ) -> jax.Array:
        """Classifier-free guidance (Ho & Salimans 2022): out_u + w (out_c - out_u).

        One network call on the concatenated [conditional; null] batch; w = 1 or an
        unconditional model is a plain call.
        """
        if not self.conditional or y is None or guidance == 1.0:
            return self.apply_net(net_params, x, t, y, d)
        cond, uncond = self.cond_and_null(partial(self.apply_net, net_params), x, t, y, d)
        return uncond + guidance * (cond - uncond)


class ODEMethod(Method):
    """A method sampled by integrating its PF-ODE (methods/samplers.py)."""

    many_steps = True

    def nfe(self, num_steps: int, sampler: str) -> int:
        return samplers.nfe(num_steps, sampler)

    def start_sampling(
        self, rng: jax.Array, num_samples: int, labels: jax.Array | None, num_steps: int, sampler: str, scale: float
    ) -> tuple[jax.Array, jax.Array | None]:
        """Check the request; return the initial noise [N, *shape] * scale and the labels."""
        self.check_steps(num_steps)
        samplers.check_sampler(sampler)
        y = self.sample_labels(num_samples, labels)
        x = scale * jax.random.normal(rng, (num_samples, *self.info.shape), jnp.float32)
        return x, y


class JumpMethod(Method):
    """A method sampled by network jumps, one network evaluation per step (a consistency model
    jumps to the data or a phase edge, a flow map over an interval): 'euler' is its only sampler."""

    #: What one sampling step is, in the paper's words (said when another sampler is asked for).
    jump: ClassVar[str] = "one network jump per step"

    def check_sampler(self, sampler: str) -> None:
        if sampler != "euler":
            raise ValueError(f"{self.name} samples with 'euler' only ({self.jump}), got {sampler!r}")

    def nfe(self, num_steps: int, sampler: str) -> int:
        self.check_sampler(sampler)
        return num_steps


def per_example_mean(x: jax.Array) -> jax.Array:
    """Mean over all non-batch axes: [B, ...] -> [B]."""
    return jnp.mean(x.reshape(x.shape[0], -1), axis=1)


def bcast(t: jax.Array, like: jax.Array) -> jax.Array:
    """[B] -> [B, 1, ..., 1] to broadcast against `like`."""
    return t.reshape(t.shape + (1,) * (like.ndim - 1))
