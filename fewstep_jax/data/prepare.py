"""Prepare a real dataset from the user's files (no TensorFlow needed):

    python -m fewstep_jax.data.prepare --dataset=cifar10 --manual_dir=DIR [--data_dir=DIR] [--download]
    python -m fewstep_jax.data.prepare --dataset=imagenet64 --manual_dir=DIR [--num_workers=32]
    python -m fewstep_jax.data.prepare --dataset=celebahq256 --manual_dir=IMAGE_FOLDER
    python -m fewstep_jax.data.prepare --dataset=imagenet256_latents --manual_dir=IMAGENET \
        --vae_weights=diffusion_pytorch_model.safetensors --latent_preset=sd [--flip]
    python -m fewstep_jax.data.prepare --dataset=imagenet512_latents --manual_dir=EDM2_STORE.zip --latent_preset=edm2

What goes in --manual_dir: sources.py (`expects`) and formats.py. A latent dataset is made from
images (encoded here with the VAE of --vae_weights, resumable: data/encode.py), from an EDM2-style
store of (mean, std) arrays, or from latent shards; --latent_preset (data/latents.py) names the
normalization, which training configs must repeat (data.latent_preset). --data_dir defaults to
$TFDS_DATA_DIR, else ~/tensorflow_datasets; training reads the same folder (data.data_dir).
--manual_dir defaults to DATA_DIR/downloads/manual. --download fetches CIFAR-10 from its
official URL into the manual folder (checked against the published MD5); the other datasets
have no public download. A dataset already prepared is left as it is: delete its folder
(DATA_DIR/<builder>/) to prepare it again.
"""

from __future__ import annotations

import os
import sys
import time
import urllib.request

from absl import app, flags, logging

from fewstep_jax.data import encode, formats, latents, sources

FLAGS = flags.FLAGS


def _check_manual(dataset: sources.RealDataset, manual_dir: str) -> None:
    """Raises FileNotFoundError naming the missing file(s) before anything is written."""
    if dataset.name == "cifar10":
        found = os.path.isfile(os.path.join(manual_dir, sources.CIFAR10_FILE))
    elif dataset.name == "imagenet64":
        found = formats.imagenet_source(manual_dir, "train") is not None
    elif dataset.name == "celebahq256":
        found = os.path.isdir(manual_dir) and bool(formats.image_files(manual_dir))
    else:
        found = os.path.exists(manual_dir)
    if not found:
        raise FileNotFoundError(
            f"{manual_dir} does not hold what {dataset.name} is prepared from: put {dataset.expects} there"
            + (f", or add --download to fetch {dataset.download_url}" if dataset.download_url else "")
        )


def download_cifar10(manual_dir: str) -> str:
    """Fetches cifar-10-python.tar.gz from the official URL into manual_dir (kept if already there)."""
    target = os.path.join(manual_dir, sources.CIFAR10_FILE)
    if os.path.isfile(target):
        logging.info("%s is already there; not downloading", target)
        return target
    os.makedirs(manual_dir, exist_ok=True)
    partial = target + ".part"
    last = [-1]

    def report(blocks: int, block_size: int, total: int) -> None:
        percent = min(100, blocks * block_size * 100 // max(total, 1))
        if percent // 10 != last[0]:
            last[0] = percent // 10
            logging.info("downloading %s: %d%%", sources.CIFAR10_URL, percent)

    urllib.request.urlretrieve(sources.CIFAR10_URL, partial, reporthook=report)
    if formats.file_md5(partial) != sources.CIFAR10_MD5:
        os.remove(partial)
        raise OSError(f"{sources.CIFAR10_URL} did not match the published MD5 {sources.CIFAR10_MD5}")
    os.replace(partial, target)
    return target


def prepare(
    name: str,
    *,
    manual_dir: str | None = None,
    data_dir: str | None = None,
    download: bool = False,
    num_workers: int = 0,
    latent_preset: str | None = None,
    vae_weights: str | None = None,
    flip: bool = False,
    batch_size: int = 64,
    shard_size: int = 4096,
    keep_shards: bool = False,
) -> str:
    """Prepares dataset `name` into data_dir; returns the prepared folder DATA_DIR/<builder>/<version>.

    num_workers: decoding / resizing / encoding threads (0: one per CPU). Latent datasets only:
    latent_preset (required), vae_weights (required to encode images), flip (also encode the
    mirrored images), batch_size (images per VAE call), shard_size (images per resumable shard),
    keep_shards (keep the encoded shards once the dataset is built; they are deleted otherwise).
    """
    import tensorflow_datasets as tfds  # the preparation path only

    from fewstep_jax.data import builders

    dataset = sources.get(name)
    data_dir = sources.resolve_data_dir(data_dir)
    manual_dir = os.path.abspath(os.path.expanduser(manual_dir or os.path.join(data_dir, "downloads", "manual")))
    if download:
        if dataset.download_url is None:
            raise ValueError(f"{name} has no public download: put {dataset.expects} in --manual_dir")
        download_cifar10(manual_dir)
    _check_manual(dataset, manual_dir)
    kwargs = dict(data_dir=data_dir, num_workers=num_workers)
    work = None
    if dataset.is_latent:
        if os.path.isfile(os.path.join(sources.prepared_dir(dataset, data_dir), "dataset_info.json")):
            logging.info("%s is already prepared in %s", name, sources.prepared_dir(dataset, data_dir))
            return sources.prepared_dir(dataset, data_dir)
        if latent_preset is None:
            raise ValueError(
                f"{name} needs --latent_preset, one of {', '.join(latents.PRESETS)} "
                "(sd: DiT, SiT, shortcut models, MeanFlow; edm2: EDM2; scm: sCM; imf: improved MeanFlow)"
            )
        preset = latents.get(latent_preset)
        work, provenance = _latent_shards(
            dataset, manual_dir, data_dir, preset, vae_weights=vae_weights, flip=flip, batch_size=batch_size,
            shard_size=shard_size, num_workers=num_workers,
        )
        kwargs.update(shards=formats.scan_latent_shards(work), latent_preset=preset.name, provenance=provenance)
    builder = builders.BUILDERS[name](**kwargs)
    if builder.is_prepared():
        logging.info("%s is already prepared in %s", name, builder.data_dir)
        return builder.data_dir
    start = time.perf_counter()
    logging.info("preparing %s from %s into %s", name, manual_dir, data_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False)
    )
    counts = ", ".join(f"{split} {info.num_examples}" for split, info in sorted(builder.info.splits.items()))
    logging.info(
        "prepared %s in %s (%s examples) in %.0f s", name, builder.data_dir, counts, time.perf_counter() - start
    )
    if work is not None and work != manual_dir and not keep_shards:
        import shutil

        shutil.rmtree(work)
        logging.info("deleted the encoded shards in %s (--keep_shards keeps them)", work)
    return builder.data_dir


def _latent_shards(
    dataset: sources.RealDataset, manual_dir: str, data_dir: str, preset: latents.Preset, *, vae_weights: str | None,
    flip: bool, batch_size: int, shard_size: int, num_workers: int,
) -> tuple[str, dict]:
    """The folder of latent shards a latent dataset is built from, and how they were made:
    manual_dir itself when it holds shards; else converted from an EDM2-style store, or encoded
    from the images with the VAE of vae_weights."""
    shards = os.path.isdir(manual_dir) and any(n.endswith(".npz") for n in os.listdir(manual_dir))
    store = not shards and encode.is_mean_std_store(manual_dir)
    if (shards or store) and flip:
        raise ValueError(
            f"--flip encodes mirrored images, but {manual_dir} holds latents already: drop --flip, or "
            "prepare from the images"
        )
    if shards:
        return manual_dir, dict(source="latent shards", source_dir=manual_dir)
    if store:
        work = os.path.join(data_dir, dataset.builder, "import")
        if os.path.isdir(work):
            import shutil

            shutil.rmtree(work)  # a conversion is cheap: never resume a partial one
        logging.info("converting the (mean, std) store %s into moment shards in %s", manual_dir, work)
        encode.store_to_shards(manual_dir, work, shard_size=shard_size)
        return work, dict(source="EDM2-style (mean, std) store", source_dir=manual_dir)
    if not vae_weights:
        raise ValueError(
            f"{manual_dir} holds images: encoding them needs --vae_weights, the Stable Diffusion VAE file "
            "(diffusion_pytorch_model.safetensors from stabilityai/sd-vae-ft-mse on Hugging Face)"
        )
    from fewstep_jax.models import vae as vae_lib  # the encoding path only

    encoder = vae_lib.VAE.from_file(vae_weights)
    items, total = encode.image_items(dataset, manual_dir)
    size = dataset.image_size
    work = encode.work_dir(data_dir, dataset, preset.name, flip)
    logging.info("encoding %s images (ADM center crop %d) from %s into %s", dataset.name, size, manual_dir, work)
    encode.encode_images(
        items, encoder=encoder, preset=preset, folder=work, size=size, flip=flip,
        labelled=dataset.num_classes > 0, total=total, shard_size=shard_size, batch_size=batch_size,
        num_workers=num_workers, settings=dict(source_dir=manual_dir),
    )
    provenance = dict(
        source="images", source_dir=manual_dir, image_size=size, crop="adm_center_crop", flip=bool(flip),
        vae_fingerprint=encoder.fingerprint, vae_weights=os.path.abspath(vae_weights),
    )
    return work, provenance


def define_flags() -> None:
    """The command-line flags (defined only when run as a program: no side effects at import)."""
    flags.DEFINE_enum("dataset", None, list(sources.DATASETS), "Which dataset to prepare.")
    flags.DEFINE_string("manual_dir", None, "Folder with the user's files (default DATA_DIR/downloads/manual).")
    flags.DEFINE_string(
        "data_dir", None, "Where prepared datasets live (default $TFDS_DATA_DIR or ~/tensorflow_datasets)."
    )
    flags.DEFINE_bool("download", False, "Fetch the files from the official URL first (CIFAR-10 only).")
    flags.DEFINE_integer("num_workers", 0, "Threads that decode / resize / encode images (0: one per CPU).")
    flags.DEFINE_enum(
        "latent_preset", None, list(latents.PRESETS), "Latent datasets: the latent normalization (data/latents.py)."
    )
    flags.DEFINE_string("vae_weights", None, "Latent datasets from images: the VAE weights file (safetensors).")
    flags.DEFINE_bool("flip", False, "Latent datasets from images: also encode the mirrored images.")
    flags.DEFINE_integer("batch_size", 64, "Latent datasets from images: images per VAE call.")
    flags.DEFINE_integer("shard_size", 4096, "Latent datasets: images per shard (the unit of resuming).")
    flags.DEFINE_bool("keep_shards", False, "Latent datasets: keep the encoded shards after building.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        path = prepare(
            FLAGS.dataset,
            manual_dir=FLAGS.manual_dir,
            data_dir=FLAGS.data_dir,
            download=FLAGS.download,
            num_workers=FLAGS.num_workers,
            latent_preset=FLAGS.latent_preset,
            vae_weights=FLAGS.vae_weights,
            flip=FLAGS.flip,
            batch_size=FLAGS.batch_size,
            shard_size=FLAGS.shard_size,
            keep_shards=FLAGS.keep_shards,
        )
    except (ValueError, OSError) as error:  # user errors (missing or bad files): one line, no traceback
        sys.exit(f"error: {error}")
    print(path)


if __name__ == "__main__":
    define_flags()
    flags.mark_flag_as_required("dataset")
    app.run(main)
