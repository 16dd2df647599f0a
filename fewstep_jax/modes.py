"""What an experiment's train state is shown and scored with: sample grids and metrics at every
eval.nfes step count, written by the training loop (train.sample_every / eval_every) and by the
`--mode=sample` and `--mode=eval` runs on a saved checkpoint.

Randomness: every sampling key derives from fold_in(key(seed), EVAL_STREAM) and the step of the
checkpoint, so the same checkpoint gives the same grids and metrics.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import ml_collections
from absl import logging

from fewstep_jax import config_lib
from fewstep_jax import data as data_lib
from fewstep_jax import evaluate as eval_lib
from fewstep_jax import metrics as metrics_lib
from fewstep_jax.experiment import EVAL_STREAM, Experiment, load_for_inference


def eval_settings(exp: Experiment, params: Any) -> config_lib.EvalConfig:
    """exp.eval, but unguided (with a warning) while the method cannot guide yet: training-time
    samples of SCT before its guidance snapshot."""
    ev = exp.eval
    if ev.guidance != 1.0 and not exp.method.can_guide(params):
        logging.warning("eval.guidance=%g is not available yet (no guidance snapshot): sampling unguided", ev.guidance)
        return dataclasses.replace(ev, guidance=1.0)
    return ev


def grid_decoder(exp: Experiment):
    """The VAE decoder of a latent dataset's sample grids (metrics/images.py), or None: pixel
    data, or latents without eval.vae_weights (their grids then show latent channels 0-2)."""
    if exp.config.data.get("name") not in metrics_lib.LATENT_DATASETS:
        return None
    if not exp.eval.vae_weights:
        logging.info("eval.vae_weights is unset: sample grids show latent channels 0-2, not decoded images")
        return None
    from fewstep_jax.metrics import images

    return images.latent_decoder(exp.config.data, exp.eval)


def write_samples(exp: Experiment, sample_fns, state, step: int, tag: str) -> None:
    """A PNG grid (images) or scatter plot (2-D) per evaluated step count.

    Every process samples (the computation spans all devices); process 0 writes.
    """
    ev = eval_settings(exp, exp.sampling_params(state))
    decoder = grid_decoder(exp)
    n = ev.grid_size
    labels = eval_lib.eval_labels(exp.info.num_classes, n)
    reference = None
    if len(exp.info.shape) == 1:
        n = max(n, 2000)
        labels = eval_lib.eval_labels(exp.info.num_classes, n)
        reference = data_lib.reference_data(exp.config.data, "test", n=n)["x"]
    net_params = exp.sampling_params(state)
    rng = jax.random.fold_in(jax.random.fold_in(exp.base_key, EVAL_STREAM), step)
    for k in ev.nfes:
        x = eval_lib.generate_steps(sample_fns, net_params, rng, k, ev, n=n, labels=labels, batch_size=min(n, 2000))
        if not exp.is_main:
            continue
        if decoder is not None:
            x = decoder.pixels(x)
        nfe = exp.method.nfe(k, ev.sampler)
        path = os.path.join(exp.workdir, "samples", f"{tag}_{ev.sampler}_nfe{nfe}.png")
        cols = exp.info.num_classes if exp.info.num_classes and n % exp.info.num_classes == 0 else None
        eval_lib.save_samples_png(
            x,
            path,
            cols=cols,
            reference=reference,
            title=f"{exp.config.method.name} {ev.sampler} NFE {nfe} ({tag})",
        )


def run_eval(exp: Experiment, sample_fns, evaluator, state, step: int) -> dict[str, float]:
    """{'eval/<sampler>_nfe<N>/<metric>': value} at every eval.nfes step count (training-time)."""
    rng = jax.random.fold_in(jax.random.fold_in(exp.base_key, EVAL_STREAM), 10_000_000 + step)
    params = exp.sampling_params(state)
    ev = eval_settings(exp, params)
    rows = eval_lib.evaluate_steps(exp.method, sample_fns, params, evaluator, ev, rng, ev.nfes)
    out = {}
    for r in rows:
        for m, v in r.items():
            if m not in eval_lib.ROW_KEYS:
                out[f"eval/{ev.sampler}_nfe{r['nfe']}/{m}"] = v
    return out


def sample_mode(config: ml_collections.ConfigDict, workdir: str, *, allow_config_change: bool = False) -> list[str]:
    """Write sample grids for every eval.nfes step count from the latest checkpoint."""
    exp, state, step = load_for_inference(config, workdir, allow_config_change=allow_config_change)
    write_samples(exp, eval_lib.SampleFns(exp.method, exp.batch_sharding), state, step, tag=f"final{step:07d}")
    exp.checkpointer.close()
    out = os.path.join(workdir, "samples")
    logging.info("samples written to %s", out)
    return sorted(os.listdir(out))


def eval_mode(config: ml_collections.ConfigDict, workdir: str, *, allow_config_change: bool = False) -> str:
    """Metrics at every eval.nfes step count, with the real-data floor; table + plot."""
    exp, state, step = load_for_inference(
        config, workdir, allow_config_change=allow_config_change, check_metrics=True
    )
    evaluator = metrics_lib.build_evaluator(config.data, exp.eval)
    floor = evaluator.floor()
    rng = jax.random.fold_in(jax.random.fold_in(exp.base_key, EVAL_STREAM), 20_000_000 + step)
    rows = eval_lib.evaluate_steps(
        exp.method,
        eval_lib.SampleFns(exp.method, exp.batch_sharding),
        exp.sampling_params(state),
        evaluator,
        exp.eval,
        rng,
        exp.eval.nfes,
    )
    exp.checkpointer.close()
    title = f"{config.method.name} on {exp.info.name}, step {step}, {exp.eval.sampler} sampler"
    if exp.eval.guidance != 1.0:
        title += f", guidance {exp.eval.guidance:g}"
    out_dir = os.path.join(workdir, "eval", f"step{step:07d}_{exp.eval.sampler}")
    table = eval_lib.write_report(rows, floor, primary=evaluator.primary, out_dir=out_dir, title=title)
    logging.info("evaluation written to %s", out_dir)
    return table
