"""Real datasets through tensorflow-datasets without TensorFlow: preparation from fixture files in
each real on-disk format, and the grain-fed training stream.

Every fixture is tiny and prepared once per module. Expected values are computed here from the
fixture arrays (CIFAR CHW rows, the ADM crop redone with PIL, latent arithmetic), never from
earlier output of the code under test.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tarfile

import ml_collections
import numpy as np
import pytest
from conftest import REPO, load_config
from PIL import Image

from fewstep_jax import data, experiment
from fewstep_jax.data import prepare, sources, tfds_reader

CIFAR_TRAIN_PER_BATCH, CIFAR_TEST = 3, 4
# (synset, expected label): the first, second and last of the 1,000 sorted ILSVRC2012 synset ids.
SYNSETS = (("n01440764", 0), ("n01443537", 1), ("n15075141", 999))
# Odd sizes (W, H) and modes: halved twice or once (short side exactly 128 included), only resized,
# upsampled, portrait, gray, CMYK.
JPEG_SIZES = {
    "n01440764": [((300, 260), "RGB"), ((150, 97), "RGB"), ((64, 200), "L")],
    "n01443537": [((50, 40), "RGB"), ((129, 300), "CMYK")],
    "n15075141": [((640, 480), "RGB"), ((200, 128), "RGB")],
}
# The ground-truth labels of ILSVRC2012_val_00000001..3 (sea snake, alp, Shetland sheepdog).
VAL_LABELS = (65, 970, 230)
# improved MeanFlow's per-channel latent statistics (its official code), typed in from the source.
IMF_MU = np.array([0.86488, -0.27787343, 0.21616915, 0.3738409], np.float32)
IMF_SIGMA = np.array([4.85503674, 5.31922414, 3.93725398, 3.9870003], np.float32)


def cfg(name: str, data_dir, **extra) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(dict(name=name, data_dir=str(data_dir), read_threads=0), **extra))


def random_image(rng: np.random.Generator, size: tuple[int, int], mode: str) -> Image.Image:
    """A smooth random image (so JPEG keeps structure) of PIL size (W, H) in `mode`."""
    w, h = size
    base = rng.integers(0, 256, (h // 8 + 2, w // 8 + 2, 3), dtype=np.uint8)
    image = Image.fromarray(base).resize((w, h), Image.BILINEAR)
    noise = rng.integers(-20, 21, (h, w, 3))
    return Image.fromarray(np.clip(np.asarray(image) + noise, 0, 255).astype(np.uint8)).convert(mode)


def jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def add_bytes(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def adm_reference(data: bytes, size: int) -> np.ndarray:
    """The ADM center_crop_arr recipe, written out independently with PIL."""
    image = Image.open(io.BytesIO(data))
    image.load()
    image = image.convert("RGB")
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
    arr = np.array(image)
    y0, x0 = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[y0 : y0 + size, x0 : x0 + size]


# ---------------------------------------------------------------------------- fixtures in the real formats


def make_cifar_tarball(folder, rng) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """cifar-10-python.tar.gz with the real directory name and pickle layout; returns the raw rows."""
    raw = {}
    path = os.path.join(folder, "cifar-10-python.tar.gz")
    with tarfile.open(path, "w:gz") as tar:
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        for name in names:
            n = CIFAR_TEST if name == "test_batch" else CIFAR_TRAIN_PER_BATCH
            rows = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
            labels = [int(v) for v in rng.integers(0, 10, n)]
            batch = {
                b"batch_label": f"fixture {name}".encode(),
                b"labels": labels,
                b"data": rows,
                b"filenames": [f"img_{i}.png".encode() for i in range(n)],
            }
            add_bytes(tar, f"cifar-10-batches-py/{name}", pickle.dumps(batch, protocol=2))
            raw[name] = (rows, np.asarray(labels))
        meta = {b"label_names": [b"airplane"] * 10, b"num_cases_per_batch": 10000, b"num_vis": 3072}
        add_bytes(tar, "cifar-10-batches-py/batches.meta", pickle.dumps(meta, protocol=2))
    return raw


def make_imagenet_tars(folder, rng) -> tuple[dict[str, list[bytes]], list[bytes]]:
    """ILSVRC2012_img_train.tar (a tar of per-synset tars of JPEGs) and a flat validation tar."""
    train = {}
    with tarfile.open(os.path.join(folder, "ILSVRC2012_img_train.tar"), "w") as outer:
        for synset in sorted(JPEG_SIZES, reverse=True):  # stored out of order on purpose
            inner_buffer = io.BytesIO()
            jpegs = [jpeg_bytes(random_image(rng, size, mode)) for size, mode in JPEG_SIZES[synset]]
            with tarfile.open(fileobj=inner_buffer, mode="w") as inner:
                for i, payload in enumerate(jpegs):
                    add_bytes(inner, f"{synset}_{1000 + i}.JPEG", payload)
            add_bytes(outer, f"{synset}.tar", inner_buffer.getvalue())
            train[synset] = jpegs
    val = [jpeg_bytes(random_image(rng, (90 + 13 * i, 70 + 7 * i), "RGB")) for i in range(3)]
    with tarfile.open(os.path.join(folder, "ILSVRC2012_img_val.tar"), "w") as tar:
        for i, payload in enumerate(val):
            add_bytes(tar, f"ILSVRC2012_val_{i + 1:08d}.JPEG", payload)
    return train, val


def make_celeba_folder(folder, rng) -> list[tuple[str, bytes]]:
    """An image folder: two 256x256 PNGs (one nested) and a larger JPEG."""
    files = [
        ("00000.png", random_image(rng, (256, 256), "RGB"), "PNG"),
        ("more/00001.jpg", random_image(rng, (300, 280), "RGB"), "JPEG"),
        ("more/00002.png", random_image(rng, (256, 256), "RGB"), "PNG"),
    ]
    out = []
    for relative, image, fmt in files:
        path = os.path.join(folder, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        image.save(path, format=fmt)
        with open(path, "rb") as f:
            out.append((relative, f.read()))
    return out


def make_latent_shards(folder, rng, *, kind: str, labels: bool) -> dict[str, np.ndarray]:
    """Two .npz shards of [n, 4, 4, 4] latents or [n, 4, 4, 8] moments (float16), optional labels."""
    os.makedirs(folder)
    parts = {"values": [], "labels": []}
    for i, n in enumerate((3, 2)):
        channels = 8 if kind == "moments" else 4
        values = rng.standard_normal((n, 4, 4, channels)).astype(np.float16)
        if kind == "moments":
            values[..., 4:] = np.log(0.25)  # posterior std 0.5
        arrays = {kind: values}
        if labels:
            arrays["labels"] = rng.integers(0, 1000, n)
        np.savez(os.path.join(folder, f"shard_{i:03d}.npz"), **arrays)
        parts["values"].append(values)
        parts["labels"].append(arrays.get("labels", np.zeros(n, np.int64)))
    return {k: np.concatenate(v) for k, v in parts.items()}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Every dataset prepared once from its fixture files into one data dir."""
    root = tmp_path_factory.mktemp("real")
    data_dir = root / "tensorflow_datasets"
    rng = np.random.default_rng(2024)
    manual = {name: root / name for name in ("cifar10", "imagenet64", "celebahq256", "latents", "celeba_latents")}
    for folder in manual.values():
        folder.mkdir()
    out = {
        "data_dir": data_dir,
        "cifar": make_cifar_tarball(manual["cifar10"], rng),
        "imagenet": make_imagenet_tars(manual["imagenet64"], rng),
        "celeba": make_celeba_folder(manual["celebahq256"], rng),
        "moments": make_latent_shards(manual["latents"] / "shards", rng, kind="moments", labels=True),
        "latents": make_latent_shards(manual["celeba_latents"] / "shards", rng, kind="latents", labels=False),
    }
    for name in ("cifar10", "imagenet64", "celebahq256"):
        prepare.prepare(name, manual_dir=str(manual[name]), data_dir=str(data_dir), num_workers=2)
    for name, folder, preset in (
        ("imagenet256_latents", "latents", "imf"),
        ("celebahq256_latents", "celeba_latents", "sd"),
    ):
        prepare.prepare(name, manual_dir=str(manual[folder] / "shards"), data_dir=str(data_dir), latent_preset=preset)
    out["manual"] = manual
    return out


def all_images(config, split: str, batch_size: int = 5) -> tuple[np.ndarray, np.ndarray]:
    batches = list(data.iterate_images(config, split, batch_size=batch_size))
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


def cifar_expected(raw, split: str) -> tuple[np.ndarray, np.ndarray]:
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    rows = np.concatenate([raw[n][0] for n in names])
    labels = np.concatenate([raw[n][1] for n in names])
    return rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels  # CHW rows -> HWC


# ---------------------------------------------------------------------------- the datasets


def test_cifar10_round_trips_pixels_and_labels(prepared):
    config = cfg("cifar10", prepared["data_dir"])
    for split in ("train", "test"):
        images, labels = all_images(config, split)
        expected_images, expected_labels = cifar_expected(prepared["cifar"], split)
        assert images.dtype == np.uint8 and images.shape == expected_images.shape
        np.testing.assert_array_equal(images, expected_images)
        np.testing.assert_array_equal(labels, expected_labels)
        assert data.num_examples(config, split) == len(expected_images)
    first = list(data.iterate_images(config, "train", batch_size=4, limit=6))
    assert [b[0].shape[0] for b in first] == [4, 2]
    np.testing.assert_array_equal(first[1][0], cifar_expected(prepared["cifar"], "train")[0][4:6])

    assert data.dataset_info(config) == data.DatasetInfo("cifar10", (32, 32, 3), 0, 0.5)
    with pytest.raises(ValueError, match="no split 'validation'; prepared splits: test, train"):
        data.num_examples(config, "validation")
    with pytest.raises(ValueError, match="'digits' is embedded"):
        data.iterate_images({"name": "digits"}, "train", batch_size=4)
    conditional = cfg("cifar10", prepared["data_dir"], conditional=True)
    assert data.dataset_info(conditional).num_classes == 10

    ref = data.reference_data(conditional, "test", n=3, seed=1)
    x_test, y_test = cifar_expected(prepared["cifar"], "test")
    assert ref["x"].dtype == np.float32 and ref["x"].shape == (3, 32, 32, 3)
    pixels = x_test.astype(np.float32) / 127.5 - 1
    rows = [int(np.flatnonzero((np.abs(pixels - x).reshape(len(pixels), -1) < 1e-6).all(axis=1))[0]) for x in ref["x"]]
    assert len(set(rows)) == 3  # distinct examples, each with its own true label
    np.testing.assert_array_equal(ref["y"], y_test[rows])
    whole = data.reference_data(config, "test")
    np.testing.assert_allclose(whole["x"], pixels, atol=1e-6)
    np.testing.assert_array_equal(whole["y"], y_test)  # true labels even for an unconditional config


def test_imagenet64_adm_center_crop_and_labels(prepared, tmp_path):
    config = cfg("imagenet64", prepared["data_dir"])
    train, val = prepared["imagenet"]
    images, labels = all_images(config, "train", batch_size=3)
    expected = [adm_reference(jpeg, 64) for synset, _ in SYNSETS for jpeg in train[synset]]
    expected_labels = [label for synset, label in SYNSETS for _ in train[synset]]
    assert images.shape == (len(expected), 64, 64, 3)
    np.testing.assert_array_equal(images, np.stack(expected))  # sorted synsets, sorted files
    np.testing.assert_array_equal(labels, expected_labels)
    # The extracted layout (train/<synset>/<file>) gives the same dataset.
    for synset, jpegs in train.items():
        (tmp_path / "manual" / "train" / synset).mkdir(parents=True)
        for i, payload in enumerate(jpegs):
            (tmp_path / "manual" / "train" / synset / f"{synset}_{1000 + i}.JPEG").write_bytes(payload)
    prepare.prepare("imagenet64", manual_dir=str(tmp_path / "manual"), data_dir=str(tmp_path / "tfds"))
    folder_images, folder_labels = all_images(cfg("imagenet64", tmp_path / "tfds"), "train")
    np.testing.assert_array_equal(folder_images, np.stack(expected))
    np.testing.assert_array_equal(folder_labels, expected_labels)
    assert data.num_examples(cfg("imagenet64", tmp_path / "tfds"), "train") == len(expected)
    val_images, val_labels = all_images(config, "validation")
    np.testing.assert_array_equal(val_images, np.stack([adm_reference(jpeg, 64) for jpeg in val]))
    np.testing.assert_array_equal(val_labels, VAL_LABELS)
    assert data.dataset_info(config) == data.DatasetInfo("imagenet64", (64, 64, 3), 1000, 0.5)
    assert data.dataset_info(cfg("imagenet64", prepared["data_dir"], conditional=False)).num_classes == 0


def test_celebahq256_image_folder(prepared):
    config = cfg("celebahq256", prepared["data_dir"])
    images, labels = all_images(config, "train")
    files = prepared["celeba"]  # sorted by relative path already
    assert images.shape == (3, 256, 256, 3) and np.all(labels == 0)
    np.testing.assert_array_equal(images[0], np.asarray(Image.open(io.BytesIO(files[0][1])).convert("RGB")))
    np.testing.assert_array_equal(images[1], adm_reference(files[1][1], 256))  # 300x280 -> crop
    np.testing.assert_array_equal(images[2], np.asarray(Image.open(io.BytesIO(files[2][1])).convert("RGB")))
    assert data.dataset_info(config) == data.DatasetInfo("celebahq256", (256, 256, 3), 0, 0.5)
    with pytest.raises(ValueError, match="has no labels"):
        data.validate(cfg("celebahq256", prepared["data_dir"], conditional=True))


def test_latent_datasets(prepared):
    moments = prepared["moments"]
    config = cfg("imagenet256_latents", prepared["data_dir"], latent_preset="imf")
    info = data.dataset_info(config)
    assert info == data.DatasetInfo("imagenet256_latents", (4, 4, 4), 1000, 1.0, "imf")
    ref = data.reference_data(config, "train", seed=3)
    mean = moments["values"][..., :4].astype(np.float32)
    np.testing.assert_array_equal(ref["y"], moments["labels"])
    # iMF's standardization: x = (z - mu) / sigma, z = mean + 0.5 * eps, eps standard normal,
    # fresh per (seed, example).
    eps = (ref["x"] * IMF_SIGMA + IMF_MU - mean) / 0.5
    assert abs(eps.mean()) < 0.25 and abs(eps.std() - 1) < 0.2
    np.testing.assert_array_equal(ref["x"], data.reference_data(config, "train", seed=3)["x"])
    assert not np.allclose(ref["x"], data.reference_data(config, "train", seed=4)["x"])

    _, it = data.build_dataset(config, seed=0, global_batch_size=5)  # one batch = one epoch
    first, second = next(it), next(it)
    order = [int(np.argmin(np.abs((mean - IMF_MU) / IMF_SIGMA - row).sum(axis=(1, 2, 3)))) for row in first["x"]]
    np.testing.assert_array_equal(np.sort(order), np.arange(5))
    np.testing.assert_array_equal(first["y"], moments["labels"][order])
    assert not np.allclose(np.sort(first["x"].ravel()), np.sort(second["x"].ravel()))  # resampled per visit

    plain = cfg("celebahq256_latents", prepared["data_dir"])
    whole = data.reference_data(plain, "train")
    np.testing.assert_allclose(whole["x"], prepared["latents"]["values"].astype(np.float32) * 0.18215, rtol=1e-6)
    assert data.dataset_info(plain) == data.DatasetInfo("celebahq256_latents", (4, 4, 4), 0, 1.0, "sd")

    with pytest.raises(ValueError, match="not from images.*eval.fid_stats"):
        list(data.iterate_images(config, "train", batch_size=2))
    with pytest.raises(ValueError, match=r"latent_preset='sd' .* prepared with the preset 'imf'"):
        data.dataset_info(cfg("imagenet256_latents", prepared["data_dir"], latent_preset="sd"))
    with pytest.raises(ValueError, match=r"latent_flips=True but .* without the moments of mirrored"):
        data.dataset_info(cfg("imagenet256_latents", prepared["data_dir"], latent_flips=True))
    with pytest.raises(ValueError, match="has no labels"):
        data.validate(cfg("celebahq256_latents", prepared["data_dir"], conditional=True))


def test_latents_prepared_without_labels_are_unconditional_only(prepared, tmp_path):
    shards = prepared["manual"]["celeba_latents"] / "shards"  # no 'labels' arrays
    prepare.prepare("imagenet256_latents", manual_dir=str(shards), data_dir=str(tmp_path), latent_preset="sd")
    assert data.dataset_info(cfg("imagenet256_latents", tmp_path, conditional=False)).num_classes == 0
    with pytest.raises(ValueError, match="prepared without labels"):
        data.dataset_info(cfg("imagenet256_latents", tmp_path, conditional=True))
    with pytest.raises(ValueError, match="--latent_preset, one of sd, edm2, scm, imf"):
        prepare.prepare("celebahq256_latents", manual_dir=str(shards), data_dir=str(tmp_path))


# ---------------------------------------------------------------------------- the training stream


def take(iterator, k: int) -> list[dict[str, np.ndarray]]:
    return [next(iterator) for _ in range(k)]


def test_batches_are_images_in_minus_one_one_and_epochs_cover_the_split(prepared):
    config = cfg("cifar10", prepared["data_dir"], conditional=True)
    x_train, y_train = cifar_expected(prepared["cifar"], "train")  # 15 examples
    pixels = (x_train.astype(np.float32) / 127.5 - 1).reshape(len(x_train), -1)
    _, it = data.build_dataset(config, seed=0, global_batch_size=5)
    batches = take(it, 6)  # two epochs
    assert batches[0]["x"].dtype == np.float32 and batches[0]["x"].shape == (5, 32, 32, 3)
    rows = []
    for batch in batches:
        for x, y in zip(batch["x"].reshape(5, -1), batch["y"]):
            (match,) = np.flatnonzero(np.abs(pixels - x).max(axis=1) < 1e-6)
            assert y == y_train[match]
            rows.append(int(match))
    np.testing.assert_array_equal(np.sort(rows[:15]), np.arange(15))  # each example once per epoch
    np.testing.assert_array_equal(np.sort(rows[15:]), np.arange(15))
    assert rows[:15] != rows[15:]  # reshuffled
    _, unconditional = data.build_dataset(cfg("cifar10", prepared["data_dir"]), seed=0, global_batch_size=5)
    assert np.all(next(unconditional)["y"] == 0)


def test_same_seed_and_step_give_the_same_batch_and_resume_is_exact(prepared):
    config = cfg("cifar10", prepared["data_dir"], conditional=True)
    threaded = cfg("cifar10", prepared["data_dir"], conditional=True, read_threads=2)
    _, a = data.build_dataset(config, seed=7, global_batch_size=4)
    _, b = data.build_dataset(threaded, seed=7, global_batch_size=4)
    _, c = data.build_dataset(config, seed=8, global_batch_size=4)
    stream = take(a, 9)  # 36 rows: more than two epochs of 15
    for x, y in zip(stream, take(b, 9)):
        np.testing.assert_array_equal(x["x"], y["x"])
        np.testing.assert_array_equal(x["y"], y["y"])
    assert not np.array_equal(stream[0]["x"], next(c)["x"])

    _, interrupted = data.build_dataset(threaded, seed=7, global_batch_size=4)
    take(interrupted, 4)
    state = json.loads(json.dumps(interrupted.get_state()))
    interrupted.close()
    _, resumed = data.build_dataset(threaded, seed=7, global_batch_size=4)
    next(resumed)  # read ahead from step 0, then jump
    resumed.set_state(state)
    for expected in stream[4:]:
        np.testing.assert_array_equal(next(resumed)["x"], expected["x"])
    resumed.close()


def test_process_slices_add_up_to_the_global_batch(prepared):
    for name, extra in (("cifar10", {}), ("imagenet256_latents", {"latent_preset": "imf"})):
        config = cfg(name, prepared["data_dir"], **extra)
        _, single = data.build_dataset(config, seed=3, global_batch_size=8)
        local = [
            data.build_dataset(config, seed=3, global_batch_size=8, process_index=i, process_count=4)[1]
            for i in range(4)
        ]
        for step in range(5):
            reference = next(single)
            parts = [next(it) for it in local]
            assert all(part["x"].shape[0] == 2 for part in parts)
            np.testing.assert_array_equal(np.concatenate([p["x"] for p in parts]), reference["x"])
            np.testing.assert_array_equal(np.concatenate([p["y"] for p in parts]), reference["y"])
            np.testing.assert_array_equal(local[2].global_batch(step)["x"], reference["x"])


# ---------------------------------------------------------------------------- errors and isolation


def test_missing_dataset_fails_before_compilation_with_the_command_and_file(tmp_path):
    empty = tmp_path / "tfds"
    config = load_config("trigflow_cifar", "smoke")
    config.data.data_dir = str(empty)
    command = f"python -m fewstep_jax.data.prepare --dataset=cifar10 --manual_dir=DIR --data_dir={empty}"
    with pytest.raises(tfds_reader.DatasetNotPreparedError, match="cifar-10-python.tar.gz") as error:
        experiment.check(config, num_devices=1)
    assert command in str(error.value) and "--download" in str(error.value)
    with pytest.raises(ValueError, match="ILSVRC2012_img_train.tar"):
        data.build_dataset(cfg("imagenet64", empty), seed=0, global_batch_size=8)
    with pytest.raises(ValueError, match="--latent_preset=sd --vae_weights="):
        data.num_examples(cfg("imagenet256_latents", empty), "train")
    with pytest.raises(FileNotFoundError, match="cifar-10-python.tar.gz"):
        prepare.prepare("cifar10", manual_dir=str(tmp_path), data_dir=str(empty))


def test_download_fetches_only_the_official_url_and_checks_the_md5(prepared, tmp_path, monkeypatch):
    fixture = prepared["manual"]["cifar10"] / "cifar-10-python.tar.gz"
    fetched = []

    def fake_urlretrieve(url, filename, reporthook=None):
        fetched.append(url)
        shutil.copyfile(fixture, filename)

    monkeypatch.setattr(prepare.urllib.request, "urlretrieve", fake_urlretrieve)
    with pytest.raises(OSError, match="MD5"):  # the fixture is not the published file
        prepare.download_cifar10(str(tmp_path / "bad"))
    assert os.listdir(tmp_path / "bad") == []  # nothing half-downloaded is left behind
    monkeypatch.setattr(sources, "CIFAR10_MD5", hashlib.md5(fixture.read_bytes()).hexdigest())
    path = prepare.prepare("cifar10", manual_dir=str(tmp_path / "ok"), data_dir=str(tmp_path / "tfds"), download=True)
    assert fetched == [sources.CIFAR10_URL] * 2 == ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"] * 2
    assert path.endswith("fewstep_cifar10/1.0.0") and (tmp_path / "ok" / "cifar-10-python.tar.gz").is_file()
    with pytest.raises(ValueError, match="no public download"):
        prepare.prepare("celebahq256", manual_dir=str(tmp_path), data_dir=str(tmp_path / "tfds"), download=True)


def test_validate_real_configs():
    data.validate({"name": "cifar10"})  # cheap: nothing prepared is needed
    data.validate({"name": "imagenet256_latents", "latent_preset": "edm2", "data_dir": "/nowhere", "read_threads": 4})
    bad = [
        ({"name": "cifar10", "latent_preset": "sd"}, r"unknown data config key\(s\) \['latent_preset'\]"),
        ({"name": "cifar10", "read_threads": -1}, "read_threads"),
        ({"name": "cifar10", "data_dir": 3}, "data_dir"),
        ({"name": "imagenet256_latents", "latent_preset": "sd2"}, "unknown latent preset 'sd2'"),
        ({"name": "imagenet256_latents", "latent_flips": 1}, "latent_flips must be a bool"),
        ({"name": "celebahq256_latents", "conditional": True}, "has no labels"),
    ]
    for config, message in bad:
        with pytest.raises(ValueError, match=message):
            data.validate(config)


@pytest.mark.slow
def test_prepare_cli_and_loading_never_import_tensorflow(prepared, tmp_path):
    """A stand-in `tensorflow` package first on the path records any import attempt."""
    fake = tmp_path / "fake" / "tensorflow"
    fake.mkdir(parents=True)
    marker = tmp_path / "tensorflow_imported"
    (fake / "__init__.py").write_text(
        f"open({str(marker)!r}, 'a').write('imported')\nraise ImportError('tensorflow is not allowed')\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(fake.parent), REPO]))
    data_dir = tmp_path / "tfds"
    cli = [sys.executable, "-m", "fewstep_jax.data.prepare", "--dataset=cifar10"]
    cli += [f"--manual_dir={prepared['manual']['cifar10']}", f"--data_dir={data_dir}"]
    run = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "prepared cifar10" in run.stderr and run.stdout.strip().endswith("fewstep_cifar10/1.0.0")
    shards = prepared["manual"]["latents"] / "shards"
    load = (
        "import sys\n"
        "from fewstep_jax import data\n"
        "from fewstep_jax.data import prepare\n"
        f"c = dict(name='cifar10', data_dir={str(data_dir)!r}, conditional=True, read_threads=2)\n"
        "info, it = data.build_dataset(c, seed=0, global_batch_size=4)\n"
        "next(it); it.close()\n"
        "x, y = next(iter(data.iterate_images(c, 'test', batch_size=2)))\n"
        f"prepare.prepare('imagenet256_latents', manual_dir={str(shards)!r}, data_dir={str(data_dir)!r}, "
        "latent_preset='sd')\n"
        f"l = dict(name='imagenet256_latents', data_dir={str(data_dir)!r}, read_threads=0)\n"
        "next(data.build_dataset(l, seed=0, global_batch_size=2)[1])\n"
        "print(sorted(m for m in sys.modules if m == 'tensorflow' or m.startswith('tensorflow.')))\n"
    )
    run = subprocess.run([sys.executable, "-c", load], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "[]"
    assert not marker.exists(), "something tried to import tensorflow"
    package = os.path.join(REPO, "fewstep_jax")
    sources_text = [open(os.path.join(d, f)).read() for d, _, fs in os.walk(package) for f in fs if f.endswith(".py")]
    assert not any(re.search(r"^\s*(import|from)\s+tensorflow(\s|\.|$)", t, re.M) for t in sources_text)
    failed = subprocess.run(cli[:4] + [f"--manual_dir={tmp_path}"], env=env, capture_output=True, text=True)
    assert failed.returncode != 0 and "cifar-10-python.tar.gz" in failed.stderr
