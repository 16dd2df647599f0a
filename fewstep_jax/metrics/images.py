"""Image metrics of pixel and latent samples: FID / IS (metrics/fid.py) and FD-DINOv2 (metrics/dinov2.py).

    evaluator = ImageEvaluator(config.data, config.eval)
    evaluator.evaluate(samples)    # {'fid': ..., 'is': ..., 'is_std': ..., 'fd_dinov2': ...}

Pixel samples in [-1, 1] become uint8 images by inception.to_uint8. Latent samples are first
mapped back to VAE latents by the dataset's preset (data/latents.py), decoded by the VAE of
eval.vae_weights and turned into uint8 the way the preset's paper does (LatentDecoder), so the
metrics see the same images a user would save. Reference statistics of both metrics come from
files (eval.fid_stats, eval.fd_dinov2_stats) or are computed once from the dataset's real
images (for latent datasets: the images they were encoded from) and cached.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
from absl import logging

from fewstep_jax.data import latents as latents_lib
from fewstep_jax.data import sources

DECODE_BATCH = 32
PROGRESS_SECONDS = 30.0

#: Pixel datasets scored with FID (and FD-DINOv2 on request); latent datasets are scored on their
#: decoded samples (metrics/images.py).
FID_DATASETS = ("cifar10", "imagenet64", "celebahq256")
LATENT_DATASETS = tuple(name for name, d in sources.DATASETS.items() if d.is_latent)
VAE_REPOS = {"ft-mse": "stabilityai/sd-vae-ft-mse", "ft-ema": "stabilityai/sd-vae-ft-ema"}


def image_metrics(data_cfg: Any, ev: Any = None) -> tuple[str, ...]:
    """The sample metrics of an image or latent dataset: eval.metrics, else the dataset's default
    ('fid' on pixel datasets; 'fid' and 'fd_dinov2' on latent ones, as EDM2 and sCM report)."""
    chosen = tuple(getattr(ev, "metrics", ()) or ())
    if chosen:
        return chosen
    return ("fid", "fd_dinov2") if data_cfg.get("name") in LATENT_DATASETS else ("fid",)


def vae_weights_file(ev: Any) -> str:
    """eval.vae_weights, checked: the decoder of latent samples."""
    path = getattr(ev, "vae_weights", "") or ""
    decoder = getattr(ev, "vae_decoder", "ft-mse")
    if not path:
        raise ValueError(
            "a latent dataset's samples are decoded to images for sample grids and metrics: set "
            f"eval.vae_weights to the {decoder} VAE's diffusion_pytorch_model.safetensors "
            f"(from huggingface.co/{VAE_REPOS.get(decoder, VAE_REPOS['ft-mse'])}), e.g. "
            "--config.eval.vae_weights=PATH"
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"eval.vae_weights={path} does not exist")
    return path


class LatentDecoder:
    """The network's latents -> images, through a preset and a VAE decoder (models/vae.py)."""

    def __init__(self, preset: latents_lib.Preset, vae: Any, *, batch_size: int = DECODE_BATCH):
        self.preset = preset
        self.vae = vae
        self.batch_size = int(batch_size)

    def uint8(self, samples: np.ndarray) -> np.ndarray:
        """Latent samples [N, h, w, C] -> uint8 images [N, H, W, 3] (progress on long runs)."""
        samples = np.asarray(samples, np.float32)
        out, start, last = [], time.perf_counter(), time.perf_counter()
        for i in range(0, len(samples), self.batch_size):
            z = self.preset.to_vae(samples[i : i + self.batch_size])
            out.append(self.preset.vae_to_uint8(self.vae.decode(z)))
            if time.perf_counter() - last > PROGRESS_SECONDS:
                last = time.perf_counter()
                done = min(i + self.batch_size, len(samples))
                rate = done / (last - start)
                logging.info("decoded %d / %d latents (%.1f img/s)", done, len(samples), rate)
        if not out:
            return np.zeros((0, 0, 0, 3), np.uint8)
        return np.concatenate(out)

    def pixels(self, samples: np.ndarray) -> np.ndarray:
        """Latent samples -> float images in [-1, 1] (for sample grids)."""
        return self.uint8(samples).astype(np.float32) / np.float32(127.5) - np.float32(1.0)


_DECODERS: dict[tuple[str, str], Any] = {}


def latent_decoder(data_cfg: Any, ev: Any) -> LatentDecoder | None:
    """The decoder of a latent dataset's samples (None for other data); the VAE is loaded once
    per weights file and process."""
    from fewstep_jax import data as data_lib

    preset = data_lib.latent_preset(data_cfg)
    if preset is None:
        return None
    path = vae_weights_file(ev)
    key = (path, preset.name)
    if key not in _DECODERS:
        from fewstep_jax.models import vae as vae_lib

        _DECODERS[key] = LatentDecoder(preset, vae_lib.VAE.from_file(path))
    return _DECODERS[key]


def edm2_fid_reference(stats: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The FID (mu, sigma) of EDM2's dataset-refs .pkl named by eval.fid_stats (None for another
    file: FIDEvaluator reads .npz statistics itself)."""
    if not stats.endswith(".pkl"):
        return None
    from fewstep_jax.metrics import fd_dinov2

    refs = fd_dinov2.load_edm2_refs(stats)
    if "fid" not in refs:
        raise ValueError(f"eval.fid_stats={stats} holds no FID statistics (only {sorted(refs)})")
    return refs["fid"]


class ImageEvaluator:
    """FID / IS and FD-DINOv2 of samples (module doc); primary: the first of eval.metrics."""

    num_samples = 50_000

    def __init__(self, data_cfg: Any, ev: Any = None, *, cache_dir: str | None = None):
        from fewstep_jax.metrics import inception

        self.metrics = image_metrics(data_cfg, ev)
        self.primary = self.metrics[0]
        self.decoder = latent_decoder(data_cfg, ev)
        self._to_uint8 = self.decoder.uint8 if self.decoder is not None else inception.to_uint8
        self.fid = self.dino = None
        if "fid" in self.metrics:
            from fewstep_jax.metrics.fid import FIDEvaluator

            stats = getattr(ev, "fid_stats", "")
            self.fid = FIDEvaluator(
                data_cfg,
                weights=getattr(ev, "fid_weights", ""),
                stats=stats,
                reference=edm2_fid_reference(stats),
                resize=getattr(ev, "fid_resize", "tf1"),
                batch_size=getattr(ev, "fid_batch_size", 250),
                cache_dir=cache_dir,
            )
        if "fd_dinov2" in self.metrics:
            from fewstep_jax.metrics.fd_dinov2 import FDDinoEvaluator

            self.dino = FDDinoEvaluator(
                data_cfg,
                weights=getattr(ev, "fd_dinov2_weights", ""),
                stats=getattr(ev, "fd_dinov2_stats", ""),
                batch_size=getattr(ev, "fid_batch_size", 250),
                cache_dir=cache_dir,
                config=None,  # the size of the weights file (ViT-L/14 for EDM2's protocol)
            )

    def evaluate(self, samples: np.ndarray, labels: np.ndarray | None = None) -> dict[str, float]:
        del labels  # both metrics are unconditional statistics
        images = self._to_uint8(samples)
        out: dict[str, float] = {}
        if self.fid is not None:
            out.update(self.fid.evaluate_images(images))
        if self.dino is not None:
            out.update(self.dino.evaluate(images))
        return out

    def floor(self) -> dict[str, float]:
        return {}
