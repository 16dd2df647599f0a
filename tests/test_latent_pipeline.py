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

from fewstep_jax import data, modes, train
from fewstep_jax.data import latents, prepare
from fewstep_jax.metrics import images as images_lib
from fewstep_jax.metrics import inception
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
    data_dir = root / "tfds"
    prepare.prepare(
        "celebahq256_latents",
        manual_dir=str(folder),
        data_dir=str(data_dir),
        latent_preset="sd",
        vae_weights=vae_path,
        flip=True,
        shard_size=5,
        batch_size=4,
    )
    return dict(
        root=root,
        images=np.stack(pixels),
        params=params,
        vae=vae_path,
        inception=inception_path,
        data_dir=str(data_dir),
    )


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
            num_samples=6,
            grid_size=4,
            batch_size=6,
            fid_batch_size=6,
            metrics=("fid",),
            fid_weights=files["inception"],
            vae_weights=files["vae"],
        )
    )
    return config


def test_preparation_stores_the_vae_moments_of_the_images_and_their_mirrors(files):
    config = {"name": "celebahq256_latents", "data_dir": files["data_dir"], "latent_preset": "sd", "latent_flips": True}
    info = data.dataset_info(config)
    assert info == data.DatasetInfo("celebahq256_latents", (32, 32, 4), 0, 1.0)
    assert data.num_examples(config, "train") == NUM_IMAGES
    net = vae_lib.AutoencoderKL(vae_lib.TINY)
    x = files["images"].astype(np.float32) / 127.5 - 1
    moments = np.asarray(net.apply({"params": files["params"]}, x, method=net.encode))
    mirrored = np.asarray(net.apply({"params": files["params"]}, x[:, :, ::-1], method=net.encode))
    batch = data.reference_data(config, "train", seed=1)["x"]
    # Every row is 0.18215 (mean + std * eps) of either the image or its mirror: the sampled noise
    # is bounded, so the row is closest to its own moments' mean.
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
    vae = vae_lib.VAE.from_file(files["vae"])
    assert vae.config == vae_lib.TINY
    preset = latents.get("sd")
    decoder = images_lib.LatentDecoder(preset, vae, batch_size=3)
    rng = np.random.default_rng(3)
    z = rng.standard_normal((4, 32, 32, 4)).astype(np.float32)
    net = vae_lib.AutoencoderKL(vae_lib.TINY)
    expected = np.asarray(net.apply({"params": files["params"]}, z, method=net.decode))
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
    evals = [r for r in read_jsonl(workdir) if any(k.endswith("/fid") for k in r)]
    fid = [v for k, v in evals[-1].items() if k.endswith("/fid")]
    assert len(fid) == 1 and np.isfinite(fid[0]) and fid[0] > 0
    table = modes.eval_mode(config, workdir)
    assert "fid" in table


def test_fid_of_the_source_images_against_their_reference_is_zero(files):
    config = latent_config(files)
    evaluator = images_lib.ImageEvaluator(config.data, config.eval)
    own = evaluator.fid.evaluate_images(files["images"])
    assert abs(own["fid"]) < 1e-6 * np.trace(evaluator.fid.sigma)


def test_missing_vae_weights_fail_before_anything_is_built(files, tmp_path):
    config = latent_config(files)
    config.eval.vae_weights = ""
    with pytest.raises(ValueError, match="set eval.vae_weights to the ft-mse VAE's .*stabilityai/sd-vae-ft-mse"):
        train.train_and_evaluate(config, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run" / "checkpoints")
