"""Golden fixtures for the DINOv2 (FD-DINOv2) port, and the script that regenerates them.

The parity tests (tests/test_dinov2.py) run the suite's Flax DINOv2 on shared random weights and
compare its CLS features with those of the reference implementation, facebookresearch/dinov2
(`models/vision_transformer.py`, `layers/*`, built as `hub/backbones.py` builds dinov2_vitl14),
fed through EDM2's preprocessing (`calculate_metrics.py`, DINOv2Detector: antialiased bicubic to
224, / 255, ImageNet mean / std), all in float64 (`.double()`; the reference resamples its position
embeddings in float32 whatever the model's dtype). Both sides build the same random weights from
(seed, parameter name, shape) with `random_state_dict` below, and the input images from a seed,
so only outputs are committed (tests/fixtures/dinov2/golden.npz):

  - the hub state-dict layout of the reduced network and of ViT-L/14;
  - CLS features of the reduced network (dinov2.REDUCED: ViT-L's structure at 64 wide, 4 heads,
    depth 2, position grid 37) on uint8 images of 512, 256 and 64 pixels, and on two sets of 96
    images of 32 pixels, the second half as bright (for the FD-DINOv2 check), and of ViT-L/14 on one 512-pixel image;
  - both resamplings as matrices, read off PyTorch with one-hot inputs: antialiased bicubic
    512 / 256 / 64 / 32 -> 224, and the position-embedding interpolation 37 -> 16 at
    scale_factor 16.1 / 37 (float64, and float32 as the reference runs it);
  - Hugging Face's Dinov2Model (reduced config) loaded by its own from_pretrained from a
    model.safetensors of random weights (same rule) under the names such files hold, on one
    normalized 518-pixel input, where no position interpolation happens: this pins the naming of
    Hugging Face files (query / key / value, layer_scale*.lambda1) that load_params converts.

A small PyTorch file (the reduced network's state dict, float16 to keep it small) is written for
the loader test.

Regenerate (needs PyTorch and transformers; the dinov2 sources are imported from a checkout
outside this repository, never copied into it):

    git clone https://github.com/facebookresearch/dinov2 /tmp/dinov2
    XFORMERS_DISABLED=1 python tests/dinov2_golden.py /tmp/dinov2
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import tempfile
import zlib

import numpy as np

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "dinov2")
GOLDEN = os.path.join(FIXTURES, "golden.npz")
REDUCED_PTH = os.path.join(FIXTURES, "reduced_hub_float16.pth")
SEED = 20230414  # DINOv2's arXiv date
IMAGE_SIZES = (512, 256, 64)
NUM_IMAGES = 2
FD_SIZE, FD_IMAGES = 32, 96
RESIZE_SIZES = (512, 256, 64, 32)
VITL_SIZE = 512
REDUCED = {"embed_dim": 64, "depth": 2, "num_heads": 4}  # = fewstep_jax.metrics.dinov2.REDUCED
HF_SIZE = 518
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

_RESIDUAL_OUTPUTS = ("attn.proj.weight", "attention.output.dense.weight", "mlp.fc2.weight")
_NORMS = ("norm1.weight", "norm2.weight", "norm.weight", "layernorm.weight")
_LAYER_SCALES = ("gamma", "lambda1")
_TOKENS = ("cls_token", "mask_token", "pos_embed", "position_embeddings")


def random_state_dict(shapes: dict[str, tuple[int, ...]], seed: int = SEED) -> dict[str, np.ndarray]:
    """Plausible random DINOv2 weights (hub or Hugging Face names), float32, each tensor a function
    of (seed, name, shape) only: He-normal patch conv and linear weights (the residual branches'
    output layers x 0.2, so the stream does not explode), LayerNorm weights U(0.5, 1.5), biases
    N(0, 0.1), LayerScale U(0.1, 1), and N(0, 1) tokens and position embeddings (as large as the
    patch embeddings, so the position term matters)."""
    out = {}
    for name, shape in sorted(shapes.items()):
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        normal = rng.standard_normal(shape, dtype=np.float32)
        if name.endswith(_TOKENS):
            value = normal
        elif name.endswith(_LAYER_SCALES):
            value = 0.1 + 0.9 * rng.random(shape, dtype=np.float32)
        elif name.endswith(_NORMS):
            value = 0.5 + rng.random(shape, dtype=np.float32)
        elif name.endswith(".bias"):
            value = 0.1 * normal
        elif name.endswith(".weight") and len(shape) in (2, 4):
            value = normal * np.float32(np.sqrt(2.0 / np.prod(shape[1:])))
            if name.endswith(_RESIDUAL_OUTPUTS):
                value *= np.float32(0.2)
        else:
            raise ValueError(f"unexpected DINOv2 parameter {name} {shape}")
        out[name] = value.astype(np.float32)
    return out


def golden_images(size: int, count: int, stream: int = 0) -> np.ndarray:
    """uint8 NHWC RGB images [count, size, size, 3] from the seed: an 8 x 8 grid of random colour
    blocks (sharp edges: they exercise the resampling kernel, and the features differ from image
    to image) plus uniform noise in [-32, 32], clipped."""
    rng = np.random.default_rng([SEED, size, stream])
    blocks = rng.integers(0, 256, (count, 8, 8, 3))
    blocks = np.repeat(np.repeat(blocks, size // 8, axis=1), size // 8, axis=2)
    return np.clip(blocks + rng.integers(-32, 33, (count, size, size, 3)), 0, 255).astype(np.uint8)


def fd_images(stream: int) -> np.ndarray:
    """The two FD-DINOv2 image sets [96, 32, 32, 3]: set 2 is half as bright."""
    images = golden_images(FD_SIZE, FD_IMAGES, stream)
    return images if stream == 1 else images // 2


def hf_input() -> np.ndarray:
    """A normalized NHWC input [1, 518, 518, 3] (float64) for the Hugging Face model."""
    return np.random.default_rng([SEED, HF_SIZE]).standard_normal((1, HF_SIZE, HF_SIZE, 3))


def _reference(src: str):
    """The dinov2 hub builder, with a reduced architecture registered next to vit_large."""
    os.environ.setdefault("XFORMERS_DISABLED", "1")
    sys.path.insert(0, os.path.abspath(src))
    from functools import partial

    from dinov2.hub import backbones
    from dinov2.layers import MemEffAttention, NestedTensorBlock
    from dinov2.models import vision_transformer as vits

    def vit_reduced(patch_size=16, num_register_tokens=0, **kwargs):  # vit_large at 64 wide
        block = partial(NestedTensorBlock, attn_class=MemEffAttention)
        return vits.DinoVisionTransformer(
            patch_size=patch_size,
            mlp_ratio=4,
            block_fn=block,
            num_register_tokens=num_register_tokens,
            **REDUCED,
            **kwargs,
        )

    vits.vit_reduced = vit_reduced
    return backbones


def main() -> None:
    import torch
    import torch.nn.functional as F

    if len(sys.argv) != 2:
        raise SystemExit("usage: python tests/dinov2_golden.py PATH_TO_DINOV2_CHECKOUT")
    src = sys.argv[1]
    backbones = _reference(src)
    torch.set_grad_enabled(False)
    os.makedirs(FIXTURES, exist_ok=True)

    def build(arch: str):
        model = backbones._make_dinov2_model(arch_name=arch, patch_size=14, pretrained=False)
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        model.load_state_dict({k: torch.from_numpy(v) for k, v in random_state_dict(shapes).items()}, strict=True)
        return model.double().eval(), shapes

    def edm2_features(model, images: np.ndarray) -> np.ndarray:
        """EDM2's DINOv2Detector.__call__ ('torch' resize), in float64."""
        x = torch.from_numpy(images).permute(0, 3, 1, 2)
        x = F.interpolate(x.to(torch.float64), size=(224, 224), mode="bicubic", antialias=True)
        x = x / 255
        x = x - torch.tensor(MEAN, dtype=torch.float64).reshape(1, -1, 1, 1)
        x = x / torch.tensor(STD, dtype=torch.float64).reshape(1, -1, 1, 1)
        return model(x).numpy()

    out: dict[str, np.ndarray] = {}
    reduced, shapes = build("vit_reduced")
    out["names"] = np.array(sorted(shapes))
    out["shapes"] = np.array([",".join(map(str, shapes[k])) for k in sorted(shapes)])
    for size in IMAGE_SIZES:
        out[f"features_{size}"] = edm2_features(reduced, golden_images(size, NUM_IMAGES))
    for stream in (1, 2):
        out[f"fd_features_{stream}"] = edm2_features(reduced, fd_images(stream))
    # As a real checkpoint: the model's own state dict (an OrderedDict), here in float16.
    torch.save(collections.OrderedDict((k, v.half()) for k, v in reduced.state_dict().items()), REDUCED_PTH)

    # Resampling operators from one-hot inputs (a width of 2: PyTorch's antialiased kernel treats
    # a width-1 axis differently), rows indexed by output.
    for n in RESIZE_SIZES:
        eye = torch.eye(n, dtype=torch.float64).reshape(n, 1, n, 1).repeat(1, 1, 1, 2)
        rows = F.interpolate(eye, size=(224, 2), mode="bicubic", antialias=True)[:, 0, :, 0].T
        cols = F.interpolate(eye.transpose(2, 3), size=(2, 224), mode="bicubic", antialias=True)[:, 0, 0, :].T
        assert torch.equal(rows, cols)
        out[f"resize_{n}"] = rows.numpy()
    for dtype in (torch.float64, torch.float32):
        eye = torch.eye(37, dtype=dtype).reshape(37, 1, 37, 1).repeat(1, 1, 1, 2)
        pos = F.interpolate(eye, scale_factor=(16.1 / 37, 1.0), mode="bicubic", align_corners=False)
        out[f"pos_{str(dtype).split('.')[1]}"] = pos[:, 0, :, 0].T.numpy()

    # Hugging Face's Dinov2Model: its own names, no position interpolation at 518 pixels.
    from safetensors import safe_open
    from safetensors.numpy import save_file
    from transformers import Dinov2Config, Dinov2Model

    hf_config = Dinov2Config(
        hidden_size=REDUCED["embed_dim"],
        num_hidden_layers=REDUCED["depth"],
        num_attention_heads=REDUCED["num_heads"],
        mlp_ratio=4,
        image_size=518,
        patch_size=14,
        layerscale_value=1.0,
        layer_norm_eps=1e-6,
        hidden_act="gelu",
        qkv_bias=True,
        use_swiglu_ffn=False,
        attn_implementation="eager",
    )
    with tempfile.TemporaryDirectory() as tmp:
        # The names a saved model.safetensors holds (transformers >= 5 renames some on load and back
        # on save; the files on the Hub, facebook/dinov2-large included, carry these).
        Dinov2Model(hf_config).save_pretrained(tmp)
        path = os.path.join(tmp, "model.safetensors")
        with safe_open(path, framework="np") as f:
            hf_shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        save_file(random_state_dict(hf_shapes), path, metadata={"format": "pt"})
        hf, info = Dinov2Model.from_pretrained(tmp, attn_implementation="eager", output_loading_info=True)
        assert not any(info.values()), info
    hf = hf.double().eval()
    x = torch.from_numpy(hf_input()).permute(0, 3, 1, 2)
    out["hf_features"] = hf(pixel_values=x).last_hidden_state[:, 0].numpy()
    out["hf_names"] = np.array(sorted(hf_shapes))
    out["hf_shapes"] = np.array([",".join(map(str, hf_shapes[k])) for k in sorted(hf_shapes)])

    # ViT-L/14 exactly as torch.hub builds it (random weights), on one image.
    vitl, vitl_shapes = build("vit_large")
    out["vitl_names"] = np.array(sorted(vitl_shapes))
    out["vitl_shapes"] = np.array([",".join(map(str, vitl_shapes[k])) for k in sorted(vitl_shapes)])
    out["vitl_features"] = edm2_features(vitl, golden_images(VITL_SIZE, 1, stream=3))

    try:
        commit = subprocess.run(["git", "-C", src, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    out["reference"] = np.array(f"facebookresearch/dinov2 {commit or 'unknown commit'}, torch {torch.__version__}")
    np.savez_compressed(GOLDEN, **out)
    print(f"wrote {GOLDEN} and {REDUCED_PTH} ({out['reference']})")


if __name__ == "__main__":
    main()
