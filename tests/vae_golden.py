"""Golden fixtures for the Flax AutoencoderKL (fewstep_jax/models/vae.py), and the script that
regenerates them.

Reference: diffusers' PyTorch `AutoencoderKL` (models/autoencoders/autoencoder_kl.py) with the
classic attention processor (`AttnProcessor`), run in float64 (its softmax "upcast" is switched
off: diffusers upcasts with `.float()`, which would round float64 scores down to float32). Both
sides build the same random weights from (seed, parameter name, shape) with `random_state_dict`
below (plain numpy, so the tests rebuild identical tensors without PyTorch):

    rng = np.random.default_rng([seed, zlib.crc32(name)])      # name: diffusers' current spelling
    conv / linear weights: N(0, 2 / fan_in) (He normal; fan_in = in * kh * kw),
        times 0.2 for residual-branch outputs (resnets.*.conv2, attentions.0.to_out.0) and
        times 0.1 for quant_conv (keeps the log-variance well inside the [-30, 20] clamp);
    GroupNorm weights U(0.5, 1.5); every bias N(0, 0.1);
    rounded to float32 (the float64 runs on both sides use exactly these values).

Written to tests/fixtures/vae/:
  golden.npz               inputs and float64 reference outputs (NHWC): for images x (U(-1, 1),
                           [2, 3, 32, 32], [1, 3, 24, 40] and an odd [1, 3, 18, 30]) the moments,
                           the posterior's mean / logvar / std, decode(mean) and four block outputs
                           (encoder.down_blocks.1, encoder.mid_block, decoder.mid_block,
                           decoder.up_blocks.1); for latents z [2, 4, 4, 4] decode(z) and the decoder
                           blocks; the posterior of moments outside the clamp range; the state-dict
                           layout (names, shapes) of the reduced and of the full kl-f8 network; and
                           moments / decode of the full-size network on one 16x16 image (its weights
                           are not committed: the test regenerates them from the rule above);
  tiny_current.safetensors the reduced network's weights as diffusers' save_pretrained writes them
                           (to_q / to_k / to_v / to_out.0);
  tiny_legacy.safetensors  the same in the legacy spelling of the sd-vae-ft-* Hub files
                           (query / key / value / proj_attn);
  tiny_ldm.ckpt            the same in the original LDM layout (torch.save of {'state_dict': ...}
                           with 1x1-conv attention weights, decoder levels numbered from the output
                           side, and the `loss.*` / `model_ema.*` extras of LDM checkpoints). The
                           names come from the documented mapping, reversed here, and are checked
                           against diffusers' own LDM converter (convert_ldm_vae_checkpoint).

Regenerate (needs torch and diffusers; CPU is enough, about a minute):

    python -m venv /tmp/ref && /tmp/ref/bin/pip install torch diffusers safetensors numpy
    /tmp/ref/bin/python tests/vae_golden.py
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import zlib

import numpy as np

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "vae")
GOLDEN = os.path.join(FIXTURES, "golden.npz")
SEED = 20221220
#: diffusers AutoencoderKL arguments of the reduced network (= fewstep_jax.models.vae.TINY) and kl-f8.
TINY = dict(block_out_channels=(4, 8, 12, 12), norm_num_groups=2)
FULL = dict(block_out_channels=(128, 256, 512, 512), norm_num_groups=32)
IMAGE_SHAPES = ((2, 3, 32, 32), (1, 3, 24, 40), (1, 3, 18, 30))  # NCHW; the last one has odd sizes
LATENT_SHAPE = (2, 4, 4, 4)
FULL_IMAGE_SHAPE = (1, 3, 16, 16)
ENCODER_BLOCKS = ("encoder.down_blocks.1", "encoder.mid_block")
DECODER_BLOCKS = ("decoder.mid_block", "decoder.up_blocks.1")
#: LDM checkpoint entries that are not VAE weights (the loader ignores them).
LDM_EXTRAS = {
    "loss.logvar": np.zeros((), np.float32),
    "loss.discriminator.main.0.weight": np.ones((2, 3, 4, 4), np.float32),
    "model_ema.decay": np.array(0.9999, np.float32),
    "model_ema.num_updates": np.array(840000, np.int32),
}


def random_state_dict(shapes: dict[str, tuple[int, ...]], seed: int = SEED) -> dict[str, np.ndarray]:
    """Random AutoencoderKL weights keyed by diffusers' current names (rule in the module doc)."""
    out = {}
    for name, shape in sorted(shapes.items()):
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        if name.endswith(".bias"):
            value = rng.normal(0.0, 0.1, shape)
        elif len(shape) == 1:  # GroupNorm weight
            value = rng.uniform(0.5, 1.5, shape)
        elif len(shape) in (2, 4):
            value = rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[1:])), shape)
            if re.search(r"resnets\.\d+\.conv2\.weight$|attentions\.0\.to_out\.0\.weight$", name):
                value *= 0.2
            elif name == "quant_conv.weight":
                value *= 0.1
        else:
            raise ValueError(f"unexpected AutoencoderKL parameter {name} {shape}")
        out[name] = value.astype(np.float32)
    return out


def layout(npz: dict[str, np.ndarray], prefix: str) -> dict[str, tuple[int, ...]]:
    """The {name: shape} stored under `prefix` in golden.npz."""
    names, shapes = npz[f"{prefix}_names"], npz[f"{prefix}_shapes"]
    return {str(n): tuple(int(d) for d in str(s).split(",")) for n, s in zip(names, shapes)}


def golden_inputs() -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """(images NCHW in U(-1, 1) per IMAGE_SHAPES, latents z [2, 4, 4, 4], the full-size image)."""
    rng = np.random.default_rng(SEED)
    images = [rng.uniform(-1.0, 1.0, shape) for shape in IMAGE_SHAPES]
    return images, rng.normal(0.0, 2.0, LATENT_SHAPE), rng.uniform(-1.0, 1.0, FULL_IMAGE_SHAPE)


def diffusers_to_ldm(name: str, num_levels: int) -> str:
    """diffusers' current name -> the original LDM name (the mapping of docs LATENTS sec. 2, reversed)."""
    attention = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    side, _, rest = name.partition(".")
    if m := re.fullmatch(r"(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(weight|bias)", rest):
        level = int(m[2]) if m[1] == "down" else num_levels - 1 - int(m[2])
        layer = "nin_shortcut" if m[4] == "conv_shortcut" else m[4]
        return f"{side}.{m[1]}.{level}.block.{m[3]}.{layer}.{m[5]}"
    if m := re.fullmatch(r"(down|up)_blocks\.(\d+)\.(down|up)samplers\.0\.conv\.(weight|bias)", rest):
        level = int(m[2]) if m[1] == "down" else num_levels - 1 - int(m[2])
        return f"{side}.{m[1]}.{level}.{m[3]}sample.conv.{m[4]}"
    if m := re.fullmatch(r"mid_block\.resnets\.([01])\.(\w+)\.(weight|bias)", rest):
        layer = "nin_shortcut" if m[2] == "conv_shortcut" else m[2]
        return f"{side}.mid.block_{int(m[1]) + 1}.{layer}.{m[3]}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(weight|bias)", rest):
        return f"{side}.mid.attn_1.{attention[m[1]]}.{m[2]}"
    if m := re.fullmatch(r"conv_norm_out\.(weight|bias)", rest):
        return f"{side}.norm_out.{m[1]}"
    return name


def legacy(name: str) -> str:
    """diffusers' current attention names -> the legacy ones (query / key / value / proj_attn)."""
    for new, old in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
        name = name.replace(f"attentions.0.{new}.", f"attentions.0.{old}.")
    return name


def main() -> None:
    import safetensors.torch
    import torch
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
    from diffusers.models.attention_processor import Attention, AttnProcessor

    torch.manual_seed(0)
    os.makedirs(FIXTURES, exist_ok=True)

    def build(config: dict) -> tuple[AutoencoderKL, dict[str, np.ndarray]]:
        levels = len(config["block_out_channels"])
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            layers_per_block=2,
            act_fn="silu",
            down_block_types=("DownEncoderBlock2D",) * levels,
            up_block_types=("UpDecoderBlock2D",) * levels,
            **config,
        )
        vae.set_attn_processor(AttnProcessor())
        for module in vae.modules():
            if isinstance(module, Attention):
                # upcast_softmax means `.float()`, which in a float64 run would round the attention
                # scores to float32; float64 already is the upcast, so keep it.
                module.upcast_softmax = False
        shapes = {k: tuple(v.shape) for k, v in vae.state_dict().items()}
        weights = random_state_dict(shapes)
        vae.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
        return vae.double().eval(), weights

    def nhwc(t: torch.Tensor) -> np.ndarray:
        return t.detach().numpy().transpose(0, 2, 3, 1).copy()

    def record(vae: AutoencoderKL, blocks: tuple[str, ...]) -> tuple[dict[str, np.ndarray], list]:
        seen: dict[str, np.ndarray] = {}
        modules = dict(vae.named_modules())
        hooks = [
            modules[b].register_forward_hook(lambda _m, _i, out, b=b: seen.__setitem__(b, nhwc(out))) for b in blocks
        ]
        return seen, hooks

    out: dict[str, np.ndarray] = {}
    images, latents, full_image = golden_inputs()
    vae, weights = build(TINY)
    levels = len(TINY["block_out_channels"])
    with torch.no_grad():
        for i, x in enumerate(images):
            seen, hooks = record(vae, ENCODER_BLOCKS + DECODER_BLOCKS)
            moments = vae.quant_conv(vae.encoder(torch.from_numpy(x)))
            dist = vae.encode(torch.from_numpy(x)).latent_dist
            decoded = vae.decode(dist.mode()).sample
            for h in hooks:
                h.remove()
            out[f"x{i}"] = x.transpose(0, 2, 3, 1).copy()
            out[f"x{i}_moments"] = nhwc(moments)
            for key in ("mean", "logvar", "std"):
                out[f"x{i}_{key}"] = nhwc(getattr(dist, key))
            out[f"x{i}_decode"] = nhwc(decoded)
            for block in ENCODER_BLOCKS + DECODER_BLOCKS:
                out[f"x{i}_{block}"] = seen[block]
        seen, hooks = record(vae, DECODER_BLOCKS)
        out["z"] = latents.transpose(0, 2, 3, 1).copy()
        out["z_decode"] = nhwc(vae.decode(torch.from_numpy(latents)).sample)
        for h in hooks:
            h.remove()
        for block in DECODER_BLOCKS:
            out[f"z_{block}"] = seen[block]

        # The posterior's clamp: log-variances beyond [-30, 20] on both sides.
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        rng = np.random.default_rng(SEED + 1)
        wide = np.concatenate([rng.normal(0, 3, (2, 4, 3, 3)), rng.uniform(-60, 40, (2, 4, 3, 3))], axis=1)
        dist = DiagonalGaussianDistribution(torch.from_numpy(wide))
        out["clamp_moments"] = wide.transpose(0, 2, 3, 1).copy()
        for key in ("mean", "logvar", "std"):
            out[f"clamp_{key}"] = nhwc(getattr(dist, key))

    for prefix, model_weights in (("tiny", weights),):
        out[f"{prefix}_names"] = np.array(sorted(model_weights))
        out[f"{prefix}_shapes"] = np.array([",".join(map(str, model_weights[k].shape)) for k in sorted(model_weights)])

    # Weight files of the reduced network in the three layouts.
    with tempfile.TemporaryDirectory() as tmp:
        vae.float().save_pretrained(tmp, safe_serialization=True)
        shutil.copy(os.path.join(tmp, "diffusion_pytorch_model.safetensors"), f"{FIXTURES}/tiny_current.safetensors")
    tensors = {k: torch.from_numpy(v) for k, v in weights.items()}
    safetensors.torch.save_file(
        {legacy(k): v for k, v in tensors.items()}, f"{FIXTURES}/tiny_legacy.safetensors", metadata={"format": "pt"}
    )
    ldm = {}
    for name, value in tensors.items():
        ldm_name = diffusers_to_ldm(name, levels)
        ldm[ldm_name] = value[:, :, None, None] if ".attn_1." in ldm_name and value.ndim == 2 else value
    converted = convert_ldm_vae_checkpoint(dict(ldm), dict(vae.config))
    assert sorted(converted) == sorted(tensors), "the LDM names disagree with diffusers' converter"
    assert all(torch.equal(converted[k], tensors[k]) for k in tensors)
    ldm.update({k: torch.from_numpy(v) for k, v in LDM_EXTRAS.items()})
    torch.save({"state_dict": ldm, "global_step": 840000}, f"{FIXTURES}/tiny_ldm.ckpt")

    # The full-size kl-f8 network: layout and one small image (weights regenerated by the test).
    full, full_weights = build(FULL)
    out["full_names"] = np.array(sorted(full_weights))
    out["full_shapes"] = np.array([",".join(map(str, full_weights[k].shape)) for k in sorted(full_weights)])
    with torch.no_grad():
        x = torch.from_numpy(full_image)
        moments = full.quant_conv(full.encoder(x))
        out["full_x"] = full_image.transpose(0, 2, 3, 1).copy()
        out["full_moments"] = nhwc(moments)
        out["full_decode"] = nhwc(full.decode(full.encode(x).latent_dist.mode()).sample)
    np.savez_compressed(GOLDEN, **out)
    import diffusers

    print(f"wrote {FIXTURES} (torch {torch.__version__}, diffusers {diffusers.__version__})")


if __name__ == "__main__":
    main()
