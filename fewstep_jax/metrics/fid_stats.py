"""FID reference statistics of a prepared dataset, saved as .npz (keys mu, sigma, meta).

  python -m fewstep_jax.metrics.fid_stats --dataset=cifar10 [--data_dir=DIR] [--split=train] \
      [--weights=PATH_OR_URL] [--resize=tf1] [--limit=N] [--out=cifar10_train.npz]

Without --out the file goes to the suite's cache, where `--mode=eval` and training-time FID
find it (eval.fid_stats='' looks there). The weights default to the cached
pt_inception-2015-12-05 file (see fewstep_jax.metrics.inception).
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

flags.DEFINE_string("dataset", None, "Prepared image dataset: cifar10, imagenet64 or celebahq256.")
flags.DEFINE_string("data_dir", "", "Where the dataset was prepared ('' = the default tfds data dir).")
flags.DEFINE_string("split", "train", "Dataset split.")
flags.DEFINE_string("weights", "", "Inception weights: path, URL, or '' for the cached file.")
flags.DEFINE_enum("resize", "tf1", ["tf1", "pytorch"], "Resize to 299x299: TF1 legacy or half-pixel.")
flags.DEFINE_integer("limit", 0, "Use only the first N images (0 = all).")
flags.DEFINE_integer("batch_size", 250, "Images per Inception batch.")
flags.DEFINE_string("out", None, "Output .npz ('' or unset = the cache).")
flags.mark_flag_as_required("dataset")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from fewstep_jax import data as data_lib
    from fewstep_jax import metrics
    from fewstep_jax.metrics import fid, inception

    logging.set_verbosity(logging.INFO)
    data_cfg = {"name": FLAGS.dataset, "conditional": False}
    if FLAGS.data_dir:
        data_cfg["data_dir"] = FLAGS.data_dir
    try:
        data_lib.validate(data_cfg)
        if FLAGS.dataset not in metrics.FID_DATASETS:
            raise ValueError(f"FID statistics need an image dataset, one of {metrics.FID_DATASETS}")
        extractor = fid.InceptionExtractor(
            inception.load_params(FLAGS.weights), resize=FLAGS.resize, batch_size=FLAGS.batch_size
        )
        limit, out = FLAGS.limit or None, FLAGS.out or None
        path, _ = fid.dataset_stats(data_cfg, extractor, split=FLAGS.split, limit=limit, out=out)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    app.run(main)
