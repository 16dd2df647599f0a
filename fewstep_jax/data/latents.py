"""Latent normalization presets: how each paper maps VAE latents to the network's space and back.

A VAE (the Stable Diffusion kl-f8 AutoencoderKL, models/vae.py) turns an image into a Gaussian
posterior with moments (mean, log-variance); training draws z = mean + std * eps afresh at every
read (Rombach et al. 2022, sec. 3) and the network sees the affine image

    latent = (z - shift) * scale          (per channel; the inverse z = latent / scale + shift)

Each preset fixes the VAE's input range (which changes the moments, so it is fixed at
preparation) and the affine (applied at read time, so the stored moments stay the VAE's own):

  sd     [-1, 1] input, latent = 0.18215 z: the scale factor of Stable Diffusion, used by DiT,
         SiT, shortcut models and MeanFlow (Rombach et al. 2022, sec. 4.3.2).
  edm2   [0, 1] input (x / 255), latent = (z - m) * 0.5 / s with EDM2's raw-latent statistics
         m = (5.81, 3.25, 0.12, -2.15), s = (4.17, 4.62, 3.71, 3.28) (Karras et al. 2024,
         training/encoders.py), so the data std is 0.5. Decoded images are clamped to [0, 1]
         and truncated to uint8 (255 x).
  scm    [-1, 1] input, latent = (z - m) * 0.5 / s with sCM's statistics
         m = (1.56, -0.695, 0.483, 0.729), s = (5.27, 5.91, 4.21, 4.31) (Lu & Song 2024, App. G.1).
  imf    [-1, 1] input, latent = (z - m) / s, the per-channel standardization of improved
         MeanFlow's code with m = (0.86488, -0.27787343, 0.21616915, 0.3738409),
         s = (4.85503674, 5.31922414, 3.93725398, 3.9870003) (ImageNet-256 statistics).

data_std is what EDM-style preconditioning takes as sigma_data: 0.5 where the preset makes it
so, and the suite's long-standing 1.0 for the sd and imf latents.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

INPUT_RANGES = ("-1..1", "0..1")
SD_SCALE = 0.18215


@dataclasses.dataclass(frozen=True)
class Preset:
    """One latent normalization (module doc). shift / scale: 4 per-channel values."""

    name: str
    input_range: str
    shift: tuple[float, ...]
    scale: tuple[float, ...]
    data_std: float
    source: str

    def to_model(self, z: Any) -> Any:
        """Raw VAE latents [..., C] -> the network's latents (numpy or jax arrays)."""
        return (z - self._vec(z, self.shift)) * self._vec(z, self.scale)

    def to_vae(self, latent: Any) -> Any:
        """The network's latents [..., C] -> raw VAE latents: the inverse of to_model."""
        return latent / self._vec(latent, self.scale) + self._vec(latent, self.shift)

    def _vec(self, like: Any, values: tuple[float, ...]) -> Any:
        if like.shape[-1] != len(values):
            raise ValueError(
                f"latent preset {self.name!r} is defined for {len(values)}-channel latents, got {like.shape[-1]}"
            )
        return np.asarray(values, dtype=like.dtype if like.dtype != np.float16 else np.float32)

    def images_to_vae(self, images: np.ndarray) -> np.ndarray:
        """uint8 images [..., H, W, 3] -> float32 VAE input in this preset's range."""
        x = np.asarray(images, np.float32)
        return x / np.float32(255.0) if self.input_range == "0..1" else x / np.float32(127.5) - np.float32(1.0)

    def vae_to_uint8(self, x: Any) -> np.ndarray:
        """Decoded VAE output [..., H, W, 3] -> uint8 images. [-1, 1]: round(127.5 (x + 1)) clipped
        (DiT's and MeanFlow's export); [0, 1]: EDM2's clamp(x, 0, 1) * 255 truncated."""
        x = np.asarray(x, np.float64)
        if self.input_range == "0..1":
            return np.floor(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)
        return np.clip(np.rint(127.5 * (x + 1.0)), 0, 255).astype(np.uint8)


def _channels(*values: float) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


_EDM2_MEAN = _channels(5.81, 3.25, 0.12, -2.15)
_EDM2_STD = _channels(4.17, 4.62, 3.71, 3.28)
_SCM_MEAN = _channels(1.56, -0.695, 0.483, 0.729)
_SCM_STD = _channels(5.27, 5.91, 4.21, 4.31)
_IMF_MEAN = _channels(0.86488, -0.27787343, 0.21616915, 0.3738409)
_IMF_STD = _channels(4.85503674, 5.31922414, 3.93725398, 3.9870003)

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "sd", "-1..1", (0.0,) * 4, (SD_SCALE,) * 4, 1.0, "Stable Diffusion scale 0.18215 (DiT, shortcut, MeanFlow)"
        ),
        Preset("edm2", "0..1", _EDM2_MEAN, tuple(0.5 / s for s in _EDM2_STD), 0.5, "EDM2 (Karras et al. 2024)"),
        Preset("scm", "-1..1", _SCM_MEAN, tuple(0.5 / s for s in _SCM_STD), 0.5, "sCM App. G.1 (Lu & Song 2024)"),
        Preset("imf", "-1..1", _IMF_MEAN, tuple(1.0 / s for s in _IMF_STD), 1.0, "improved MeanFlow's code"),
    )
}


def get(name: Any) -> Preset:
    """The preset called `name`; ValueError listing the known ones otherwise."""
    if name not in PRESETS:
        raise ValueError(f"unknown latent preset {name!r}; known: {', '.join(PRESETS)} (fewstep_jax/data/latents.py)")
    return PRESETS[name]


def sample(moments: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Posterior sample z = mean + exp(logvar / 2) * noise from moments [..., 2C] (mean channels,
    then log-variance channels clamped to [-30, 20], the Stable Diffusion VAE's
    DiagonalGaussianDistribution)."""
    from fewstep_jax.data.formats import LOGVAR_RANGE

    values = np.asarray(moments, np.float32)
    mean, logvar = np.split(values, 2, axis=-1)
    return mean + np.exp(0.5 * np.clip(logvar, *LOGVAR_RANGE)) * noise


def moments_from_mean_std(mean_std: np.ndarray) -> np.ndarray:
    """(mean, std) channel-first arrays [..., 2C, H, W] (EDM2's and REPA's stores) -> the suite's
    moments [..., H, W, 2C] with log-variance 2 ln(std)."""
    values = np.asarray(mean_std, np.float64)
    mean, std = np.split(values, 2, axis=-3)
    if not np.all(std > 0):
        raise ValueError("a (mean, std) latent has a non-positive std")
    moments = np.concatenate([mean, 2.0 * np.log(std)], axis=-3)
    return np.moveaxis(moments, -3, -1).astype(np.float32)
