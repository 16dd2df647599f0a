"""The latent path end to end on tiny fixtures: images -> prepared latents (encoded by a VAE file)
-> a few training steps -> decoded sample grids -> FID and FD-DINOv2 -> eval mode.

The VAE is the reduced configuration of models/vae.py with random weights, written as a
safetensors file that records its configuration; the Inception and DINOv2 weights are random
too. What is checked is the plumbing, against values computed here: the stored moments equal
the VAE applied to the crops, training batches follow the preset, grids are decoded images of
the source size, the metrics are finite, and FID of the source images against their own
reference statistics is zero.
"""

from __future__ import annotations

import os

import inception_golden as golden
import jax
import numpy as np
import pytest
from conftest import load_config, read_jsonl
from PIL import Image

from fewstep_jax import data, train
from fewstep_jax.data import latents, prepare
from fewstep_jax.metrics import dinov2, inception
from fewstep_jax.metrics import images as images_lib
from fewstep_jax.models import vae as vae_lib

pytestmark = pytest.mark.slow

NUM_IMAGES = 12


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("latent_pipeline")
    rng = np.random.default_rng(0)
    folder = root / "celebahq"
    folder.mkdir()
    pixels = []
    for i in range(NUM_IMAGES):
        # smooth random images (a coarse grid upsampled), so that decoded samples are not noise
        coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((256, 256), Image.BILINEAR)
        image.save(folder / f"face{i:02d}.png")
        pixels.append(np.asarray(image))
    net = vae_lib.AutoencoderKL(vae_lib.TINY)
    params = net.init(jax.random.key(0), np.zeros((1, 16, 16, 3), np.float32))["params"]
    vae_path = str(root / "tiny_vae.safetensors")
    vae_lib.save_safetensors(params, vae_path, config=vae_lib.TINY)
    inception_path = str(root / "inception.npz")
    inception.save_state_dict_npz(golden.random_state_dict(inception.state_dict_shapes()), inception_path)
    dinov2_path = str(root / "dinov2_small.safetensors")
    save_random_dinov2(dinov2_path, dinov2.DINOv2Config(dim=128, depth=1, heads=2, mlp_dim=256), rng)
    data_dir = root / "tfds"
    prepare.prepare(
        "celebahq256_latents",
        manual_dir=str(folder),
        data_dir=str(data_dir),
        latent_preset="sd",
        vae_weights=vae_path,
        flip=True,
        shard_size=6,  # two shards of one batch each: the encoder compiles one shape
        batch_size=6,
    )
    return dict(
        root=root,
        images=np.stack(pixels),
        params=params,
        vae=vae_path,
        inception=inception_path,
        dinov2=dinov2_path,
        data_dir=str(data_dir),
    )


def save_random_dinov2(path, config, rng):
    """A hub-named DINOv2 of `config` with random weights (LayerNorm scales 1, LayerScale 0.1)."""
    import safetensors.numpy

    tensors = {}
    for name, shape in dinov2.state_dict_shapes(config).items():
        if name.endswith(("norm1.weight", "norm2.weight", "norm.weight")):
            value = np.ones(shape)
        elif name.endswith("gamma"):
            value = np.full(shape, 0.1)
        else:
            value = 0.02 * rng.standard_normal(shape)
        tensors[name] = value.astype(np.float32)
    safetensors.numpy.save_file(tensors, path)


def latent_config(files, workdir_steps: int = 4):
    config = load_config("shortcut_celebahq256", "smoke")
    config.data.data_dir = files["data_dir"]
    config.train.update(
        dict(
            num_steps=workdir_steps,
            batch_size=28,
            log_every=2,
            checkpoint_every=workdir_steps,
            sample_every=workdir_steps,
            eval_every=workdir_steps,
        )
    )
    config.model.update(dict(hidden=32, depth=1, num_heads=2, patch=4, dtype="float32"))
    config.eval.update(
        dict(
            nfes=(1,),
            num_samples=4,  # = grid_size: the decoder compiles one batch shape
            grid_size=4,
            batch_size=4,
            fid_batch_size=4,
            metrics=("fid", "fd_dinov2"),
            fd_dinov2_weights=files["dinov2"],
            fid_weights=files["inception"],
            vae_weights=files["vae"],
        )
    )
    return config


def test_preparation_stores_the_vae_moments_of_the_images_and_their_mirrors(files):
    config = {"name": "celebahq256_latents", "data_dir": files["data_dir"], "latent_preset": "sd", "latent_flips": True}
    info = data.dataset_info(config)
    assert info == data.DatasetInfo("celebahq256_latents", (32, 32, 4), 0, 1.0, "sd")
    assert data.num_examples(config, "train") == NUM_IMAGES
    net = vae_lib.AutoencoderKL(vae_lib.TINY)
    x = files["images"].astype(np.float32) / 127.5 - 1
    encode = jax.jit(lambda p, x: net.apply({"params": p}, x, method=net.encode))
    moments, mirrored = np.split(np.asarray(encode(files["params"], np.concatenate([x, x[:, :, ::-1]]))), 2)
    batch = data.reference_data(config, "train", seed=1)["x"]
    # Every row is 0.18215 (mean + std * eps) of either the image or its mirror: the sampled noise
    # is bounded, so the row is within a few stds of one of the two means.
    for row, own, mirror in zip(batch, moments, mirrored):
        candidates = [0.18215 * own[..., :4], 0.18215 * mirror[..., :4]]
        distances = [np.abs(row - c).max() for c in candidates]
        std = 0.18215 * np.exp(0.5 * np.clip(np.concatenate([own, mirror])[..., 4:], -30, 20)).max()
        assert min(distances) <= 6 * std + 1e-4
    # The images are read again, with the same crop, as the reference for FID and FD-DINOv2.
    reread = np.concatenate([b[0] for b in data.iterate_images(config, "train", batch_size=5)])
    np.testing.assert_array_equal(reread, files["images"])
    with pytest.raises(ValueError, match=r"latent_preset='edm2' \(VAE input 0..1\) but .* preset 'sd'"):
        data.dataset_info(dict(config, latent_preset="edm2"))


def test_decoder_inverts_the_preset_and_rounds_like_the_paper(files):
    config = latent_config(files)
    decoder = images_lib.latent_decoder(config.data, config.eval)  # the one training uses (cached)
    assert decoder.vae.config == vae_lib.TINY and decoder.preset == latents.get("sd")
    z = np.random.default_rng(3).standard_normal((4, 32, 32, 4)).astype(np.float32)
    net = vae_lib.AutoencoderKL(vae_lib.TINY)
    expected = np.asarray(jax.jit(lambda p, z: net.apply({"params": p}, z, method=net.decode))(files["params"], z))
    expected = np.clip(np.rint(127.5 * (expected.astype(np.float64) + 1)), 0, 255)
    got = decoder.uint8(0.18215 * z)
    assert got.shape == (4, 256, 256, 3) and got.dtype == np.uint8
    assert np.abs(got.astype(np.int64) - expected).max() <= 1  # float32 rounding at .5 boundaries


def test_train_sample_and_evaluate_in_latent_space(files, tmp_path):
    config = latent_config(files)
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(config, workdir)
    grid = Image.open(os.path.join(workdir, "samples", "step0000004_euler_nfe1.png"))
    assert grid.size == (2 * 257 + 1, 2 * 257 + 1)  # 4 decoded 256 px images, not 32 px latents
    last = [r for r in read_jsonl(workdir) if any(k.endswith("/fid") for k in r)][-1]
    values = {k.rsplit("/", 1)[-1]: v for k, v in last.items() if k.endswith(("/fid", "/fd_dinov2"))}
    assert set(values) == {"fid", "fd_dinov2"} and all(np.isfinite(v) and v > 0 for v in values.values())


def test_the_source_images_score_zero_against_the_reference(files):
    """The reference statistics are those of the images the latents were encoded from."""
    config = latent_config(files)
    evaluator = images_lib.ImageEvaluator(config.data, config.eval)
    fid = evaluator.fid.evaluate_images(files["images"])["fid"]
    fd = evaluator.dino.evaluate(files["images"])["fd_dinov2"]
    assert abs(fid) < 1e-6 * np.trace(evaluator.fid.sigma) and abs(fd) < 1e-6 * np.trace(evaluator.dino.sigma)


def test_missing_vae_weights_fail_before_anything_is_built(files, tmp_path):
    config = latent_config(files)
    config.eval.vae_weights = ""
    with pytest.raises(ValueError, match="set eval.vae_weights to the ft-mse VAE's .*stabilityai/sd-vae-ft-mse"):
        train.train_and_evaluate(config, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run" / "checkpoints")
