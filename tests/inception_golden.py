"""Golden fixtures for the FID Inception port, and the script that regenerates them.

The parity test (tests/test_fid.py) runs the suite's Flax Inception-v3 on shared random weights
and compares its features with those of an independent implementation of the same network,
torch-fidelity's FeatureExtractorInceptionV3 (PyTorch, TF1-compatible resize), computed in
float64. The real weights are never needed: both sides build the same random state dict from
(seed, parameter name, shape) with `random_state_dict` below, so only the inputs and the
reference outputs are committed (tests/fixtures/inception_golden.npz, about 100 KB). Small
`torch.save` files in both on-disk formats are written for the torch-free reader as well.

Regenerate (needs PyTorch and torch-fidelity; torchvision is not needed):

    python -m venv /tmp/ref && /tmp/ref/bin/pip install torch numpy
    /tmp/ref/bin/pip install --no-deps torch-fidelity
    /tmp/ref/bin/python tests/inception_golden.py
"""

from __future__ import annotations

import collections
import importlib
import os
import sys
import types
import zlib

import numpy as np

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
GOLDEN = os.path.join(FIXTURES, "inception_golden.npz")
SEED = 20151205
IMAGE_SIZES = ((32, 32), (64, 48))  # a CIFAR-sized batch and a non-square one (exercise the resize)
NUM_IMAGES = 3


def random_state_dict(shapes: dict[str, tuple[int, ...]], seed: int = SEED) -> dict[str, np.ndarray]:
    """A plausible random Inception state dict: He-normal convolutions, BatchNorm statistics and
    affine terms near their identity values, so activations neither vanish nor explode over the
    ~95 layers. Each tensor depends only on (seed, name, shape)."""
    out = {}
    for name, shape in sorted(shapes.items()):
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        if name.endswith("conv.weight"):
            fan_in = int(np.prod(shape[1:]))
            value = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        elif name.endswith(("bn.weight", "bn.running_var")):
            value = rng.uniform(0.5, 1.5, shape)
        elif name.endswith(("bn.bias", "bn.running_mean", "fc.bias")):
            value = rng.normal(0.0, 0.1, shape)
        elif name == "fc.weight":
            value = rng.normal(0.0, np.sqrt(1.0 / shape[1]), shape)
        else:
            raise ValueError(f"unexpected Inception parameter {name}")
        out[name] = value.astype(np.float32)
    return out


def golden_images() -> list[np.ndarray]:
    """The uint8 NHWC input batches, one per size in IMAGE_SIZES."""
    rng = np.random.default_rng(SEED)
    return [rng.integers(0, 256, (NUM_IMAGES, h, w, 3), dtype=np.uint8) for h, w in IMAGE_SIZES]


def reader_arrays() -> dict[str, np.ndarray]:
    """Tensors of several dtypes, a 0-d tensor, an empty one and two views of one storage."""
    rng = np.random.default_rng(7)
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    return {
        "conv.weight": rng.normal(size=(3, 2, 5, 5)).astype(np.float32),
        "double": rng.normal(size=(7,)),
        "half": rng.normal(size=(4,)).astype(np.float16),
        "int32": np.arange(5, dtype=np.int32),
        "count": np.array(12, np.int64),
        "scalar": np.array(3.5, np.float32),
        "empty": np.zeros((0, 3), np.float32),
        "strided_view": base[:, 1:5:2],
        "transposed": base.T,
    }


def _load_torch_fidelity():
    """torch-fidelity's Inception module, imported without the package's torchvision imports."""
    spec = importlib.util.find_spec("torch_fidelity")
    if spec is None:
        raise SystemExit("needs torch-fidelity: pip install --no-deps torch-fidelity")
    package = types.ModuleType("torch_fidelity")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["torch_fidelity"] = package
    return importlib.import_module("torch_fidelity.feature_extractor_inceptionv3")


def main() -> None:
    import tempfile

    import torch
    import torch.nn.functional as F

    os.makedirs(FIXTURES, exist_ok=True)
    reference = _load_torch_fidelity()

    with tempfile.TemporaryDirectory() as tmp:
        # The reference network's own parameter names and shapes drive the random weights: build
        # it once without loading anything to read its layout, then with the random weights.
        class Layout(reference.FeatureExtractorInceptionV3):
            def load_state_dict(self, state_dict, *args, **kwargs):
                return None

        empty = os.path.join(tmp, "empty.pth")
        torch.save({}, empty)
        layout = Layout("layout", ["2048"], feature_extractor_weights_path=empty).state_dict()
        shapes = {k: tuple(v.shape) for k, v in layout.items() if not k.endswith("num_batches_tracked")}
        path = os.path.join(tmp, "weights.pth")
        torch.save({k: torch.from_numpy(v) for k, v in random_state_dict(shapes).items()}, path)
        net = reference.FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=path,
            feature_extractor_internal_dtype="float64",
        ).eval()

    out: dict[str, np.ndarray] = {
        "names": np.array(sorted(shapes)),
        "shapes": np.array([",".join(map(str, shapes[k])) for k in sorted(shapes)]),
    }
    for i, images in enumerate(golden_images()):
        with torch.no_grad():
            pool3, logits = net(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
        out[f"images_{i}"] = images
        out[f"pool3_{i}"] = pool3.numpy()
        out[f"logits_{i}"] = logits.numpy()

    # Resize references: TF1-style (torch-fidelity) and PyTorch half-pixel bilinear.
    rng = np.random.default_rng(1)
    small = rng.uniform(0, 255, (1, 3, 7, 5))
    out["resize_input"] = small
    with torch.no_grad():
        t = torch.from_numpy(small)
        out["resize_tf1"] = reference.interpolate_bilinear_2d_like_tensorflow1x(
            t, size=(19, 11), align_corners=False
        ).numpy()
        out["resize_pytorch"] = F.interpolate(t, size=(19, 11), mode="bilinear", align_corners=False).numpy()
    np.savez_compressed(GOLDEN, **out)

    # Reader fixtures: the same tensors saved in the zip and the legacy format.
    arrays = reader_arrays()
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    views = ("strided_view", "transposed")
    state = collections.OrderedDict(
        (k, torch.from_numpy(np.array(v, order="C"))) for k, v in arrays.items() if k not in views
    )
    state["strided_view"] = base[:, 1:5:2]  # views share one storage, as in real checkpoints
    state["transposed"] = base.t()
    torch.save(state, os.path.join(FIXTURES, "state_dict_zip.pth"))
    torch.save(state, os.path.join(FIXTURES, "state_dict_legacy.pth"), _use_new_zipfile_serialization=False)
    print(f"wrote {GOLDEN} and the reader fixtures (torch {torch.__version__})")


if __name__ == "__main__":
    main()
