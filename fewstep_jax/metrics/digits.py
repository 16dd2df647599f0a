"""Digits sample quality in the feature space of a small classifier trained by the suite.

The classifier (an MLP 64 -> 128 -> 128 -> 64 -> 10, GELU) is trained deterministically on the
'train' split only (full-batch AdamW, fixed seed and step count, one jitted fori_loop), must
reach >= 95% held-out accuracy, and is cached as flax-serialized msgpack params in
`cache_dir/digits_classifier_<recipe hash>.msgpack`. The hash covers the recipe and the training
data, so changing either retrains instead of silently loading stale weights.

Metrics (evaluate(samples, labels=None)):
  fd              Frechet distance (Heusel et al. 2017 eq. 6) between the 64-d penultimate
                  features of the samples and of the whole train split. Lower is better.
  fd_heldout      the same against the 500 held-out images: a model that reproduces its
                  training images scores better on fd than on fd_heldout.
  coverage        fraction of the 10 classes whose share of predicted labels is >= 0.05 (half of
                  uniform): a mode-collapsed sampler covers few classes.
  class_entropy   entropy (nats) of the predicted-class histogram / log(10); 1.0 = uniform.
  label_accuracy  (only with labels) how often the prediction equals the requested class.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import time
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from fewstep_jax.data import digits as digits_data
from fewstep_jax.metrics import cache, frechet

MIN_HELD_OUT_ACCURACY = 0.95
_RECIPE_VERSION = 1  # bump when the training code changes in a way the fields below do not capture


@dataclasses.dataclass(frozen=True)
class ClassifierRecipe:
    """Everything that determines the trained classifier (hashed into the cache file name)."""

    hidden: tuple[int, ...] = (128, 128)
    feature_dim: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    num_steps: int = 500
    seed: int = 0


class DigitsClassifier(nn.Module):
    """MLP on flattened 8x8x1 images: x [B, 8, 8, 1] -> (logits [B, 10], features [B, feature_dim])."""

    hidden: tuple[int, ...]
    feature_dim: int
    num_classes: int = digits_data.NUM_CLASSES

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = x.reshape(x.shape[0], -1)
        for width in self.hidden:
            h = nn.gelu(nn.Dense(width)(h))
        # GELU rather than ReLU on the feature layer: fewer exactly-zero units, so the feature
        # covariance is better conditioned for the Frechet distance.
        features = nn.gelu(nn.Dense(self.feature_dim)(h))
        return nn.Dense(self.num_classes)(features), features


def default_cache_dir() -> pathlib.Path:
    """$FEWSTEP_CACHE, else ~/.cache/fewstep_jax (metrics.cache.default_cache_dir)."""
    return pathlib.Path(cache.default_cache_dir())


def recipe_hash(recipe: ClassifierRecipe) -> str:
    """12 hex digits identifying the recipe, the code version and the exact training data."""
    x, y = digits_data.load_split("train")
    payload = json.dumps(
        {"version": _RECIPE_VERSION, "recipe": dataclasses.asdict(recipe), "flax": flax.__version__.split(".")[0]},
        sort_keys=True,
    ).encode()
    digest = hashlib.sha256(payload)
    digest.update(np.ascontiguousarray(x).tobytes())
    digest.update(np.ascontiguousarray(y).tobytes())
    return digest.hexdigest()[:12]


def train_classifier(recipe: ClassifierRecipe, x: np.ndarray, y: np.ndarray) -> Any:
    """Deterministic full-batch AdamW training on x [N, 8, 8, 1], y [N]; returns params.

    Full batch in a fixed order and no dropout or augmentation: the only randomness is the init
    key, so the same recipe gives the same weights (on the same backend).
    """
    model = DigitsClassifier(recipe.hidden, recipe.feature_dim)
    params = model.init(jax.random.key(recipe.seed), jnp.zeros((1, *digits_data.SHAPE), jnp.float32))
    optimizer = optax.adamw(recipe.learning_rate, weight_decay=recipe.weight_decay)

    def loss_fn(p: Any, xb: jax.Array, yb: jax.Array) -> jax.Array:
        logits, _ = model.apply(p, xb)
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    @jax.jit
    def run(p: Any, xb: jax.Array, yb: jax.Array) -> tuple[Any, jax.Array]:
        def step(_: jax.Array, carry: tuple[Any, Any]) -> tuple[Any, Any]:
            p, opt_state = carry
            grads = jax.grad(loss_fn)(p, xb, yb)
            updates, opt_state = optimizer.update(grads, opt_state, p)
            return optax.apply_updates(p, updates), opt_state

        p, _ = jax.lax.fori_loop(0, recipe.num_steps, step, (p, optimizer.init(p)))
        return p, loss_fn(p, xb, yb)

    params, final_loss = run(params, jnp.asarray(x), jnp.asarray(y))
    logging.info("digits classifier: %d full-batch steps, final train loss %.4f", recipe.num_steps, float(final_loss))
    return jax.device_get(params)


class DigitsEvaluator:
    """Frechet distance in classifier-feature space + class coverage for 8x8 digits samples.

    primary 'fd' (lower is better); num_samples = 500, the held-out split size, so floor() (the
    held-out images scored as samples) is the best achievable value at that sample size.
    Attributes: accuracy (held-out accuracy), loaded_from_cache, train_seconds (None when
    loaded), cache_path.
    """

    primary: str = "fd"
    num_samples: int = digits_data.NUM_CLASSES * digits_data.TEST_PER_CLASS

    def __init__(self, cache_dir: str | os.PathLike[str] | None = None, recipe: ClassifierRecipe = ClassifierRecipe()):
        self.recipe = recipe
        self._model = DigitsClassifier(recipe.hidden, recipe.feature_dim)
        self._apply = jax.jit(self._model.apply)
        directory = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.cache_path = directory / f"digits_classifier_{recipe_hash(recipe)}.msgpack"
        self.train_seconds: float | None = None
        self.loaded_from_cache = False
        self.params = self._load()
        if self.params is None:
            self.params = self._train_and_save()

        test_x, test_y = digits_data.load_split("test")
        self.accuracy = float(np.mean(self.predict(test_x) == test_y))
        logging.info("digits classifier held-out accuracy %.4f (%s)", self.accuracy, self.cache_path)
        if self.accuracy < MIN_HELD_OUT_ACCURACY:
            raise RuntimeError(
                f"digits classifier reaches only {self.accuracy:.3f} held-out accuracy (< {MIN_HELD_OUT_ACCURACY}); "
                f"its features are not trustworthy. Recipe {recipe}, cache file {self.cache_path}"
            )
        train_x, _ = digits_data.load_split("train")
        self.train_mu, self.train_sigma = frechet.gaussian_stats(self.features(train_x))
        self.test_mu, self.test_sigma = frechet.gaussian_stats(self.features(test_x))
        self._floor: dict[str, float] | None = None

    def _load(self) -> Any | None:
        if not self.cache_path.exists():
            return None
        template = self._model.init(jax.random.key(0), jnp.zeros((1, *digits_data.SHAPE), jnp.float32))
        try:
            params = flax.serialization.from_bytes(template, self.cache_path.read_bytes())
        except Exception as e:  # a truncated or foreign file: retrain and overwrite it
            logging.warning("ignoring unreadable classifier cache %s (%s); retraining", self.cache_path, e)
            return None
        self.loaded_from_cache = True
        logging.info("digits classifier loaded from %s", self.cache_path)
        return params

    def _train_and_save(self) -> Any:
        x, y = digits_data.load_split("train")
        logging.info("training the digits classifier (%s) on %d images", self.recipe, len(x))
        start = time.perf_counter()
        params = train_classifier(self.recipe, x, y)
        self.train_seconds = time.perf_counter() - start
        logging.info("digits classifier trained in %.1f s", self.train_seconds)
        try:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            # Write-then-rename: concurrent evaluators (e.g. one per process) never read a partial file.
            tmp = self.cache_path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_bytes(flax.serialization.to_bytes(params))
            os.replace(tmp, self.cache_path)
        except OSError as e:  # a read-only cache only costs a retrain next time, not the evaluation
            logging.warning("could not cache the digits classifier at %s (%s)", self.cache_path, e)
        return params

    def _check_images(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1:] != digits_data.SHAPE:
            raise ValueError(f"digits samples must be [N, 8, 8, 1], got shape {images.shape}")
        return np.clip(images.astype(np.float32), -1.0, 1.0)  # the data range; out-of-range is sampler error

    def logits_and_features(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """images [N, 8, 8, 1] (clipped to [-1, 1]) -> (logits float32 [N, 10], features float32 [N, 64])."""
        logits, features = self._apply(self.params, jnp.asarray(self._check_images(images)))
        return np.asarray(logits), np.asarray(features)

    def features(self, images: np.ndarray) -> np.ndarray:
        """Penultimate-layer features: float32 [N, feature_dim]."""
        return self.logits_and_features(images)[1]

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Predicted classes: int32 [N]."""
        return np.argmax(self.logits_and_features(images)[0], axis=-1).astype(np.int32)

    def evaluate(self, samples: np.ndarray, labels: np.ndarray | None = None) -> dict[str, float]:
        """samples [N, 8, 8, 1] in [-1, 1] (N >= 2), optional requested labels [N] -> metrics dict.

        Non-finite samples (a diverged model) get the worst scores instead of an exception.
        """
        samples = np.asarray(samples)
        self._check_images(samples)
        if samples.shape[0] < 2:
            raise ValueError(f"need at least 2 samples for a covariance, got {samples.shape[0]}")
        if labels is not None:
            labels = np.asarray(labels)
            if labels.shape != (samples.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
                raise ValueError(
                    f"labels must be integers [N] = [{samples.shape[0]}], got {labels.dtype} {labels.shape}"
                )
            if labels.min() < 0 or labels.max() >= digits_data.NUM_CLASSES:
                raise ValueError(
                    f"labels must be in [0, {digits_data.NUM_CLASSES}), got range [{labels.min()}, {labels.max()}]"
                )
        if not np.all(np.isfinite(samples)):
            worst = {"fd": float("inf"), "fd_heldout": float("inf"), "coverage": 0.0, "class_entropy": 0.0}
            return worst | ({"label_accuracy": 0.0} if labels is not None else {})

        logits, features = self.logits_and_features(samples)
        predicted = np.argmax(logits, axis=-1)
        share = np.bincount(predicted, minlength=digits_data.NUM_CLASSES) / len(predicted)
        nonzero = share[share > 0]
        entropy = -(nonzero * np.log(nonzero)).sum() + 0.0  # + 0.0 turns the one-class -0.0 into 0.0
        stats = frechet.gaussian_stats(features)
        metrics = {
            "fd": frechet.frechet_distance(*stats, self.train_mu, self.train_sigma),
            "fd_heldout": frechet.frechet_distance(*stats, self.test_mu, self.test_sigma),
            "coverage": float(np.mean(share >= 0.5 / digits_data.NUM_CLASSES)),
            "class_entropy": float(entropy / np.log(digits_data.NUM_CLASSES)),
        }
        if labels is not None:
            metrics["label_accuracy"] = float(np.mean(predicted == labels))
        return metrics

    def floor(self) -> dict[str, float]:
        """Real-data floors at this sample size: every metric of the 500 held-out images with their
        labels, except fd_heldout, which is that of 500 fixed training images (held-out vs itself
        would be 0)."""
        if self._floor is None:
            floor = self.evaluate(*digits_data.load_split("test"))
            train_x, _ = digits_data.load_split("train")
            subset = np.random.default_rng(0).permutation(len(train_x))[: self.num_samples]
            stats = frechet.gaussian_stats(self.features(train_x[subset]))
            floor["fd_heldout"] = frechet.frechet_distance(*stats, self.test_mu, self.test_sigma)
            self._floor = floor
        return dict(self._floor)
