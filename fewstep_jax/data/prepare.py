"""Prepare a real dataset from the user's files (no TensorFlow needed):

    python -m fewstep_jax.data.prepare --dataset=cifar10 --manual_dir=DIR [--data_dir=DIR] [--download]
    python -m fewstep_jax.data.prepare --dataset=imagenet64 --manual_dir=DIR [--num_workers=32]
    python -m fewstep_jax.data.prepare --dataset=celebahq256 --manual_dir=IMAGE_FOLDER
    python -m fewstep_jax.data.prepare --dataset=imagenet256_latents --manual_dir=SHARDS --latent_scale=0.18215

What goes in --manual_dir: sources.py (`expects`) and formats.py. --data_dir defaults to
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

from fewstep_jax.data import formats, sources

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
        found = os.path.isdir(manual_dir) and any(n.endswith(".npz") for n in os.listdir(manual_dir))
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
    latent_scale: float | None = None,
) -> str:
    """Prepares dataset `name` into data_dir; returns the prepared folder DATA_DIR/<builder>/<version>.

    num_workers: decoding / resizing / encoding threads (0: one per CPU). latent_scale: the VAE's
    scale factor, recorded with latent datasets (required for them, unused otherwise).
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
    if dataset.is_latent:
        if latent_scale is None:
            raise ValueError(
                f"{name} needs --latent_scale, the VAE's scale factor (0.18215 for the Stable Diffusion VAE)"
            )
        kwargs.update(shards=formats.scan_latent_shards(manual_dir), latent_scale=latent_scale)
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
    return builder.data_dir


def define_flags() -> None:
    """The command-line flags (defined only when run as a program: no side effects at import)."""
    flags.DEFINE_enum("dataset", None, list(sources.DATASETS), "Which dataset to prepare.")
    flags.DEFINE_string("manual_dir", None, "Folder with the user's files (default DATA_DIR/downloads/manual).")
    flags.DEFINE_string(
        "data_dir", None, "Where prepared datasets live (default $TFDS_DATA_DIR or ~/tensorflow_datasets)."
    )
    flags.DEFINE_bool("download", False, "Fetch the files from the official URL first (CIFAR-10 only).")
    flags.DEFINE_integer("num_workers", 0, "Threads that decode / resize / encode images (0: one per CPU).")
    flags.DEFINE_float(
        "latent_scale", None, "Latent datasets: the VAE's scale factor (0.18215 for Stable Diffusion's)."
    )


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
            latent_scale=FLAGS.latent_scale,
        )
    except (ValueError, OSError) as error:  # user errors (missing or bad files): one line, no traceback
        sys.exit(f"error: {error}")
    print(path)


if __name__ == "__main__":
    define_flags()
    flags.mark_flag_as_required("dataset")
    app.run(main)
