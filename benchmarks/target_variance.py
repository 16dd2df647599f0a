"""How much SCT's score-identity target reduces the variance of consistency training (digits).

Two measurements, each for ECT's single-sample target and SCT's mini-batch estimate, with
class-conditional (references of the row's class) and unconditional reference sets:

1. Target error: E || eps_hat - E[eps | x_t] ||^2 per pixel, by noise-level bin, where the exact
   posterior E[eps | x_t] = (x_t - E[x0 | x_t]) / t is computed in float64 over the whole
   training split (of the row's class when conditional). ECT's eps_hat is the sampled noise;
   SCT's is the batch estimate (methods/sct.py). The error of x_r is (t - r)^2 times this, so the
   ratio SCT / ECT holds for x_r as well.
2. Gradient variance (with --workdir=<a trained class-conditional edm / ect / sct run on
   digits>): at that run's EMA network, the per-batch loss gradients of ECT and SCT over many
   batches of the training data; reported as tr Cov(g) / ||E g||^2 (the noise-to-signal ratio of
   one gradient). "Unconditional" trains every row with the null label (the model saw 10% of
   those in training), so SCT's references are the whole batch.

  python benchmarks/target_variance.py --out=docs/results/sct_target_variance.md --workdir=runs/edm_digits
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fewstep_jax import data as data_lib
from fewstep_jax import methods, models
from fewstep_jax.data import digits
from fewstep_jax.methods.sct import score_identity_eps

BINS = (0.002, 0.1, 0.3, 1.0, 3.0, 80.0)


def posterior_eps(x_t, t, data):
    """(x_t - E[x0 | x_t]) / t over the uniform distribution on `data` (float64)."""
    sq = (x_t**2).sum(1)[:, None] - 2 * x_t @ data.T + (data**2).sum(1)[None]
    logits = -np.maximum(sq, 0) / (2 * t[:, None] ** 2)
    w = np.exp(logits - logits.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    return (x_t - w @ data) / t[:, None]


def target_errors(x, y, *, conditional, batches, batch_size, p_mean, p_std, seed):
    """Per-bin mean squared error of ECT's and SCT's eps_hat against the exact posterior."""
    rng = np.random.default_rng(seed)
    flat = x.reshape(len(x), -1).astype(np.float64)
    sums = {m: np.zeros(len(BINS) - 1) for m in ("ect", "sct")}
    counts = np.zeros(len(BINS) - 1)
    for _ in range(batches):
        idx = rng.integers(0, len(x), batch_size)
        x0, y0 = flat[idx], y[idx]
        t = np.clip(np.exp(p_mean + p_std * rng.normal(size=batch_size)), BINS[0], BINS[-1] * 0.999)
        eps = rng.normal(size=x0.shape)
        x_t = x0 + t[:, None] * eps
        exact = np.empty_like(x_t)
        for c in np.unique(y0) if conditional else [None]:
            rows = np.arange(batch_size) if c is None else np.flatnonzero(y0 == c)
            pool = flat if c is None else flat[y == c]
            exact[rows] = posterior_eps(x_t[rows], t[rows], pool)
        mask = ~np.eye(batch_size, dtype=bool)
        if conditional:
            mask &= y0[None, :] == y0[:, None]
        sct, _ = score_identity_eps(
            jnp.asarray(x_t, jnp.float32), jnp.asarray(t, jnp.float32), jnp.asarray(eps, jnp.float32),
            jnp.asarray(x0, jnp.float32), jnp.asarray(mask),
        )  # fmt: skip
        err = {"ect": ((eps - exact) ** 2).mean(1), "sct": ((np.asarray(sct, np.float64) - exact) ** 2).mean(1)}
        which = np.digitize(t, BINS) - 1
        for b in range(len(BINS) - 1):
            sel = which == b
            counts[b] += sel.sum()
            for m in sums:
                sums[m][b] += err[m][sel].sum()
    return {m: (sums[m] / np.maximum(counts, 1)).tolist() for m in sums}, counts.tolist()


def gradient_noise(workdir, *, conditional, batches, batch_size, seed):
    """tr Cov(g) / ||E g||^2 of the ECT and SCT loss gradients at a trained run's EMA network."""
    from fewstep_jax import experiment

    config, net_params = experiment.load_pretrained(workdir)
    info, _ = data_lib.build_dataset(config.data, seed=0, global_batch_size=batch_size)
    net = models.build(config.model, data_shape=info.shape, num_classes=info.num_classes)
    common = dict(sigma_d=0.5, p_mean=-1.1, p_std=2.0, q=2.0, stage_length=150, mapping="smooth")
    out = {}
    x_all, y_all = digits.load_split("train")
    for name, extra in (("ect", {}), ("sct", {"reference_set": "batch"})):
        method = methods.build(ml_collections.ConfigDict(dict(name=name, **common, **extra)), net, info)
        params = {"net": net_params}

        @jax.jit
        def grad(batch, key, method=method):
            return jax.grad(lambda p: method.loss(p, batch, key, jnp.asarray(600))[0])(params)

        rng = np.random.default_rng(seed)
        flat = []
        for i in range(batches):
            idx = rng.integers(0, len(x_all), batch_size)
            batch = {"x": jnp.asarray(x_all[idx])}
            if info.num_classes:
                labels = y_all[idx] if conditional else np.full(batch_size, info.num_classes, np.int32)
                batch["y"] = jnp.asarray(labels)
            g = grad(batch, jax.random.key(seed * 1000 + i))
            flat.append(np.concatenate([np.ravel(v) for v in jax.tree.leaves(jax.device_get(g))]))
        G = np.stack(flat).astype(np.float64)
        mean = G.mean(0)
        out[name] = float(((G - mean) ** 2).sum(1).mean() / (mean**2).sum())
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--grad_batches", type=int, default=48)
    p.add_argument("--workdir", default="", help="trained class-conditional digits run (gradient measurement)")
    p.add_argument("--out", default="docs/results/sct_target_variance.md")
    args = p.parse_args(argv)
    x, y = digits.load_split("train")
    lines = [
        "# SCT vs ECT: variance of the consistency-training target (digits)",
        "",
        f"Command: `python benchmarks/target_variance.py {' '.join(sys.argv[1:] if argv is None else argv)}`",
        "",
        "Mean squared error per pixel of eps_hat against the exact posterior E[eps | x_t] (float64, whole",
        f"training split), batches of {args.batch_size}, t from ECT's proposal P(-1.1, 2.0), {args.batches} batches.",
        "",
        "| references | t bin | samples | ECT | SCT | SCT / ECT |",
        "|---|---|---|---|---|---|",
    ]
    results = {}
    for conditional in (True, False):
        errs, counts = target_errors(
            x, y, conditional=conditional, batches=args.batches, batch_size=args.batch_size,
            p_mean=-1.1, p_std=2.0, seed=0,
        )  # fmt: skip
        label = "class-conditional" if conditional else "unconditional"
        results[label] = {"bins": BINS, "counts": counts, **errs}
        for b in range(len(BINS) - 1):
            e, s = errs["ect"][b], errs["sct"][b]
            ratio = f"{s / e:.3f}" if e > 1e-8 else "- (posterior is a point: both ~0)"
            row = f"| {label} | [{BINS[b]:g}, {BINS[b + 1]:g}) | {int(counts[b])} | {e:.2e} | {s:.2e} | {ratio} |"
            lines.append(row)
        print(label, errs, flush=True)
    for label in ("class-conditional", "unconditional") if args.workdir else ():
        workdir = args.workdir
        noise = gradient_noise(
            workdir, conditional=label == "class-conditional", batches=args.grad_batches,
            batch_size=args.batch_size, seed=1,
        )  # fmt: skip
        results[label]["gradient_noise"] = noise
        lines += [
            "",
            f"Gradient noise-to-signal tr Cov(g) / ||E g||^2, {label}, at the EMA network of `{workdir}`",
            f"(iteration 600 of the smooth schedule, {args.grad_batches} batches): "
            f"ECT {noise['ect']:.3f}, SCT {noise['sct']:.3f} (ratio {noise['sct'] / noise['ect']:.3f}).",
        ]
        print(label, noise, flush=True)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump(results, f, indent=2)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
