"""Golden fixtures for the DiT / SiT / REPA importer (fewstep_jax/models/pretrained/dit.py), and
the script that regenerates them.

The parity test (tests/test_pretrained_dit.py) imports small `torch.save` files written here by
the official PyTorch code into the suite's DiT and compares its outputs with the official
forward passes, computed in float64. Three reference networks, each built at a reduced size
(hidden 24, depth 2, 3 heads, patch 2, 8x8x4 input, 3 classes + the null class):

  dit       facebookresearch/DiT models.py `DiT` (learn_sigma=True: 8 output channels), saved as a
            plain state dict like the released DiT-XL-2-256x256.pt / DiT-XL-2-512x512.pt;
  sit       willisma/SiT models.py `SiT` (learn_sigma=True, forward returns the first 4 channels),
            a plain state dict like the released SiT-XL-2-256.pt;
  sit_repa  sihyun-yu/REPA models/sit.py `SiT` (no learned sigma; one projector MLP after block
            1), saved as REPA's train.py checkpoint {'model', 'ema', 'opt', 'args', 'steps'}, whose
            'model' entry holds constant tensors so that reading it instead of 'ema' fails.

Weights (`random_state_dict`): every tensor from np.random.default_rng([seed, crc32(name)]), seed =
SEED + the family's index in FILES:
Linear / conv weights N(0, 1 / fan_in), biases N(0, 0.1^2), the label table N(0, 0.5^2); none is
zero (the official init zeroes the adaLN and output layers, which would hide their mapping).
`pos_embed` keeps the official fixed sin-cos table. Saved as float32 like the released files;
the golden outputs come from the same values in float64 (model.double()).

Two float32 steps of the reference are lifted to float64 for the golden pass, documented here and
checked against the unmodified code in float32: the timestep embedding's frequencies and angles
(`timestep_embedding` / REPA `positional_embedding`: `torch.float32` / `.float()`), and the
schedule lookup of DiT's diffusion code (`_extract_into_tensor(...).float()`). `pos_embed` is set
to the official float64 table for the golden pass (the file keeps the float32 one).

Also recorded: DiT's diffusion (create_diffusion('') = 1000 linear betas, learned-range variance)
applied to the DiT outputs (pred_xstart and log-variance of p_mean_variance); SiT's interpolant
(transport/path.py ICPlan.plan) and REPA's (loss.py SILoss.interpolant) on given noise / data, to
pin their time directions; forward_with_cfg of DiT and SiT; the official parameter counts of the
full-size models (built on the meta device, initialization skipped).

Regenerate (needs torch, timm; torchvision is not needed) from checkouts of the three repos:

    pip install torch numpy && pip install --no-deps timm
    python tests/dit_golden.py DIT_CHECKOUT SIT_CHECKOUT REPA_CHECKOUT

The fixtures were made from facebookresearch/DiT ed81ce2, willisma/SiT 947f95b, sihyun-yu/REPA
67f7145 with torch 2.13 and timm 1.0.31.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import math
import os
import sys
import types
import zlib

import numpy as np

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "pretrained")
GOLDEN = os.path.join(FIXTURES, "dit_golden.npz")
FILES = {"dit": "dit_tiny.pt", "sit": "sit_tiny.pt", "sit_repa": "sit_repa_tiny.pt"}
SEED = 20221219  # DiT's arXiv date

#: Constructor arguments shared by the three reduced networks.
TINY = dict(
    input_size=8,
    patch_size=2,
    in_channels=4,
    hidden_size=24,
    depth=2,
    num_heads=3,
    mlp_ratio=4.0,
    class_dropout_prob=0.1,
    num_classes=3,
)
#: REPA's extra arguments: one projector (to 8 dims, width 16) after block 1, no qk-norm.
REPA_EXTRA = dict(decoder_hidden_size=24, encoder_depth=1, z_dims=[8], projector_dim=16, use_cfg=True, qk_norm=False)
BATCH = 4
#: Network time inputs: DiT's discrete DDPM steps, SiT / REPA flow times in [0, 1].
TIMES = {"dit": (0.0, 17.0, 500.0, 999.0), "sit": (0.0, 0.25, 0.7, 1.0), "sit_repa": (0.0, 0.3, 0.55, 1.0)}
LABELS = (0, 2, 3, 1)  # 3 = the null class
CFG_SCALE = 4.0


def random_state_dict(shapes: dict[str, tuple[int, ...]], seed: int = SEED) -> dict[str, np.ndarray]:
    """The fixture weights: each tensor depends only on (seed, name, shape); see the docstring."""
    out = {}
    for name, shape in sorted(shapes.items()):
        if name == "pos_embed":
            continue
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        if name.endswith("embedding_table.weight"):
            value = rng.normal(0.0, 0.5, shape)
        elif name.endswith(".weight") and len(shape) >= 2:
            value = rng.normal(0.0, 1.0 / math.sqrt(int(np.prod(shape[1:]))), shape)
        elif name.endswith(".bias"):
            value = rng.normal(0.0, 0.1, shape)
        else:
            raise ValueError(f"unexpected parameter {name} {shape}")
        out[name] = value.astype(np.float32)
    return out


def golden_inputs() -> dict[str, np.ndarray]:
    """float64 NCHW inputs: x (network input), noise and data (for the interpolants)."""
    rng = np.random.default_rng(SEED + 1)
    shape = (BATCH, TINY["in_channels"], TINY["input_size"], TINY["input_size"])
    return {"x": rng.normal(size=shape), "noise": rng.normal(size=shape), "data": rng.normal(size=shape)}


def _module(name: str, path: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _install_timm() -> None:
    """timm's PatchEmbed / Attention / Mlp under `timm.models.vision_transformer` (where the
    reference code imports them from), without importing timm's model zoo (which needs
    torchvision): only timm.layers is loaded, with torchvision's FrozenBatchNorm2d (imported by
    timm.layers, unused here) stubbed."""
    import torch.nn as nn

    spec = importlib.util.find_spec("timm")
    if spec is None:
        raise SystemExit("needs timm: pip install --no-deps timm")
    package = types.ModuleType("timm")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["timm"] = package
    if importlib.util.find_spec("torchvision") is None:
        for name in ("torchvision", "torchvision.ops", "torchvision.ops.misc"):
            sys.modules[name] = types.ModuleType(name)

        class FrozenBatchNorm2d(nn.Module):
            pass

        sys.modules["torchvision.ops.misc"].FrozenBatchNorm2d = FrozenBatchNorm2d
    layers = importlib.import_module("timm.layers")
    models = types.ModuleType("timm.models")
    vit = types.ModuleType("timm.models.vision_transformer")
    vit.PatchEmbed, vit.Attention, vit.Mlp = layers.PatchEmbed, layers.Attention, layers.Mlp
    models.vision_transformer = vit
    sys.modules.update({"timm.models": models, "timm.models.vision_transformer": vit})


def _float64_timestep_embedding(t, dim, max_period=10000):
    """The reference `timestep_embedding` (GLIDE) with float64 frequencies and angles."""
    import torch

    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(start=0, end=half, dtype=torch.float64) / half)
    args = t[:, None].double() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _check_float64_embedding(official, t) -> None:
    """The float64 replacement equals the unmodified reference in float32."""
    ref = official(t.float(), 256).double()
    ours = _float64_timestep_embedding(t, 256)
    assert float((ref - ours).abs().max()) < 1e-3, "float64 timestep embedding differs from the reference"


def _param_count(module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dit", help="checkout of facebookresearch/DiT")
    parser.add_argument("sit", help="checkout of willisma/SiT")
    parser.add_argument("repa", help="checkout of sihyun-yu/REPA")
    args = parser.parse_args()

    _install_timm()
    dit_models = _module("ref_dit_models", os.path.join(args.dit, "models.py"))
    sit_models = _module("ref_sit_models", os.path.join(args.sit, "models.py"))
    repa_models = _module("ref_repa_sit", os.path.join(args.repa, "models", "sit.py"))
    sit_path = _module("ref_sit_path", os.path.join(args.sit, "transport", "path.py"))
    repa_loss = _module("ref_repa_loss", os.path.join(args.repa, "loss.py"))
    sys.path.insert(0, args.dit)
    diffusion = importlib.import_module("diffusion")
    gd = importlib.import_module("diffusion.gaussian_diffusion")

    torch.manual_seed(0)
    nets = {
        "dit": dit_models.DiT(**TINY, learn_sigma=True),
        "sit": sit_models.SiT(**TINY, learn_sigma=True),
        "sit_repa": repa_models.SiT(**TINY, **REPA_EXTRA, fused_attn=False),
    }
    os.makedirs(FIXTURES, exist_ok=True)
    inputs = golden_inputs()
    x = torch.from_numpy(inputs["x"])
    y = torch.tensor(LABELS)
    out: dict[str, np.ndarray] = {**inputs, "labels": np.array(LABELS), "cfg_scale": np.float64(CFG_SCALE)}
    state_dicts = {}
    for family, net in nets.items():
        layout = net.state_dict()
        seed = SEED + list(FILES).index(family)
        weights = random_state_dict({k: tuple(v.shape) for k, v in layout.items()}, seed)
        state = collections.OrderedDict(
            (k, torch.from_numpy(weights[k]) if k in weights else v.float().clone()) for k, v in layout.items()
        )
        net.load_state_dict(state)
        state_dicts[family] = state
        out[f"{family}_time"] = np.array(TIMES[family])

    # The fixture files, float32 like the released ones.
    torch.save(state_dicts["dit"], os.path.join(FIXTURES, FILES["dit"]))
    torch.save(state_dicts["sit"], os.path.join(FIXTURES, FILES["sit"]))
    raw = collections.OrderedDict((k, torch.full((), -1.0).expand(v.shape)) for k, v in state_dicts["sit_repa"].items())
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([param], lr=1e-4)
    param.grad = torch.ones(2)
    optimizer.step()
    checkpoint = {
        "model": raw,
        "ema": state_dicts["sit_repa"],
        "opt": optimizer.state_dict(),
        "args": argparse.Namespace(model="SiT-tiny/2", qk_norm=False, encoder_depth=1, resolution=64),
        "steps": 4000,
    }
    torch.save(checkpoint, os.path.join(FIXTURES, FILES["sit_repa"]))

    # float64 golden passes.
    for module in (dit_models, sit_models):
        _check_float64_embedding(module.TimestepEmbedder.timestep_embedding, torch.tensor(TIMES["dit"]))
        module.TimestepEmbedder.timestep_embedding = staticmethod(_float64_timestep_embedding)
    _check_float64_embedding(repa_models.TimestepEmbedder.positional_embedding, torch.tensor(TIMES["sit_repa"]))
    repa_models.TimestepEmbedder.positional_embedding = staticmethod(_float64_timestep_embedding)
    grid = TINY["input_size"] // TINY["patch_size"]
    with torch.no_grad():
        for family, net in nets.items():
            net.double().eval()
            pos = dit_models.get_2d_sincos_pos_embed(TINY["hidden_size"], grid)
            net.pos_embed.data = torch.from_numpy(pos)[None]
            t = torch.tensor(TIMES[family], dtype=torch.float64)
            result = net(x, t, y)
            if family == "sit_repa":
                result = result[0]  # (output, projector features)
            out[f"{family}_out"] = result.numpy()
            if family != "sit_repa":
                # forward_with_cfg: the first half of the batch, conditional and null labels.
                y_cfg = torch.tensor([LABELS[0], LABELS[1], TINY["num_classes"], TINY["num_classes"]])
                t_cfg = torch.cat([t[:2], t[:2]])
                x_cfg = torch.cat([x[:2], x[:2]])
                out[f"{family}_cfg_out"] = net.forward_with_cfg(x_cfg, t_cfg, y_cfg, CFG_SCALE).numpy()

        # DiT's diffusion on the DiT outputs, schedule lookups in float64.
        float32_extract = gd._extract_into_tensor

        def extract_float64(arr, timesteps, broadcast_shape):
            res = torch.from_numpy(arr)[timesteps]
            while len(res.shape) < len(broadcast_shape):
                res = res[..., None]
            return res + torch.zeros(broadcast_shape, dtype=res.dtype)

        steps = torch.tensor(TIMES["dit"], dtype=torch.long)
        process = diffusion.create_diffusion("")
        gd._extract_into_tensor = extract_float64
        ours = process.p_mean_variance(nets["dit"], x, steps, clip_denoised=False, model_kwargs={"y": y})
        gd._extract_into_tensor = float32_extract
        ref = process.p_mean_variance(nets["dit"], x, steps, clip_denoised=False, model_kwargs={"y": y})
        assert torch.allclose(ours["pred_xstart"], ref["pred_xstart"], rtol=1e-4, atol=1e-4)
        out["dit_pred_xstart"] = ours["pred_xstart"].numpy()
        out["dit_log_variance"] = ours["log_variance"].numpy()
        out["dit_alphas_cumprod"] = np.asarray(process.alphas_cumprod, np.float64)

        # Interpolants: SiT's (noise x0, data x1) and REPA's (images, noises) at the flow times.
        noise, data = torch.from_numpy(inputs["noise"]), torch.from_numpy(inputs["data"])
        t = torch.tensor(TIMES["sit"], dtype=torch.float64)
        _, xt, ut = sit_path.ICPlan().plan(t, noise, data)
        out["sit_interp_xt"], out["sit_interp_ut"] = xt.numpy(), ut.numpy()
        t = torch.tensor(TIMES["sit_repa"], dtype=torch.float64)[:, None, None, None]
        alpha_t, sigma_t, d_alpha_t, d_sigma_t = repa_loss.SILoss(path_type="linear").interpolant(t)
        # loss.py SILoss.__call__: model_input and model_target (prediction 'v').
        out["sit_repa_interp_xt"] = (alpha_t * data + sigma_t * noise).numpy()
        out["sit_repa_interp_ut"] = (d_alpha_t * data + d_sigma_t * noise).numpy()

    # Official parameter counts at full size (meta device, no initialization).
    for module in (dit_models, sit_models, repa_models):
        for cls in ("DiT", "SiT"):
            if hasattr(module, cls):
                getattr(module, cls).initialize_weights = lambda self: None
    with torch.device("meta"):
        full = {
            "dit_xl2_256": dit_models.DiT_XL_2(input_size=32),
            "dit_xl2_512": dit_models.DiT_XL_2(input_size=64),
            "sit_xl2_256": sit_models.SiT_XL_2(input_size=32),
            "sit_repa_xl2_256": repa_models.SiT_XL_2(
                input_size=32, z_dims=[768], encoder_depth=8, use_cfg=True, qk_norm=False
            ),
        }
    for name, net in full.items():
        # The layout of the released state dicts, and the parameter count the official code reports.
        out[f"count_{name}"] = np.int64(_param_count(net))
        out[f"names_{name}"] = np.array(list(net.state_dict()))
        out[f"shapes_{name}"] = np.array([",".join(map(str, v.shape)) for v in net.state_dict().values()])
    out["count_sit_repa_xl2_256_projectors"] = np.int64(_param_count(full["sit_repa_xl2_256"].projectors))
    np.savez_compressed(GOLDEN, **out)
    sizes = {f: os.path.getsize(os.path.join(FIXTURES, n)) for f, n in FILES.items()}
    print(f"wrote {GOLDEN} and {sizes} (torch {torch.__version__})")


if __name__ == "__main__":
    main()
