"""Latent presets and the encoding of images into moment shards (data/latents.py, data/encode.py).

The presets are checked against the papers' statistics typed in here; the encoder is a stand-in
whose moments are a closed form of the pixels (8x8 means), so every stored array is predicted
exactly from the fixture images, including the mirrored ones, across a killed and resumed run.
"""

from __future__ import annotations

import errno
import io
import json
import os
import zipfile

import numpy as np
import pytest
from PIL import Image

from fewstep_jax.data import encode, latents, sources
from fewstep_jax.metrics import images


class PoolEncoder:
    """moments = (8x8 means of (r, g, b, r * ramp), log-variance -2 everywhere): a closed form whose
    ramp (0..1 across each block's columns) makes the latent of a mirrored image differ from the
    mirrored latent."""

    fingerprint = "pool8"

    def __init__(self, fail_after: int | None = None):
        self.calls = 0
        self.images = 0
        self.fail_after = fail_after

    def encode_moments(self, x: np.ndarray) -> np.ndarray:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt  # a run killed in the middle of a shard
        self.calls += 1
        self.images += len(x)
        return pool_moments(x)


def pool_moments(x: np.ndarray) -> np.ndarray:
    n, h, w, _ = x.shape
    ramp = np.tile(np.arange(8) / 7.0, w // 8)[None, None, :, None]
    channels = np.concatenate([x, x[..., :1] * ramp], axis=-1)
    mean = channels.reshape(n, h // 8, 8, w // 8, 8, 4).mean(axis=(2, 4))
    return np.concatenate([mean, np.full_like(mean, -2.0)], axis=-1).astype(np.float32)


def make_folder(root, n: int, rng, size: int = 16, broken: tuple[int, ...] = ()) -> list[np.ndarray]:
    """n PNGs of size x size in sorted order (some replaced by garbage bytes)."""
    os.makedirs(root, exist_ok=True)
    images = []
    for i in range(n):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        path = os.path.join(root, f"img{i:03d}.png")
        if i in broken:
            with open(path, "wb") as f:
                f.write(b"not an image")
            continue
        Image.fromarray(pixels).save(path)
        images.append(pixels)
    return images


def run_encode(folder, work, encoder, *, flip=False, shard_size=4, preset="sd"):
    celeba = sources.DATASETS["celebahq256_latents"]
    items, total = encode.image_items(celeba, str(folder))
    return encode.encode_images(
        items,
        encoder=encoder,
        preset=latents.get(preset),
        folder=str(work),
        size=16,
        flip=flip,
        labelled=False,
        total=total,
        shard_size=shard_size,
        batch_size=3,
        num_workers=2,
    )


def read_shards(paths) -> dict[str, np.ndarray]:
    out: dict[str, list] = {}
    for path in paths:
        with np.load(path, allow_pickle=False) as shard:
            for key in shard.files:
                out.setdefault(key, []).append(shard[key])
    return {k: np.concatenate(v) for k, v in out.items()}


# ---------------------------------------------------------------------------- presets


def test_presets_apply_the_papers_statistics():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((3, 2, 2, 4)).astype(np.float64) * 5
    expected = {
        "sd": z * 0.18215,
        "edm2": (z - [5.81, 3.25, 0.12, -2.15]) * 0.5 / np.array([4.17, 4.62, 3.71, 3.28]),
        "scm": (z - [1.56, -0.695, 0.483, 0.729]) * 0.5 / np.array([5.27, 5.91, 4.21, 4.31]),
        "imf": (z - [0.86488, -0.27787343, 0.21616915, 0.3738409])
        / np.array([4.85503674, 5.31922414, 3.93725398, 3.9870003]),
    }
    for name, want in expected.items():
        preset = latents.get(name)
        np.testing.assert_allclose(preset.to_model(z), want, rtol=1e-12)
        np.testing.assert_allclose(preset.to_vae(preset.to_model(z)), z, rtol=1e-12, atol=1e-12)
    assert {p: latents.get(p).data_std for p in expected} == {"sd": 1.0, "edm2": 0.5, "scm": 0.5, "imf": 1.0}
    with pytest.raises(ValueError, match="unknown latent preset 'sdxl'; known: sd, edm2, scm, imf"):
        latents.get("sdxl")
    with pytest.raises(ValueError, match="4-channel latents, got 16"):
        latents.get("sd").to_model(np.zeros((1, 16)))


def test_vae_input_and_output_ranges():
    pixels = np.array([0, 1, 127, 128, 254, 255], np.uint8)
    np.testing.assert_allclose(latents.get("sd").images_to_vae(pixels), pixels / 127.5 - 1, atol=1e-6)
    np.testing.assert_allclose(latents.get("edm2").images_to_vae(pixels), pixels / 255.0, atol=1e-6)
    x = np.array([-1.2, -1.0, -0.5, 0.0, 0.999, 1.0, 1.5])
    # [-1, 1]: round(127.5 (x + 1)) clipped; [0, 1]: EDM2 truncates 255 clamp(x).
    assert latents.get("scm").vae_to_uint8(x).tolist() == [0, 0, 64, 128, 255, 255, 255]
    y = np.array([-0.1, 0.0, 0.5, 0.999, 1.0, 1.7])
    assert latents.get("edm2").vae_to_uint8(y).tolist() == [0, 0, 127, 254, 255, 255]


def test_mean_std_arrays_become_moments():
    rng = np.random.default_rng(1)
    mean, std = rng.standard_normal((4, 3, 5)), rng.uniform(0.01, 2.0, (4, 3, 5))
    moments = latents.moments_from_mean_std(np.concatenate([mean, std]))
    assert moments.shape == (3, 5, 8)
    np.testing.assert_allclose(moments[..., :4], mean.transpose(1, 2, 0), rtol=1e-6)
    np.testing.assert_allclose(np.exp(moments[..., 4:] / 2), std.transpose(1, 2, 0), rtol=1e-5)
    with pytest.raises(ValueError, match="non-positive std"):
        latents.moments_from_mean_std(np.concatenate([mean, -std]))


# ---------------------------------------------------------------------------- encoding


def test_encoding_matches_the_closed_form_with_flips(tmp_path):
    images = make_folder(tmp_path / "images", 10, np.random.default_rng(2))
    paths = run_encode(tmp_path / "images", tmp_path / "work", PoolEncoder(), flip=True)
    assert [os.path.basename(p) for p in paths] == ["shard-00000.npz", "shard-00001.npz", "shard-00002.npz"]
    stored = read_shards(paths)
    x = np.stack(images).astype(np.float64) / 127.5 - 1
    np.testing.assert_allclose(stored["moments"], pool_moments(x), atol=1e-6)
    np.testing.assert_allclose(stored["flipped"], pool_moments(x[:, :, ::-1]), atol=1e-6)
    assert not np.allclose(stored["flipped"], stored["moments"][:, :, ::-1])  # mirrored latents differ
    assert "labels" not in stored
    settings = json.loads((tmp_path / "work" / "settings.json").read_text())
    assert settings["preset"] == "sd" and settings["flip"] and settings["skipped"] == []


def test_a_killed_run_resumes_from_its_finished_shards(tmp_path):
    make_folder(tmp_path / "images", 10, np.random.default_rng(3))
    killed = PoolEncoder(fail_after=3)  # batch size 3, shards of 4: dies inside the second shard
    with pytest.raises(KeyboardInterrupt):
        run_encode(tmp_path / "images", tmp_path / "work", killed)
    assert sorted(os.listdir(tmp_path / "work")) == ["settings.json", "shard-00000.npz"]  # nothing half-written
    resumed = PoolEncoder()
    paths = run_encode(tmp_path / "images", tmp_path / "work", resumed)
    assert resumed.images == 6  # shards 1 and 2 only
    fresh = run_encode(tmp_path / "images", tmp_path / "fresh", PoolEncoder())
    for key, value in read_shards(fresh).items():
        np.testing.assert_array_equal(read_shards(paths)[key], value)
    with pytest.raises(ValueError, match=r"other settings \(preset: recorded 'sd', now 'imf'"):
        run_encode(tmp_path / "images", tmp_path / "work", PoolEncoder(), preset="imf")


def test_unreadable_images_are_skipped_counted_and_named(tmp_path):
    images = make_folder(tmp_path / "images", 7, np.random.default_rng(4), broken=(2, 5))
    paths = run_encode(tmp_path / "images", tmp_path / "work", PoolEncoder())
    stored = read_shards(paths)
    np.testing.assert_allclose(stored["moments"], pool_moments(np.stack(images) / 127.5 - 1), atol=1e-6)
    settings = json.loads((tmp_path / "work" / "settings.json").read_text())
    assert settings["skipped"] == ["img002.png", "img005.png"]


def test_a_full_disk_stops_with_one_message_and_keeps_finished_shards(tmp_path, monkeypatch):
    make_folder(tmp_path / "images", 10, np.random.default_rng(5))
    real_savez, calls = np.savez, []

    def savez(path, **arrays):
        calls.append(path)
        if len(calls) == 2:
            with open(path, "wb") as f:
                f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_savez(path, **arrays)

    monkeypatch.setattr(encode.np, "savez", savez)
    with pytest.raises(OSError, match=r"shard-00001.npz \(No space left on device\); the finished shards are kept"):
        run_encode(tmp_path / "images", tmp_path / "work", PoolEncoder())
    assert sorted(os.listdir(tmp_path / "work")) == ["settings.json", "shard-00000.npz"]


def test_edm2_stores_in_a_folder_or_zip_become_moment_shards(tmp_path):
    rng = np.random.default_rng(6)
    arrays = [np.concatenate([rng.standard_normal((4, 2, 2)), rng.uniform(0.1, 1, (4, 2, 2))]) for _ in range(5)]
    names = [f"{i // 3:05d}/img-mean-std-{i:08d}.npy" for i in range(5)]
    labels = [[name, int(i * 7 % 1000)] for i, name in enumerate(names)]
    folder = tmp_path / "store"
    with zipfile.ZipFile(tmp_path / "store.zip", "w") as archive:
        for name, array in zip(names, arrays):
            buffer = io.BytesIO()
            np.save(buffer, array.astype(np.float32))
            archive.writestr(name, buffer.getvalue())
            os.makedirs(folder / os.path.dirname(name), exist_ok=True)
            (folder / name).write_bytes(buffer.getvalue())
        archive.writestr("dataset.json", json.dumps({"labels": labels}))
    (folder / "dataset.json").write_text(json.dumps({"labels": labels}))
    for source in (folder, tmp_path / "store.zip"):
        assert encode.is_mean_std_store(str(source))
        stored = read_shards(encode.store_to_shards(str(source), str(tmp_path / f"out_{source.name}"), shard_size=2))
        mean = np.stack([a[:4] for a in arrays]).transpose(0, 2, 3, 1)
        std = np.stack([a[4:] for a in arrays]).transpose(0, 2, 3, 1)
        np.testing.assert_allclose(stored["moments"][..., :4], mean, rtol=1e-6)
        np.testing.assert_allclose(stored["moments"][..., 4:], 2 * np.log(std.astype(np.float32)), rtol=1e-5)
        assert stored["labels"].tolist() == [label for _, label in labels]
    assert not encode.is_mean_std_store(str(tmp_path / "images_nowhere"))


def test_edm2_reference_pickles_give_the_fid_statistics(tmp_path):
    import pickle

    rng = np.random.default_rng(7)
    fid = {"mu": rng.standard_normal(2048), "sigma": np.eye(2048) * 2.0}
    dino = {"mu": rng.standard_normal(1024), "sigma": np.eye(1024)}
    both, dino_only = tmp_path / "img512.pkl", tmp_path / "dino.pkl"
    both.write_bytes(pickle.dumps({"fid": fid, "fd_dinov2": dino}, protocol=4))
    dino_only.write_bytes(pickle.dumps({"fd_dinov2": dino}, protocol=4))
    mu, sigma = images.edm2_fid_reference(str(both))
    np.testing.assert_array_equal(mu, fid["mu"])
    np.testing.assert_array_equal(sigma, fid["sigma"])
    assert images.edm2_fid_reference(str(tmp_path / "stats.npz")) is None
    with pytest.raises(ValueError, match=r"holds no FID statistics \(only \['fd_dinov2'\]\)"):
        images.edm2_fid_reference(str(dino_only))


def test_prepare_command_line_names_what_is_missing(tmp_path):
    """The encoding flags of `python -m fewstep_jax.data.prepare`: one-line errors, nothing written."""
    import subprocess
    import sys

    from conftest import REPO

    make_folder(tmp_path / "images", 2, np.random.default_rng(8))
    base = [sys.executable, "-m", "fewstep_jax.data.prepare", "--dataset=celebahq256_latents"]
    base += [f"--manual_dir={tmp_path / 'images'}", f"--data_dir={tmp_path / 'tfds'}"]
    cases = [
        ([], "needs --latent_preset, one of sd, edm2, scm, imf"),
        (["--latent_preset=sd"], "encoding them needs --vae_weights"),
        (["--latent_preset=sd", f"--vae_weights={tmp_path / 'missing.safetensors'}"], "missing.safetensors"),
    ]
    for extra, message in cases:
        run = subprocess.run(base + extra, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert run.returncode != 0 and message in run.stderr, run.stderr[-2000:]
        assert "Traceback" not in run.stderr
    assert not (tmp_path / "tfds" / "fewstep_celebahq256_latents" / "1.0.0").exists()
