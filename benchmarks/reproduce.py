"""The reproduction report: every method on toy2d and digits, same network and budget.

  make reproduce                      # = python benchmarks/reproduce.py (about 85 min on 2 CPU cores)
  python benchmarks/reproduce.py --datasets=toy2d --jobs=2      # the toy part only (minutes)
  python benchmarks/reproduce.py --report_only                  # rewrite the report from finished runs

Trains (configs/<method>_<dataset>.py, unchanged apart from where pretrained models live and how
often training evaluates), evaluates and writes docs/REPRODUCTION.md with its pictures in
docs/reproduction/. Runs go to --workdir/<dataset>/<run>; a finished run is never redone, an
interrupted one resumes from its last checkpoint, so the command can be stopped and started again.

Budget. Every run trains the same network (the dataset's MLP or UNet; shortcut, MeanFlow,
alpha-Flow and AYF add their step-size or interval input, iMF its guidance inputs and a copy of
the network as its auxiliary head) for the same number of steps at the same batch. The methods
the papers train from a pretrained model (sCT and sCD from TrigFlow, ECT and SCT from EDM, DMF
from flow matching) spend that budget again on top of it, as in the papers; AYF distils the
flow-matching run.

Evaluation. --seeds independent draws of the evaluator's sample count at each NFE; the tables give
the mean and the standard deviation over draws (evaluation noise only: one training run per
method). Each paper's claims are checked against these numbers by the rules in CLAIMS, and a
difference counts only when it exceeds twice the combined evaluation noise.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from typing import Any, Callable

from absl import app, flags, logging

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import harness  # noqa: E402  (benchmarks/, next to this file)

from fewstep_jax import methods as methods_lib  # noqa: E402

flags.DEFINE_list("datasets", ["toy2d", "digits"], "Datasets (toy2d, digits).")
flags.DEFINE_string("workdir", "runs/reproduction", "Root of the training runs.")
flags.DEFINE_string("out", "docs/REPRODUCTION.md", "The report; its pictures go to <dir>/reproduction/.")
flags.DEFINE_integer("jobs", 2, "Training / evaluation processes at a time.")
flags.DEFINE_integer("seeds", 3, "Evaluation draws per NFE.")
flags.DEFINE_boolean("report_only", False, "Only rewrite the report from the runs' evaluations.")
flags.DEFINE_string("evaluate", "", "Internal: evaluate one run, DATASET/RUN.")
FLAGS = flags.FLAGS

FEW = (1, 2, 4, 8)
MANY = (1, 2, 4, 8, 16, 32, 64)


@dataclasses.dataclass(frozen=True)
class Run:
    key: str  # directory name under <workdir>/<dataset>
    label: str
    config: str  # configs/<config>_<dataset>.py
    variant: str = ""
    init: str = ""  # run whose EMA initializes this one
    teacher: str = ""  # run that serves as the distillation teacher
    nfes: tuple[int, ...] = FEW


def method_label(name: str) -> str:
    """The method's paper name (`title`), with what it starts from or what the others take from it."""
    registry = methods_lib.REGISTRY
    method = registry[name]
    if method.pretrained_method:
        return f"{method.title} (from {registry[method.pretrained_method].title})"
    if any(m.teacher_method == name for m in registry.values()):
        return f"{method.title} (teacher)"
    students = [m.title for m in registry.values() if m.pretrained_method == name]
    return f"{method.title} ({'/'.join(students)}'s pretrained model)" if students else method.title


def method_run(name: str) -> Run:
    """The run of a registered method: its configs, what it starts from (`pretrained_method`) and
    distils (`teacher_method`), evaluated up to 64 steps when it is compared at many (`many_steps`)."""
    method = methods_lib.REGISTRY[name]
    nfes = MANY if method.many_steps else FEW
    return Run(name, method_label(name), name, init=method.pretrained_method, teacher=method.teacher_method, nfes=nfes)


def all_runs() -> tuple[Run, ...]:
    """One run per registered method, those trained from scratch (the pretrained models and
    teachers among them) first, in the registry's order; then phased SCT (SCT sec. 4.3) at its 4 steps
    and DMF's ablation "MF" (MeanFlow's conditioning, tuned from the same flow model as DMF)."""
    scratch = [n for n, m in methods_lib.REGISTRY.items() if not m.pretrained_method]
    tuned = [n for n, m in methods_lib.REGISTRY.items() if m.pretrained_method]
    sct = method_run("sct")
    phased = dataclasses.replace(sct, key="sct_phased", label=f"phased {sct.label}", variant="phased", nfes=(4,))
    dmf = method_run("dmf")
    dmf_mf = dataclasses.replace(dmf, key="dmf_meanflow", label=f"MeanFlow {dmf.label.split(' ', 1)[1]}",
                                 variant="meanflow")  # fmt: skip
    return (*map(method_run, scratch), *map(method_run, tuned), phased, dmf_mf)


RUNS = all_runs()
BY_KEY = {r.key: r for r in RUNS}
#: Many-step baselines (PF-ODE samplers): their training curves show the metric at the most steps evaluated.
BASELINES = tuple(r.key for r in RUNS if issubclass(methods_lib.REGISTRY[r.config], methods_lib.ODEMethod))
#: Evaluations during training, for the training curves (the configs evaluate only at the end).
EVALS_DURING_TRAINING = 4
#: Samples kept per NFE for the pictures: per class on digits, points on toy2d.
GRID_PER_CLASS = 2
SCATTER_POINTS = 2000
SCATTER_SHOWN = 1000  # per panel of the picture (a small PNG)


def run_dir(dataset: str, run: Run) -> str:
    return os.path.join(FLAGS.workdir, dataset, run.key)


def config_arg(dataset: str, run: Run) -> str:
    path = os.path.join("configs", f"{run.config}_{dataset}.py")  # the jobs run in the repository root
    return path + (f":{run.variant}" if run.variant else "")


def load_config(dataset: str, run: Run):
    from fewstep_jax import config_lib

    config = config_lib.load_config(os.path.join(REPO, "configs", f"{run.config}_{dataset}.py"), run.variant or None)
    config.update_from_flattened_dict(overrides(dataset, run, config.train.num_steps))
    return config


def overrides(dataset: str, run: Run, num_steps: int) -> dict[str, Any]:
    out: dict[str, Any] = {"train.eval_every": num_steps // EVALS_DURING_TRAINING}
    if run.init:
        out["train.init_from"] = run_dir(dataset, BY_KEY[run.init])
    if run.teacher:
        out["method.teacher"] = run_dir(dataset, BY_KEY[run.teacher])
    return out


# ---------------------------------------------------------------------------
# Jobs


def finished(workdir: str) -> bool:
    try:
        with open(os.path.join(workdir, "summary.json")) as f:
            return json.load(f).get("status") == "finished"
    except (OSError, ValueError):
        return False


def eval_path(dataset: str, run: Run) -> str:
    return os.path.join(run_dir(dataset, run), "reproduction_eval.json")


@dataclasses.dataclass
class Job:
    name: str
    command: list[str]
    log: str
    deps: tuple[str, ...]
    done: Callable[[], bool]


def jobs_for(dataset: str) -> list[Job]:
    out = []
    for run in RUNS:
        wd = run_dir(dataset, run)
        num_steps = load_config(dataset, run).train.num_steps
        train_cmd = [sys.executable, "-m", "fewstep_jax.main", f"--config={config_arg(dataset, run)}"]
        train_cmd += [f"--workdir={wd}"] + [f"--config.{k}={v}" for k, v in overrides(dataset, run, num_steps).items()]
        deps = tuple(f"train {dataset}/{k}" for k in {run.init, run.teacher} if k)
        logs = os.path.join(FLAGS.workdir, "logs")
        out.append(Job(f"train {dataset}/{run.key}", train_cmd, f"{logs}/{dataset}_{run.key}_train.log", deps,
                       lambda wd=wd: finished(wd)))  # fmt: skip
        eval_cmd = [sys.executable, os.path.abspath(__file__), f"--evaluate={dataset}/{run.key}",
                    f"--workdir={FLAGS.workdir}", f"--seeds={FLAGS.seeds}"]  # fmt: skip
        evaluated = eval_path(dataset, run)
        out.append(Job(f"eval {dataset}/{run.key}", eval_cmd, f"{logs}/{dataset}_{run.key}_eval.log",
                       (f"train {dataset}/{run.key}",), lambda path=evaluated: os.path.exists(path)))  # fmt: skip
    return out


def run_jobs(jobs: list[Job], parallel: int) -> None:
    """Run the jobs, each once its dependencies are done, `parallel` at a time. A failed job
    blocks the jobs that depend on it; the others go on, and the failures are raised at the end."""
    pending = {j.name: j for j in jobs if not j.done()}
    done = {j.name for j in jobs} - set(pending)
    logging.info("%d jobs to run, %d already done", len(pending), len(done))
    lock, failures, running = threading.Lock(), [], {}
    start = time.time()

    def execute(job: Job) -> None:
        os.makedirs(os.path.dirname(job.log), exist_ok=True)
        t0 = time.time()
        with open(job.log, "a") as log:  # appended to: a resumed job keeps its earlier output
            rc = subprocess.call(job.command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        with lock:
            if rc != 0:
                failures.append(f"{job.name} failed (exit {rc}); see {job.log}")
            else:
                done.add(job.name)
            logging.info("%s: %s in %.0f s (%d of %d jobs left, %.0f min so far)", job.name,
                         "done" if rc == 0 else "FAILED", time.time() - t0,
                         len(pending) + len(running) - 1, len(jobs), (time.time() - start) / 60)  # fmt: skip

    with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
        while pending or running:
            with lock:
                for name in [n for n, f in running.items() if f.done()]:
                    running.pop(name).result()
                ready = [j for j in pending.values() if set(j.deps) <= done]
                for job in ready[: parallel - len(running)]:
                    logging.info("start %s (log: %s)", job.name, job.log)
                    running[job.name] = pool.submit(execute, pending.pop(job.name))
                if not running and not ready and pending:  # what is left waits on a failed job
                    failures.append(f"not run (a dependency failed): {', '.join(sorted(pending))}")
                    pending.clear()
            time.sleep(1.0)
        for future in running.values():
            future.result()
    if failures:
        raise RuntimeError("; ".join(failures))


# ---------------------------------------------------------------------------
# Evaluation of one run (in its own process)


def evaluate_run(dataset: str, run: Run, seeds: int) -> None:
    import jax
    import numpy as np

    from fewstep_jax import evaluate as eval_lib
    from fewstep_jax import experiment
    from fewstep_jax import metrics as metrics_lib

    config = load_config(dataset, run)
    wd = run_dir(dataset, run)
    exp, state, step = experiment.load_for_inference(config, wd)
    evaluator = metrics_lib.build_evaluator(config.data, exp.eval)
    params = exp.sampling_params(state)
    fns = eval_lib.SampleFns(exp.method, exp.batch_sharding)
    n = exp.eval.num_samples or evaluator.num_samples
    num_classes = exp.method.info.num_classes
    labels = eval_lib.eval_labels(num_classes, n)
    supported = exp.method.supported_steps
    nfes = [k for k in run.nfes if supported is None or k in supported]
    rows, kept = [], {}
    for seed in range(seeds):
        rng = jax.random.fold_in(jax.random.key(20_251_122), seed)
        for k in nfes:
            samples = eval_lib.generate_steps(fns, params, rng, k, exp.eval, n=n, labels=labels,
                                              batch_size=min(exp.eval.batch_size, n))  # fmt: skip
            metrics = evaluator.evaluate(samples, labels)
            rows.append({"seed": seed, "steps": k, "nfe": exp.method.nfe(k, exp.eval.sampler),
                         **{m: float(v) for m, v in metrics.items()}})  # fmt: skip
            logging.info("%s/%s seed %d steps %d: %s", dataset, run.key, seed, k,
                         "  ".join(f"{m}={v:.4g}" for m, v in metrics.items()))  # fmt: skip
            if seed == 0:
                if num_classes:
                    pick = np.concatenate([np.flatnonzero(labels == c)[:GRID_PER_CLASS] for c in range(num_classes)])
                    pick = pick.reshape(num_classes, GRID_PER_CLASS).T.reshape(-1)  # rows of one sample per class
                    kept[f"steps{k}"] = samples[pick]
                else:
                    kept[f"steps{k}"] = samples[:SCATTER_POINTS]
    exp.checkpointer.close()
    result = {"step": int(step), "rows": rows, "floor": {m: float(v) for m, v in evaluator.floor().items()},
              "primary": evaluator.primary, "num_samples": int(n), "sampler": exp.eval.sampler}  # fmt: skip
    if getattr(evaluator, "reference", None) is not None:  # toy2d: the exact samples it scores against
        kept["reference"] = np.asarray(evaluator.reference)[:SCATTER_POINTS]
    np.savez_compressed(os.path.join(wd, "reproduction_samples.npz"), **kept)
    with open(eval_path(dataset, run) + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(eval_path(dataset, run) + ".tmp", eval_path(dataset, run))


# ---------------------------------------------------------------------------
# Reading the runs


@dataclasses.dataclass(frozen=True)
class Stat:
    """A metric over evaluation draws."""

    mean: float
    std: float
    n: int

    def __str__(self) -> str:
        """The mean to the standard deviation's second digit, or to 3 significant digits if that is
        coarser; the standard deviation to 2 significant digits."""
        if self.n < 2 or self.std == 0 or not math.isfinite(self.std):
            return f"{self.mean:.3g}"
        digits = max(0, 1 - math.floor(math.log10(self.std)))
        mean_digits = max(0, 2 - math.floor(math.log10(abs(self.mean)))) if self.mean else digits
        return f"{self.mean:.{min(digits, mean_digits)}f} ± {self.std:.2g}"


@dataclasses.dataclass
class Results:
    """One dataset's finished runs: evaluations, training logs and summaries."""

    dataset: str
    evals: dict[str, dict]  # run key -> reproduction_eval.json
    logs: dict[str, list[dict]]  # run key -> metrics.jsonl rows
    summaries: dict[str, dict]
    configs: dict[str, Any]

    @property
    def primary(self) -> str:
        return next(iter(self.evals.values()))["primary"]

    @property
    def floor(self) -> dict[str, float]:
        return next(iter(self.evals.values()))["floor"]

    def runs(self) -> list[Run]:
        return [r for r in RUNS if r.key in self.evals]

    def stat(self, key: str, nfe: int, metric: str | None = None) -> Stat | None:
        metric = metric or self.primary
        values = [r[metric] for r in self.evals.get(key, {}).get("rows", []) if r["nfe"] == nfe]
        if not values:
            return None
        return Stat(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values))

    def nfes(self, key: str | None = None) -> list[int]:
        keys = [key] if key else list(self.evals)
        return sorted({r["nfe"] for k in keys for r in self.evals.get(k, {}).get("rows", [])})

    def best(self, key: str) -> tuple[int, Stat] | None:
        stats = [(n, self.stat(key, n)) for n in self.nfes(key)]
        return min(stats, key=lambda ns: ns[1].mean) if stats else None


def load_results(dataset: str) -> Results:
    evals, logs, summaries, configs = {}, {}, {}, {}
    for run in RUNS:
        path = eval_path(dataset, run)
        if not os.path.exists(path):
            continue
        with open(path) as f:
            evals[run.key] = json.load(f)
        with open(os.path.join(run_dir(dataset, run), "metrics.jsonl")) as f:
            logs[run.key] = [json.loads(line) for line in f if line.strip()]
        with open(os.path.join(run_dir(dataset, run), "summary.json")) as f:
            summaries[run.key] = json.load(f)
        configs[run.key] = load_config(dataset, run)
    return Results(dataset, evals, logs, summaries, configs)


def parameter_count(dataset: str, run: Run) -> str:
    try:
        with open(os.path.join(run_dir(dataset, run), "parameters.txt")) as f:
            last = f.read().strip().splitlines()[-1]
        return last.split()[1]
    except (OSError, IndexError):
        return "?"


def training_evals(
    res: Results, key: str, metric: str | None = None, *, most: bool = False
) -> tuple[int, list[tuple[int, float]]]:
    """(steps, [(training step, metric)]) of the evaluations made during training at the
    fewest (or the most) steps the run was evaluated with."""
    metric = metric or res.primary
    found: dict[int, dict[int, float]] = {}
    for row in res.logs.get(key, []):
        for name, value in row.items():
            parts = name.split("/")
            if len(parts) == 3 and parts[0] == "eval" and parts[2] == metric and "_nfe" in parts[1]:
                found.setdefault(int(parts[1].rsplit("_nfe", 1)[1]), {})[row["step"]] = value
    if not found:
        return 0, []
    nfe = max(found) if most else min(found)
    return nfe, sorted(found[nfe].items())


# ---------------------------------------------------------------------------
# The papers' claims, checked on the numbers


def versus(a: Stat | None, b: Stat | None) -> str:
    """'lower' / 'higher' when a differs from b by more than twice the combined evaluation noise
    (the metrics are lower-is-better), 'level' otherwise, 'missing' without both."""
    if a is None or b is None:
        return "missing"
    margin = 2.0 * math.hypot(a.std, b.std)
    if a.mean < b.mean - margin:
        return "lower"
    if a.mean > b.mean + margin:
        return "higher"
    return "level"


SUPPORTED, NOT_SUPPORTED, UNRESOLVED, MISSING = "supported", "not supported", "within noise", "not run"


def lower_is_claimed(a: Stat | None, b: Stat | None) -> str:
    return {"lower": SUPPORTED, "higher": NOT_SUPPORTED, "level": UNRESOLVED, "missing": MISSING}[versus(a, b)]


@dataclasses.dataclass(frozen=True)
class Claim:
    paper: str
    text: str
    check: Callable[[Results], tuple[str, str]]  # -> (verdict, evidence)


def _pair(res: Results, a: tuple[str, int], b: tuple[str, int], names: tuple[str, str]) -> tuple[str, str]:
    """Claim: a (run, NFE) is better than b."""
    sa, sb = res.stat(*a), res.stat(*b)
    if sa is None or sb is None:
        return MISSING, ""
    return lower_is_claimed(sa, sb), f"{names[0]} {sa} vs {names[1]} {sb}"


def _not_worse(res: Results, a: tuple[str, int], b: tuple[str, int], names: tuple[str, str]) -> tuple[str, str]:
    """Claim: a (run, NFE) is level with or better than b."""
    verdict, evidence = _pair(res, b, a, names[::-1])
    return {SUPPORTED: NOT_SUPPORTED, NOT_SUPPORTED: SUPPORTED, UNRESOLVED: SUPPORTED}.get(verdict, verdict), evidence


def _within_of_teacher(res: Results, key: str, nfe: int, factor: float) -> tuple[str, str]:
    student, best = res.stat(key, nfe), res.best(BY_KEY[key].init)
    if student is None or best is None:
        return MISSING, ""
    limit = factor * best[1].mean
    noise = 2.0 * math.hypot(student.std, best[1].std)
    verdict = SUPPORTED if student.mean <= limit else UNRESOLVED if student.mean - noise <= limit else NOT_SUPPORTED
    return verdict, f"{student} vs teacher's best {best[1]} (NFE {best[0]}): x{student.mean / best[1].mean:.2f}"


def _finite_tangents(res: Results) -> tuple[str, str]:
    rows = [r for k in ("scm_sct", "scm_scd") for r in res.logs.get(k, []) if "tangent_nonfinite_frac" in r]
    if not rows:
        return MISSING, ""
    worst = max(r["tangent_nonfinite_frac"] for r in rows)
    return (SUPPORTED if worst == 0 else NOT_SUPPORTED), f"largest logged non-finite tangent fraction {worst:g}"


def _faster_convergence(res: Results) -> tuple[str, str]:
    nfe_a, ect = training_evals(res, "ect")
    nfe_b, sct = training_evals(res, "sct")
    final = res.stat("sct", 1), res.stat("ect", 1)
    common = sorted(set(dict(ect)) & set(dict(sct)))
    if not common or nfe_a != nfe_b or None in final:
        return MISSING, ""
    noise = 2.0 * math.hypot(final[0].std, final[1].std)  # single draws: the final evaluations' noise
    ahead = sum(dict(sct)[s] < dict(ect)[s] - noise for s in common)
    behind = sum(dict(sct)[s] > dict(ect)[s] + noise for s in common)
    verdict = SUPPORTED if ahead > len(common) / 2 else NOT_SUPPORTED if behind > len(common) / 2 else UNRESOLVED
    pairs = ", ".join(f"{s}: {dict(sct)[s]:.3g} vs {dict(ect)[s]:.3g}" for s in common)
    return verdict, f"SCT vs ECT at {nfe_a} step during training ({pairs}; noise +-{noise:.2g})"


def _monotone(res: Results, key: str, nfes: tuple[int, ...]) -> tuple[str, str]:
    stats = [res.stat(key, n) for n in nfes]
    if None in stats:
        return MISSING, ""
    verdicts = [versus(stats[i + 1], stats[i]) for i in range(len(stats) - 1)]
    verdict = NOT_SUPPORTED if "higher" in verdicts else SUPPORTED if "lower" in verdicts else UNRESOLVED
    return verdict, " -> ".join(str(s) for s in stats) + f" at NFE {', '.join(map(str, nfes))}"


CLAIMS = (
    Claim("scm", "2-step sCT is within 10% of the teacher's best metric",
          lambda r: _within_of_teacher(r, "scm_sct", 2, 1.10)),
    Claim("scm", "2-step sCD is within 10% of the teacher's best metric",
          lambda r: _within_of_teacher(r, "scm_scd", 2, 1.10)),
    Claim("scm", "sCD is level with or better than sCT at 2 steps",
          lambda r: _not_worse(r, ("scm_scd", 2), ("scm_sct", 2), ("sCD", "sCT"))),
    Claim("scm", "continuous-time training is stable: every jvp tangent finite", _finite_tangents),
    Claim("sct", "SCT beats ECT at 1 step", lambda r: _pair(r, ("sct", 1), ("ect", 1), ("SCT", "ECT"))),
    Claim("sct", "SCT beats ECT at 2 steps", lambda r: _pair(r, ("sct", 2), ("ect", 2), ("SCT", "ECT"))),
    Claim("sct", "SCT converges faster than ECT", _faster_convergence),
    Claim("sct", "4 steps of SCT beat 2", lambda r: _pair(r, ("sct", 4), ("sct", 2), ("4", "2"))),
    Claim("sct", "phased SCT at 4 steps beats one-phase SCT at 2 steps",
          lambda r: _pair(r, ("sct_phased", 4), ("sct", 2), ("phased", "SCT"))),
    Claim("shortcut", "at 1 step, shortcut beats flow matching",
          lambda r: _pair(r, ("shortcut", 1), ("flow", 1), ("shortcut", "flow"))),
    Claim("shortcut", "more steps help the same shortcut network (1 -> 4 -> 64)",
          lambda r: _monotone(r, "shortcut", (1, 4, 64))),
    Claim("shortcut", "at 64 steps, shortcut is level with or better than flow matching",
          lambda r: _not_worse(r, ("shortcut", 64), ("flow", 64), ("shortcut", "flow"))),
    Claim("meanflow", "at 1 step, MeanFlow beats the shortcut model",
          lambda r: _pair(r, ("meanflow", 1), ("shortcut", 1), ("MeanFlow", "shortcut"))),
    Claim("meanflow", "2 steps improve on 1 step", lambda r: _pair(r, ("meanflow", 2), ("meanflow", 1), ("2", "1"))),
    Claim("meanflow", "1-step MeanFlow from scratch is level with or better than 1-step sCT from a teacher",
          lambda r: _not_worse(r, ("meanflow", 1), ("scm_sct", 1), ("MeanFlow", "sCT"))),
    Claim("imf", "at 1 step, iMF beats MeanFlow", lambda r: _pair(r, ("imf", 1), ("meanflow", 1), ("iMF", "MeanFlow"))),
    Claim("imf", "2 steps improve on 1 step", lambda r: _pair(r, ("imf", 2), ("imf", 1), ("2", "1"))),
    Claim("alphaflow", "at 1 step, alpha-Flow beats MeanFlow",
          lambda r: _pair(r, ("alphaflow", 1), ("meanflow", 1), ("alpha-Flow", "MeanFlow"))),
    Claim("alphaflow", "at 2 steps, alpha-Flow beats MeanFlow",
          lambda r: _pair(r, ("alphaflow", 2), ("meanflow", 2), ("alpha-Flow", "MeanFlow"))),
    Claim("ayf", "at 4 steps, AYF beats sCD", lambda r: _pair(r, ("ayf", 4), ("scm_scd", 4), ("AYF", "sCD"))),
    Claim("ayf", "4 steps of AYF beat 1", lambda r: _pair(r, ("ayf", 4), ("ayf", 1), ("4", "1"))),
    Claim("dmf", "at 1 step, DMF beats MeanFlow tuned from the same flow model",
          lambda r: _pair(r, ("dmf", 1), ("dmf_meanflow", 1), ("DMF", "MeanFlow"))),
    Claim("dmf", "at 1 step, DMF (from flow matching) beats MeanFlow (from scratch)",
          lambda r: _pair(r, ("dmf", 1), ("meanflow", 1), ("DMF", "MeanFlow"))),
    Claim("dmf", "4-step DMF is within 10% of its base flow model's best metric",
          lambda r: _within_of_teacher(r, "dmf", 4, 1.10)),
)  # fmt: skip


# ---------------------------------------------------------------------------
# The report

PAPERS = {
    "scm": (
        "sCM (Lu & Song 2024): sCT and sCD",
        "sCM trains continuous-time consistency models from a TrigFlow diffusion model, with exact "
        "`jax.jvp` tangents, tangent normalization and adaptive weighting. Its claims: 2-step samples "
        "within 10% of the teacher's FID (CIFAR-10: sCT 2.06 against the teacher's 2.15 at 35 NFE), "
        "training that stays stable, and distillation (sCD) that keeps up with sCT and overtakes it at "
        "scale (ImageNet-512 XXL: sCD 1.88, sCT 3.76 at 2 steps; on CIFAR-10 and ImageNet-64 sCT is "
        "ahead, 2.06 vs 2.52 and 1.48 vs 1.66).",
    ),
    "sct": (
        "ECT and SCT (Geng et al. 2024; Wang, Geng, Li 2024)",
        "ECT tunes a pretrained diffusion model into a consistency model over a schedule of shrinking "
        "intervals; SCT replaces ECT's one-sample target by a variance-reduced estimate from the score "
        "identity, smooths the schedule and adds phases. Its claims: better than ECT at equal iterations "
        "(CIFAR-10 3.11 / 2.05 vs 3.78 / 2.13 at 1 / 2 steps), faster convergence, and gains from more "
        "steps and from phases (ImageNet-64 SCT-M: 2.13 at 2 steps, 1.83 at 4).",
    ),
    "shortcut": (
        "Shortcut models (Frans et al. 2024)",
        "One network conditioned on the step size, trained with flow matching at the finest level "
        "and self-consistency between levels. Its claims: flow matching collapses at 1 step while "
        "the shortcut model does not, one network serves every step count (DiT-B ImageNet: "
        "40.3 / 28.3 / 15.5 at 1 / 4 / 128 steps), and no loss at many steps.",
    ),
    "meanflow": (
        "MeanFlow (Geng et al. 2025)",
        "A network for the average velocity over an interval, trained from scratch with a jvp-based "
        "target. Its claims: one-step generation far ahead of earlier from-scratch one-step models "
        "(ImageNet-256 XL/2 1-NFE 3.43 vs shortcut 10.60) and a further gain at 2 steps (2.93).",
    ),
    "imf": (
        "improved MeanFlow (Geng et al. 2025)",
        "MeanFlow with the loss on the instantaneous velocity V = u + (t - r) sg(du/dt), the jvp tangent "
        "from an auxiliary velocity head, guidance scale and interval as network inputs and a new DiT. "
        "Its claims: a large 1-step gain over MeanFlow from scratch (ImageNet-256 B/2 3.39 vs 6.17, XL/2 "
        "1.72 vs 3.43) and a further gain at 2 steps (XL/2 1.54). Here both run unguided.",
    ),
    "alphaflow": (
        "alpha-Flow (Zhang et al. 2025)",
        "A curriculum from trajectory flow matching (alpha = 1) to MeanFlow (alpha = 0) through discrete "
        "consistency targets. Its claims: better than MeanFlow at 1 and 2 steps on the same budget "
        "(ImageNet-256 B/2 without CFG 40.2 / 37.1 vs 43.1 / 38.5; XL/2 with CFG 2.95 / 2.34 vs 3.47 / 2.46).",
    ),
    "ayf": (
        "Align Your Flow (Sabour, Fidler, Kreis 2025)",
        "Flow-map distillation of a flow or diffusion teacher with the Eulerian objective, tangent "
        "normalization and autoguidance. Its claims: few-step samples better than consistency "
        "distillation (ImageNet-512 4-step 1.70 vs their sCD 1.84) that improve with the step count. "
        "Here the teacher is the flow-matching run, without autoguidance or the adversarial fine-tune.",
    ),
    "dmf": (
        "Decoupled MeanFlow (Lee, Yu, Shin 2025)",
        "A pretrained flow model becomes a flow map by feeding its last blocks the target time r, then is "
        "fine-tuned with flow-matching and MeanFlow losses. Its claims: 1-step samples better than "
        "MeanFlow's (L/2 ablation 19.3 vs 20.6, both tuned from the same base; ImageNet-256 XL/2 2.16) "
        "and few-step samples close to the base model's (4 steps 1.51). Here the ablation's MeanFlow is the "
        "same base and losses with MeanFlow's conditioning (`configs/dmf_<dataset>.py:meanflow`); the "
        "from-scratch MeanFlow run is compared too.",
    ),
}


def save_png(fig, path: str, colors: int = 64) -> None:
    """The figure as a PNG with an adaptive palette: a fraction of the size, the same look."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    buffer.seek(0)
    Image.open(buffer).convert("RGB").quantize(colors).save(path, optimize=True)


def plot_nfe(res: Results, path: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.0, 4.4), dpi=110)
    ax = fig.subplots()
    for run in res.runs():
        nfes = res.nfes(run.key)
        stats = [res.stat(run.key, n) for n in nfes]
        ax.errorbar(nfes, [s.mean for s in stats], yerr=[s.std for s in stats], marker="o", ms=3.5, capsize=2,
                    label=run.label, ls="--" if run.key in BASELINES else "-")  # fmt: skip
    ax.axhline(res.floor[res.primary], color="0.3", ls=":", label="real-data floor")
    ax.set_xscale("log", base=2)
    ax.set(yscale="log", xlabel="NFE", ylabel=res.primary)
    ax.set_title(f"{res.dataset}: {res.primary} vs NFE (mean +- std over evaluation draws)", fontsize=9)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    save_png(fig, path)


def plot_samples(res: Results, path: str) -> None:
    import numpy as np
    from matplotlib.figure import Figure

    from fewstep_jax import evaluate as eval_lib

    runs, cols = res.runs(), list(FEW)
    images = res.dataset != "toy2d"
    fig = Figure(figsize=(2.6 * len(cols), (1.0 if images else 2.4) * len(runs) + 0.4), dpi=100 if images else 75)
    axes = fig.subplots(len(runs), len(cols), squeeze=False)
    for i, run in enumerate(runs):
        kept = np.load(os.path.join(run_dir(res.dataset, run), "reproduction_samples.npz"), allow_pickle=False)
        for j, k in enumerate(cols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"{k} step{'s' if k > 1 else ''}", fontsize=9)
            if j == 0:
                ax.set_ylabel(run.label.split(" (")[0], fontsize=8)
            if f"steps{k}" not in kept:
                ax.axis("off") if j else ax.set_frame_on(False)
                continue
            x = kept[f"steps{k}"]
            if images:
                ax.imshow(eval_lib.image_grid(x, cols=len(x) // GRID_PER_CLASS), interpolation="nearest")
            else:
                ref, x = kept["reference"][:SCATTER_SHOWN], x[:SCATTER_SHOWN]
                ax.scatter(ref[:, 0], ref[:, 1], s=0.5, c="0.8", antialiased=False)
                ax.scatter(x[:, 0], x[:, 1], s=0.5, c="tab:blue", antialiased=False)
                ax.set(xlim=(-4.5, 4.5), ylim=(-4.5, 4.5), aspect="equal")
    fig.tight_layout()
    save_png(fig, path)


def plot_training(res: Results, path: str) -> None:
    """Loss per logged step (grey; the first 5% of steps, often far larger, are left out of the
    y range) and the sample metric of the evaluations made during training (red): at the fewest
    steps for few-step methods, at the most for the diffusion and flow baselines."""
    import numpy as np
    from matplotlib.figure import Figure

    runs = res.runs()
    cols = 5
    rows = -(-len(runs) // cols)
    fig = Figure(figsize=(3.2 * cols, 2.6 * rows), dpi=100)
    axes = fig.subplots(rows, cols, squeeze=False).reshape(-1)
    for ax, run in zip(axes, runs):
        log = [r for r in res.logs[run.key] if "loss" in r]
        steps, loss = np.array([r["step"] for r in log]), np.array([r["loss"] for r in log])
        ax.plot(steps, loss, color="tab:gray", lw=1)
        late = loss[steps >= 0.05 * steps.max()] if len(steps) else loss
        if len(late):
            pad = 0.05 * (late.max() - late.min() or abs(late.max()) or 1.0)
            ax.set_ylim(late.min() - pad, late.max() + pad)
        ax.set_title(run.label.split(" (")[0], fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        nfe, evals = training_evals(res, run.key, most=run.key in BASELINES)
        if evals:
            twin = ax.twinx()
            twin.plot([s for s, _ in evals], [v for _, v in evals], "o-", color="tab:red", ms=3)
            twin.tick_params(labelsize=7, colors="tab:red")
            twin.set_ylabel(f"{res.primary}, {nfe} step{'s' if nfe > 1 else ''}", fontsize=7, color="tab:red")
    for ax in axes[len(runs) :]:
        ax.axis("off")
    fig.suptitle(f"{res.dataset}: training loss (grey, left axis) and sample {res.primary} during training "
                 "(red, right axis)", fontsize=10)  # fmt: skip
    fig.tight_layout()
    save_png(fig, path)


def metric_table(res: Results, metric: str) -> str:
    nfes = res.nfes()
    lines = ["| method | " + " | ".join(f"NFE {n}" for n in nfes) + " |", "|---" * (len(nfes) + 1) + "|"]
    for run in res.runs():
        cells = [str(s) if (s := res.stat(run.key, n, metric)) else "" for n in nfes]
        lines.append(f"| {run.label} | " + " | ".join(cells) + " |")
    lines.append(f"| **real-data floor** | {res.floor.get(metric, float('nan')):.3g} |" + " |" * (len(nfes) - 1))
    return "\n".join(lines)


def setup_table(res: Results) -> str:
    lines = ["| run | config | parameters | steps x batch | init | steps/s | wall min |", "|---" * 7 + "|"]
    for run in res.runs():
        c, summary = res.configs[run.key], res.summaries[run.key]
        init = BY_KEY[run.init].label.split(" (")[0] if run.init else "scratch"
        lines.append(
            f"| {run.label} | `{config_arg(res.dataset, run)}` | {parameter_count(res.dataset, run)} "
            f"| {c.train.num_steps:,} x {c.train.batch_size} | {init} "
            f"| {summary.get('steps_per_sec', float('nan')):.2f} | {summary.get('wall_sec', float('nan')) / 60:.1f} |"
        )
    return "\n".join(lines)


def claims_section(results: list[Results]) -> list[str]:
    out = []
    for paper, (title, intro) in PAPERS.items():
        claims = [c for c in CLAIMS if c.paper == paper]
        out += [f"### {title}", "", intro, ""]
        out += ["| claim | " + " | ".join(r.dataset for r in results) + " |", "|---" * (len(results) + 1) + "|"]
        verdicts: dict[str, dict[str, list[str]]] = {}  # verdict -> claim -> datasets
        for claim in claims:
            cells = []
            for res in results:
                verdict, evidence = claim.check(res)
                verdicts.setdefault(verdict, {}).setdefault(claim.text, []).append(res.dataset)
                cells.append(f"**{verdict}**: {evidence}" if evidence else f"**{verdict}**")
            out.append(f"| {claim.text} | " + " | ".join(cells) + " |")
        out.append("")
        summary = []
        for verdict, word in ((SUPPORTED, "Supported"), (NOT_SUPPORTED, "Not supported"),
                              (UNRESOLVED, "Not resolved by these runs (inside the evaluation noise)")):  # fmt: skip
            if verdicts.get(verdict):
                items = [f"{text} ({', '.join(where)})" for text, where in verdicts[verdict].items()]
                summary.append(f"{word}: " + "; ".join(items) + ".")
        out += [" ".join(summary), ""]
    return out


def write_report(datasets: list[str], out: str) -> str:
    pictures = os.path.join(os.path.dirname(out) or ".", "reproduction")
    os.makedirs(pictures, exist_ok=True)
    results = [r for r in (load_results(d) for d in datasets) if r.evals]
    if not results:
        raise FileNotFoundError(f"no evaluated runs under {FLAGS.workdir}: run without --report_only first")
    rel = os.path.relpath(pictures, os.path.dirname(out) or ".")
    machine = harness.describe_machine()["description"]
    draws = max(len({row["seed"] for row in e["rows"]}) for res in results for e in res.evals.values())
    lines = [
        "# Reproduction report: every method on toy2d and digits",
        "",
        "Generated by `make reproduce` (`python benchmarks/reproduce.py`; runs in `runs/reproduction/`) on "
        f"{machine}, {time.strftime('%Y-%m-%d')}. Do not edit by hand: the tables, the pictures and the "
        "verdicts below are all written by that command from the runs.",
        "",
        "Every method trains the dataset's network (the same MLP or UNet for all; shortcut, MeanFlow, alpha-Flow "
        "and AYF add their step-size or interval input, iMF its guidance inputs and a copy of the network as "
        "its auxiliary velocity head) for the same number of steps at the same batch, with its own objective "
        "and the optimizer, EMA and schedule of its config. sCT and sCD start from the TrigFlow model, ECT and "
        "SCT from the EDM model, DMF from the flow-matching model, as in the papers: they spend the same budget "
        "again on top of a pretrained model; AYF distils the flow-matching model. Few-step methods are "
        "evaluated at 1, 2, 4 and 8 steps (phased SCT at its 4 steps), the diffusion and flow baselines "
        "and the shortcut model at 1 to 64. "
        f"Each cell is the mean +- standard deviation over {draws} "
        "independent evaluation draws of one training run (training noise is not included). Lower is "
        "better everywhere; the real-data floor is the metric of held-out real data at the same sample size.",
        "",
    ]
    for res in results:
        described = {
            "toy2d": "Checkerboard in 2-D; `swd` is the sliced Wasserstein distance and `energy` the energy "
                     "distance to 2,000 exact samples (`swd` hardly separates blurred 1-step samples, "
                     "`energy` does).",
            "digits": "sklearn digits (8x8, 10 classes, upsampled); `fd` is the Frechet distance of a small "
                      "digits classifier's features to the training split, `fd_heldout` to the 500 "
                      "held-out images; class-conditional sampling with balanced labels, no guidance.",
        }[res.dataset]  # fmt: skip
        n = next(iter(res.evals.values()))["num_samples"]
        train_min = sum(summary.get("wall_sec", 0.0) for summary in res.summaries.values()) / 60
        lines += [f"## {res.dataset}", "", described + f" {n} samples per draw.", "", setup_table(res), "",
                  f"Steps/s and wall time (training with its periodic evaluations; {train_min:.0f} min summed over "
                  "the runs) are as measured during `make reproduce`, which runs two processes at once on "
                  "the machine above by default: they are not a speed benchmark (`make bench` is).", ""]  # fmt: skip
        metrics = [res.primary] + [m for m in ("energy", "fd_heldout") if m in res.floor]
        for metric in metrics:
            lines += [f"**{metric}**", "", metric_table(res, metric), ""]
        for kind, plot in (("nfe", plot_nfe), ("samples", plot_samples), ("training", plot_training)):
            plot(res, os.path.join(pictures, f"{res.dataset}_{kind}.png"))
        lines += [f"![{res.dataset} metric vs NFE]({rel}/{res.dataset}_nfe.png)", "",
                  "Samples at 1, 2, 4 and 8 steps (first evaluation draw):", "",
                  f"![{res.dataset} samples]({rel}/{res.dataset}_samples.png)", "",
                  f"![{res.dataset} training]({rel}/{res.dataset}_training.png)", ""]  # fmt: skip
    lines += [
        "## The papers' claims at this scale",
        "",
        "Each claim is checked on both datasets. A difference counts only when it exceeds twice the combined "
        "standard deviation of the two evaluations; otherwise the verdict is 'within noise'. With one training "
        "run per method, training noise (which earlier runs put at up to 0.85 fd on digits for two runs of the "
        "same config) is not in these error bars, so a 'supported' that rests on a small margin is suggestive "
        "only. The papers measure FID at 32x32 to 512x512 with networks 100 to 2,000 times larger: digits and "
        "toy2d test the mechanisms, not the papers' numbers.",
        "",
        *claims_section(results),
    ]
    with open(out, "w") as f:
        f.write("\n".join(lines).rstrip() + "\n")
    return out


# ---------------------------------------------------------------------------
# Main


def main(argv):
    del argv
    logging.set_verbosity(logging.INFO)
    unknown = sorted(set(FLAGS.datasets) - {"toy2d", "digits"})
    if unknown:
        raise app.UsageError(f"--datasets: unknown {unknown}; choose from toy2d, digits")
    if FLAGS.evaluate:
        dataset, key = FLAGS.evaluate.split("/")
        evaluate_run(dataset, BY_KEY[key], FLAGS.seeds)
        return
    if not FLAGS.report_only:
        t0 = time.time()
        run_jobs([j for d in FLAGS.datasets for j in jobs_for(d)], FLAGS.jobs)
        logging.info("all runs trained and evaluated in %.1f min", (time.time() - t0) / 60)
    path = write_report(FLAGS.datasets, FLAGS.out)
    print(f"report: {path}")


if __name__ == "__main__":
    app.run(main)
