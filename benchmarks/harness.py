"""One method's training step and sampler on the network every method shares: build, compile, time.

A method's own config (configs/<method>_digits.py) supplies its objective, optimizer and EMAs;
its network section is replaced by the benchmark network's, keeping only the method's second
conditioning input (model.use_d: shortcut's step size, MeanFlow's interval), and the global batch
is the benchmark's. Pretrained weights do not change the cost of a step, so none are read:
methods that tune a pretrained model (train.init_from: sCM, ECT, SCT) start from random weights,
and the frozen teachers (sCD's, AYF's) are randomly initialized networks of the teacher's method
(TrigFlow, flow matching) with the same architecture.

Networks other than the digits UNet are fed random batches of their dataset's shape, so no
dataset has to be prepared; batches are made before timing and never count.
"""

from __future__ import annotations

import ast
import concurrent.futures
import contextlib
import dataclasses
import gc
import os
import platform
import re
import resource
import statistics
import sys
import time
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fewstep_jax import config_lib, experiment, models, sharding, train
from fewstep_jax import data as data_lib
from fewstep_jax import evaluate as eval_lib
from fewstep_jax import methods as methods_lib
from fewstep_jax.data import pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Every registered method, in the registry's order; each takes its settings from
#: configs/<method>_digits.py. Step costs are reported relative to the reference, flow matching.
METHODS = tuple(methods_lib.REGISTRY)
REFERENCE = "flow"

#: Distinct batches cycled through by the timed steps.
NUM_BATCHES = 4
TEACHER_SEED = 1

T0 = time.perf_counter()


def progress(message: str) -> None:
    """A progress line on stderr, with the seconds since this module was imported."""
    print(f"[{time.perf_counter() - T0:6.0f} s] {message}", file=sys.stderr, flush=True)


@dataclasses.dataclass(frozen=True)
class Network:
    """A benchmark network and the data it sees: `shape` None is the embedded digits data;
    otherwise random batches of that shape with `num_classes` labels and std `data_std`."""

    name: str
    title: str
    default_batch: int
    data: dict[str, Any]
    shape: tuple[int, ...] | None = None
    num_classes: int = 0
    data_std: float = 1.0


NETWORKS = {
    n.name: n
    for n in (
        Network(
            "digits", "digits UNet of configs/flow_digits.py (8x8x1, 10 classes, embedded digits data)", 64,
            dict(name="digits", conditional=True),
        ),
        Network(
            "ddpmpp", "DDPM++ of configs/trigflow_cifar.py (CIFAR-10 32x32x3, unconditional, random batches)", 128,
            dict(name="cifar10", conditional=False), shape=(32, 32, 3), data_std=0.5,
        ),
        Network(
            "dit_b2", "DiT-B/2 in bfloat16 (32x32x4 latents, 1,000 classes, random batches)", 256,
            dict(name="imagenet256_latents", conditional=True), shape=(32, 32, 4), num_classes=1000,
        ),
    )
}


def load_config(name: str) -> ml_collections.ConfigDict:
    return config_lib.load_config(os.path.join(REPO, "configs", f"{name}.py"))


def network_model(network: str) -> ml_collections.ConfigDict:
    """The model section of a benchmark network."""
    if network == "digits":
        return load_config("flow_digits").model
    if network == "ddpmpp":
        return load_config("trigflow_cifar").model
    if network == "dit_b2":
        return ml_collections.ConfigDict(dict(name="dit", size="B", patch=2, dtype="bfloat16"))
    raise ValueError(f"unknown network {network!r}; known: {', '.join(NETWORKS)}")


def check_command_line(argv: list[str], **names: tuple[list[str], Any]) -> None:
    """A benchmark's usage errors: arguments left after the flags, and for each keyword
    (e.g. runs=(FLAGS.runs, RUNS)) names that are not among the known ones."""
    from absl import app

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    for what, (given, known) in names.items():
        unknown = [n for n in given if n not in known]
        if unknown:
            raise app.UsageError(f"unknown {what} {unknown}; known: {', '.join(known)}")


def method_config(method: str) -> ml_collections.ConfigDict:
    """configs/<method>_digits.py, the settings a benchmark of `method` starts from."""
    if method not in methods_lib.REGISTRY:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(methods_lib.REGISTRY)}")
    return load_config(f"{method}_digits")


def uses_d(method: str) -> bool:
    """Whether the method's network takes the second conditioning input `d` (model.use_d)."""
    return bool(method_config(method).model.get("use_d", False))


def bench_config(
    method: str, network: str, batch_size: int, model_overrides: dict[str, Any]
) -> tuple[ml_collections.ConfigDict, list[str]]:
    """(config of `method` on the benchmark network and batch, notes on what was changed)."""
    config = method_config(method)
    use_d = config.model.get("use_d", False)
    config.model = network_model(network)
    config.model.update(model_overrides)
    if use_d:
        config.model.use_d = True
    config.data = ml_collections.ConfigDict(NETWORKS[network].data)
    config.train.batch_size = batch_size
    config.train.update(dict(sample_every=0, eval_every=0))
    notes = []
    if config.train.init_from:
        notes.append(f"random weights instead of the pretrained {config.train.init_from}")
        config.train.init_from = ""
    return config, notes


@contextlib.contextmanager
def random_batches(network: Network) -> Iterator[None]:
    """While active, datasets are built as random batches of the network's data shape (no-op
    for the embedded digits data). Only `setup` needs it: the iterator it returns keeps working."""
    if network.shape is None:
        yield
        return
    info = data_lib.DatasetInfo(network.data["name"], network.shape, network.num_classes, network.data_std)

    def build(data_cfg, *, seed, global_batch_size, process_index=0, process_count=1):
        del data_cfg

        def draw(n: int, rng: np.random.Generator) -> np.ndarray:
            return network.data_std * rng.standard_normal((n, *network.shape), dtype=np.float32)

        layout = dict(
            seed=seed, global_batch_size=global_batch_size, process_index=process_index, process_count=process_count
        )
        return info, pipeline.FreshSampleIterator(draw, **layout)

    original = data_lib.build_dataset
    data_lib.build_dataset = build
    try:
        yield
    finally:
        data_lib.build_dataset = original


@contextlib.contextmanager
def unoptimized_compilation() -> Iterator[None]:
    """Compile without XLA's expensive optimizations while active: for functions that run once
    (initialization), whose compilation at the digits scale costs nearly as much as the train
    step's. Never around anything that is timed."""
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", previous)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine() -> dict:
    """The machine a benchmark ran on: CPU, accelerator, versions, and a one-line description."""
    import jaxlib

    device = jax.devices()[0]
    machine = {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": device.platform,
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "python": platform.python_version(),
        "os": platform.platform(),
    }
    devices = f"{machine['device_count']} x {machine['device_kind']}"
    if device.platform == "cpu":
        devices = "no accelerator"
    machine["description"] = (
        f"{machine['cpu_model']} ({machine['cpu_count']} cores), {devices}, jax {machine['jax']}, "
        f"Python {machine['python']}"
    )
    return machine


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def machine_tag(machine: dict) -> str:
    """Short name of a machine (describe_machine's output) for result file names."""
    if machine["platform"] == "cpu":
        return f"cpu{machine['cpu_count']}-{slug(machine['cpu_model'])}"
    count = machine["device_count"]
    return slug(machine["device_kind"]) + (f"-x{count}" if count > 1 else "")


def write_report(out_dir: str, name: str, report: dict, table: str) -> str:
    """out_dir/<name>.json (the report) and .md (its table); returns the path without suffix."""
    import json

    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, name)
    with open(base + ".json", "w") as f:
        json.dump(report, f, indent=2)
    with open(base + ".md", "w") as f:
        f.write(table)
    return base


def publish_report(out_dir: str, name: str, report: dict, table: str) -> str:
    """write_report, then the table on stdout and where the files went on stderr."""
    base = write_report(out_dir, name, report, table)
    print(table)
    progress(f"wrote {base}.json and {base}.md")
    return base


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """KEY=VALUE strings -> {KEY: VALUE}, VALUE read as a Python literal where it is one."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--model_override needs KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key.strip()] = value
    return out


def example_batch(info: data_lib.DatasetInfo) -> dict[str, np.ndarray]:
    return {"x": np.zeros((1, *info.shape), np.float32), "y": np.zeros((1,), np.int32)}


def attach_random_teacher(exp: experiment.Experiment) -> bool:
    """exp.frozen as experiment.attach_frozen sets it, but a teacher the method asks for (sCD's, AYF's)
    is a network of its `teacher_method` (TrigFlow for sCD, flow matching for AYF) with this
    architecture and random weights.
    Returns whether one was asked for."""
    asked = []

    def loader(workdir: str):
        asked.append(workdir)
        config = ml_collections.ConfigDict(exp.config.to_dict())
        section = dict(name=exp.method.teacher_method)
        teacher_fields = {f.name for f in dataclasses.fields(methods_lib.REGISTRY[exp.method.teacher_method].Config)}
        if "sigma_d" in teacher_fields:
            section["sigma_d"] = getattr(exp.method.cfg, "sigma_d", 0.5)
        config.method = ml_collections.ConfigDict(section)
        if config.model.get("use_d", False):
            config.model.use_d = False  # the teacher takes no second input
        net = models.build(config.model, data_shape=exp.info.shape, num_classes=exp.info.num_classes)
        teacher = methods_lib.build(config.method, net, exp.info)
        params = jax.jit(teacher.init_params)(jax.random.key(TEACHER_SEED), example_batch(exp.info))
        return config, params["net"]

    frozen = exp.method.load_frozen(loader)
    if frozen is not None:
        exp.frozen = jax.device_put(frozen, sharding.replicated(exp.mesh))
    return bool(asked)


def first_cost(analysis: Any) -> dict[str, float] | None:
    """compiled.cost_analysis() is a dict, or a list of one dict per program on older jax."""
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    return analysis or None


def host_memory() -> dict[str, float | None]:
    """This process's peak resident set (ru_maxrss: monotone over the process's life) and the
    current one, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_mib = peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux
    current = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/self/statm") as f:
            current = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    return {"host_peak_rss_mib": peak_mib, "host_rss_mib": current}


def device_peak_mib() -> float | None:
    """Peak device memory of this process (memory_stats peak_bytes_in_use; None on CPU)."""
    stats = jax.local_devices()[0].memory_stats()
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    return stats["peak_bytes_in_use"] / 2**20


def memory_plan(compiled: Any) -> dict[str, float] | None:
    """XLA's memory plan of a compiled program in MiB: arguments, outputs, outputs aliasing
    (donated) arguments, temporaries, and total = arguments + temporaries + outputs - aliased, the
    most the program holds at once. None where the backend gives no plan."""
    memory = compiled.memory_analysis()
    if memory is None:
        return None
    sizes = {k: getattr(memory, f"{k}_size_in_bytes") / 2**20 for k in ("argument", "output", "alias", "temp")}
    sizes["total"] = sizes["argument"] + sizes["temp"] + sizes["output"] - sizes["alias"]
    return sizes


def steps_for_nfe(method: methods_lib.Method, nfe: int, sampler: str) -> tuple[int, str] | None:
    """(step count, sampler) that makes exactly `nfe` network evaluations with the method's
    configured sampler, else with Euler; None when the method cannot."""
    for name in dict.fromkeys((sampler, "euler")):
        for steps in range(1, nfe + 1):
            try:
                method.check_steps(steps)
            except ValueError:
                continue
            if method.nfe(steps, name) == nfe:
                return steps, name
    return None


@dataclasses.dataclass
class SamplerRun:
    """One sampling call: `steps` steps of `sampler` on `batch_size` images; the first call compiles."""

    fns: eval_lib.SampleFns
    params: Any
    labels: jax.Array | None
    batch_size: int
    steps: int
    sampler: str

    def __call__(self, seed: int) -> float:
        """Seconds of one call, waited for with block_until_ready."""
        start = time.perf_counter()
        x = self.fns(
            self.params,
            jax.random.key(seed),
            labels=self.labels,
            num_samples=self.batch_size,
            num_steps=self.steps,
            sampler=self.sampler,
            guidance=1.0,
        )
        jax.block_until_ready(x)
        return time.perf_counter() - start


class MethodBench:
    """One method on the benchmark network: experiment, train state, batches, compiled step."""

    def __init__(
        self,
        method: str,
        network: str,
        batch_size: int,
        workdir: str,
        model_overrides: dict[str, Any] | None = None,
        shape: tuple[int, ...] | None = None,
    ):
        """`shape`: the random batches' example shape instead of the network's (a smaller image)."""
        self.name = method
        self.config, self.notes = bench_config(method, network, batch_size, model_overrides or {})
        data = NETWORKS[network] if shape is None else dataclasses.replace(NETWORKS[network], shape=tuple(shape))
        with random_batches(data):
            self.exp = experiment.setup(self.config, os.path.join(workdir, method))
        with unoptimized_compilation():
            if attach_random_teacher(self.exp):
                title = methods_lib.REGISTRY[self.exp.method.teacher_method].title
                self.notes.append(f"frozen teacher: a {title} network of the same architecture, random weights")
            self.state = experiment.init_state(self.exp)
        self.step = train.make_train_step(self.exp)
        self.batches = [
            sharding.global_batch(next(self.exp.iterator), self.exp.batch_sharding) for _ in range(NUM_BATCHES)
        ]
        self.num_params = models.count_params(self.state.params["net"])
        self.lowered = None
        self.lower_s = None
        self.compiled = None
        self.cursor = 0

    def lower(self) -> None:
        """Traces and lowers the train step (holds Python's lock; compile() then need not)."""
        start = time.perf_counter()
        self.lowered = self.step.lower(self.state, self.batches[0])
        self.lower_s = time.perf_counter() - start

    def compile(self) -> dict[str, Any]:
        """Ahead-of-time lower (unless lower() did) + compile of the train step; its FLOPs and XLA's
        memory plan. XLA compiles without Python's lock, so several benches may compile on threads."""
        if self.lowered is None:
            self.lower()
        start = time.perf_counter()
        self.compiled = self.lowered.compile()
        done = time.perf_counter()
        cost = first_cost(self.compiled.cost_analysis())
        flops = cost.get("flops") if cost else None
        return {
            "lower_s": self.lower_s,
            "compile_s": done - start,
            "flops_per_step": float(flops) if flops and flops > 0 else None,
            "xla_memory_mib": memory_plan(self.compiled),
        }

    def run(self, num_steps: int) -> list[float]:
        """Seconds of each of `num_steps` training steps, each waited for with block_until_ready."""
        times = []
        for _ in range(num_steps):
            batch = self.batches[self.cursor % NUM_BATCHES]
            self.cursor += 1
            start = time.perf_counter()
            self.state, metrics = self.compiled(self.state, batch, self.exp.frozen)
            jax.block_until_ready((self.state, metrics))
            times.append(time.perf_counter() - start)
        return times

    def samplers(self, nfes: list[int], batch_size: int) -> dict[int, SamplerRun | None]:
        """For each NFE, one sampling call of `batch_size` images (rounded up to the device count)
        with the method's sampler at that many network evaluations; None where it has none. They
        hold the current EMA weights: make them after the last train step, which donates the state."""
        fns = eval_lib.SampleFns(self.exp.method, self.exp.batch_sharding)
        batch_size = -(-batch_size // fns.num_shards) * fns.num_shards
        params = self.exp.sampling_params(self.state)
        labels = eval_lib.eval_labels(self.exp.info.num_classes, batch_size)
        labels = None if labels is None else jnp.asarray(labels)
        runs: dict[int, SamplerRun | None] = {}
        for nfe in nfes:
            plan = steps_for_nfe(self.exp.method, nfe, self.exp.eval.sampler)
            runs[nfe] = None if plan is None else SamplerRun(fns, params, labels, batch_size, *plan)
        return runs

    def close(self) -> None:
        self.exp.checkpointer.close()


def interleaved_rounds(benches: dict[str, MethodBench], rounds: int, steps: int) -> dict[str, list[list[float]]]:
    """Step times [round][step] per method: every round gives each method `steps` single steps,
    round-robin from method r (mod the method count) in round r, so drift of the machine falls on
    all methods alike. Python's garbage collector is paused meanwhile, as timeit does, so that no
    step pays for it."""
    names = list(benches)
    times: dict[str, list[list[float]]] = {m: [] for m in names}
    gc.collect()
    gc.disable()
    try:
        for r in range(rounds):
            start = r % len(names)
            for m in names[start:] + names[:start]:
                times[m].append(benches[m].run(steps))
            progress(
                f"round {r + 1}/{rounds}: "
                + ", ".join(f"{m} {statistics.median(times[m][-1]) * 1e3:.0f}" for m in names)
                + " ms"
            )
    finally:
        gc.enable()
    return times


def quartiles(xs: list[float]) -> tuple[float, float, float]:
    """(first quartile, median, third quartile), inclusive method."""
    if len(xs) < 2:
        return xs[0], xs[0], xs[0]
    q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return q1, statistics.median(xs), q3


def step_summary(rounds: list[list[float]], flow_rounds: list[list[float]] | None, batch_size: int) -> dict:
    """The statistics of one method's timed steps ([round][step]) next to the reference's from the
    same rounds (None: no reference, so no ratios)."""
    times = [t for r in rounds for t in r]
    q1, median, q3 = quartiles(times)
    out = {
        "step_times_s": times,
        "step_s": {"median": median, "q1": q1, "q3": q3, "iqr": q3 - q1, "n": len(times)},
        "images_per_s": batch_size / median,
        "ratio_to_flow": None,
        "round_ratios": None,
    }
    if flow_rounds:
        out["ratio_to_flow"] = median / statistics.median([t for r in flow_rounds for t in r])
        out["round_ratios"] = [statistics.median(r) / statistics.median(f) for r, f in zip(rounds, flow_rounds)]
    return out


def sampling_rounds(
    benches: dict[str, MethodBench], nfes: list[int], batch_size: int, reps: int, threads: int = 0
) -> dict[str, list[dict]]:
    """Images/s of every method's sampler at each of `nfes`: all samplers are compiled first (on
    `threads` parallel threads, 0: up to 4; XLA compiles without holding Python's lock), then
    `reps` rounds time one call of each, round-robin."""
    runs = {m: b.samplers(nfes, batch_size) for m, b in benches.items()}
    calls = [(m, nfe) for m in runs for nfe in nfes if runs[m][nfe] is not None]
    progress(f"sampling: compiling {len(calls)} samplers")
    with concurrent.futures.ThreadPoolExecutor(threads or min(4, os.cpu_count() or 1)) as pool:
        list(pool.map(lambda call: runs[call[0]][call[1]](0), calls))
    times: dict[tuple[str, int], list[float]] = {call: [] for call in calls}
    for rep in range(reps):
        for m, nfe in calls:
            times[m, nfe].append(runs[m][nfe](rep + 1))
    progress(f"sampling: timed {reps} rounds")
    return {
        m: [sampling_row(nfe, run, times.get((m, nfe), [])) for nfe, run in by_nfe.items()]
        for m, by_nfe in runs.items()
    }


def sampling_row(nfe: int, run: SamplerRun | None, times: list[float]) -> dict:
    if run is None:
        return {"nfe": nfe, "steps": None, "sampler": None, "batch_size": None, "times_s": [], "images_per_s": None}
    median = statistics.median(times)
    return {
        "nfe": nfe,
        "steps": run.steps,
        "sampler": run.sampler,
        "batch_size": run.batch_size,
        "times_s": times,
        "median_s": median,
        "images_per_s": run.batch_size / median,
    }


def fmt(value: Any, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


#: Dense (no sparsity) peak TFLOP/s from the vendors' datasheets, by device-kind substring and
#: compute dtype; the first match wins.
DATASHEET_TFLOPS = (
    ("H100 PCIe", "bfloat16", 756.0),
    ("H100 NVL", "bfloat16", 835.5),
    ("H100", "bfloat16", 989.4),
    ("H200", "bfloat16", 989.4),
    ("A100", "bfloat16", 312.0),
)


def datasheet_tflops(device_kind: str, dtype: str) -> float | None:
    """Dense peak TFLOP/s of a known accelerator in `dtype` from DATASHEET_TFLOPS, else None."""
    for name, dt, value in DATASHEET_TFLOPS:
        if name in device_kind and dt == dtype:
            return value
    return None


def measured_matmul_tflops(dtype: str, reps: int = 5, n: int = 0) -> float:
    """TFLOP/s of one square n x n matmul in `dtype` (n 0: 8192 on accelerators, 2048 on CPU),
    median of `reps` calls after one warm-up call: the throughput this device reaches on the
    easiest kernel, a lower bound on its peak."""
    n = n or (2048 if jax.default_backend() == "cpu" else 8192)
    a = jnp.ones((n, n), getattr(jnp, dtype))
    matmul = jax.jit(lambda a, b: a @ b).lower(a, a).compile()
    jax.block_until_ready(matmul(a, a))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(matmul(a, a))
        times.append(time.perf_counter() - start)
    return 2 * n**3 / float(np.median(times)) / 1e12


def peak_tflops(dtype: str, given: float = 0.0) -> tuple[float, str]:
    """(peak TFLOP/s per device, where it comes from) for MFU: `given`, else the datasheet value
    of a known accelerator, else a measured matmul."""
    if given > 0:
        return given, "given (--peak_tflops)"
    kind = jax.devices()[0].device_kind
    value = datasheet_tflops(kind, dtype)
    if value is not None:
        return value, f"datasheet dense {dtype} peak of {kind}"
    value = measured_matmul_tflops(dtype)
    return value, f"measured {dtype} matmul on this device (a lower bound on its peak, so MFU is an upper bound)"
