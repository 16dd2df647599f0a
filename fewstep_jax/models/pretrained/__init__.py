"""Starting from the official pretrained models: importers from released files into the suite's networks.

    imported = pretrained.import_file("edm-cifar10-32x32-uncond-vp.pkl")     # family detected
    net = models.build(imported.model, data_shape=imported.data_shape, num_classes=imported.num_classes)
    net.apply({"params": imported.params}, x, t)                             # the suite's network
    pretrained.save(imported, "weights/edm_cifar_uncond")                    # safetensors + JSON

Families (REGISTRY, the `--from` values of `python -m fewstep_jax.models.import_weights`):
  edm   NVlabs/edm network pickles (Karras et al. 2022): EDMPrecond + SongUNet with EDM's DDPM++
        or NCSN++ settings (CIFAR-10 uncond / cond '-vp' / '-ve' files, and any resolution) -> the
        `unet` network (recipes.ddpmpp_unet, NCSN++ with its Fourier embedding, residual encoder
        and [1, 3, 3, 1] filter as options); EDMPrecond + DhariwalUNet (ADM, EDM's ImageNet-64
        model) -> the `adm` network (recipes.adm). The VP / VE / iDDPM-preconditioned baselines
        are refused by name: the suite has no such preconditionings.
  edm2  NVlabs/edm2 network pickles (Karras et al. 2024): Precond + UNet, sizes XS..XXL, pixel
        (ImageNet-64) and latent (ImageNet-512, 64x64x4) models, the released post-hoc EMA files
        such as edm2-img512-xs-2147483-0.135.pkl -> the `edm2` network with fourier_params=True.
  dit, sit  `.pt` state dicts (DiT, SiT; models/pretrained/dit.py).

Every importer returns an `Imported`: the suite's `model` section that rebuilds the network, the
data it was trained on (shape, classes), the method section of its parameterization (EDM
preconditioning with its sigma_data: the files are EDM denoisers D = c_skip x + c_out F), the
flax params, and a summary (architecture, parameter count, EMA, resolution, labels). Nothing in a
file is executed: network pickles are read by `network_pickle` (an allow-list unpickler that
records the pickled networks without running their embedded source), `.pt` files by
metrics/torch_pickle.py.

Where they plug in: `train.init_from` and sCD's `method.teacher` accept a released file or a
folder written by `save` as well as a run of the suite (experiment.load_pretrained). EDM's and
EDM2's networks are EDM-preconditioned: ECT / SCT / EDM runs start from them as they are; a
TrigFlow method (sCM) uses them through the exact conversion `as_trigflow` (the network embeds
c_noise = ln(sigma_d tan t) / 4 and its output is negated: layers.map_time).

Adding a family (e.g. the DiT / SiT `.pt` importer): one `Importer` entry in REGISTRY naming its
module, which defines, by `file_kind`:
  'network_pickle'  NETWORK_CLASSES (the class names of data['ema'] it owns) and
                    convert(data: dict, path: str) -> Imported;
  'torch_save'      read(path: str, family: str | None) -> Imported (None: tell the family from
                    the file) and detect(path: str) -> str | None (its family for this file, or
                    None when the file is not one of its own).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from fewstep_jax.models.pretrained import network_pickle

#: File kinds an importer can read; `file_kind(path)` tells them apart by their first bytes.
FILE_KINDS = ("network_pickle", "torch_save")

#: The files `save` writes into its folder.
EXPORT_JSON = "pretrained.json"
EXPORT_WEIGHTS = "params.safetensors"
EXPORT_FORMAT = "fewstep_jax.pretrained/1"


class PretrainedError(ValueError):
    """A file that cannot be imported (wrong family, unknown network, missing weights, ...)."""


@dataclasses.dataclass(frozen=True)
class Importer:
    """One family of released files.

    family: the --from value. module: the module implementing it (imported on first use).
    file_kind: which files it reads (FILE_KINDS). description: one line for --help.
    """

    family: str
    module: str
    file_kind: str
    description: str

    def implementation(self) -> Any:
        try:
            return importlib.import_module(self.module)
        except ModuleNotFoundError as e:
            if e.name != self.module:
                raise
            where = self.module.replace(".", "/") + ".py"
            raise PretrainedError(
                f"the {self.family!r} importer ({where}) is not in this version of fewstep_jax"
            ) from None


REGISTRY: dict[str, Importer] = {
    i.family: i
    for i in (
        Importer(
            "edm",
            "fewstep_jax.models.pretrained.edm",
            "network_pickle",
            "NVlabs/edm network pickles (EDMPrecond + DDPM++ / NCSN++ / ADM), e.g. edm-cifar10-32x32-uncond-vp.pkl",
        ),
        Importer(
            "edm2",
            "fewstep_jax.models.pretrained.edm2",
            "network_pickle",
            "NVlabs/edm2 network pickles (Precond + UNet, XS..XXL), e.g. edm2-img512-xs-2147483-0.135.pkl",
        ),
        Importer(
            "dit",
            "fewstep_jax.models.pretrained.dit",
            "torch_save",
            "DiT state dicts (.pt), e.g. DiT-XL-2-256x256.pt",
        ),
        Importer(
            "sit",
            "fewstep_jax.models.pretrained.dit",
            "torch_save",
            "SiT state dicts (.pt), e.g. SiT-XL-2-256x256.pt (and REPA's)",
        ),
    )
}


@dataclasses.dataclass
class Imported:
    """A released model in the suite's terms.

    family: the REGISTRY key. source: the file it came from. model: the suite's model section
    (models.build(model, data_shape=..., num_classes=...) rebuilds the network). data_shape,
    num_classes: one example's shape (H, W, C) and the label count (0: unconditional).
    data_name: the suite's dataset of that shape, or None (data no suite dataset holds, e.g. latents
    normalized in a way none of the suite's presets is).
    method: the method section of the network's parameterization (name, sigma_d, sampling
    schedule), what check_pretrained_method compares and what `sample` uses. sampling: the
    paper's sampler, {'sampler': ..., 'num_steps': ...}. params: the network's flax params
    (nested dicts of float32 numpy arrays). extra: other weights kept from the file (EDM2's
    log-variance head), nested dicts of arrays. summary: what the file holds, for people.
    latent_preset: for latent models, the data/latents.py preset their latents follow ('edm2' for
    EDM2's ImageNet-512 files, 'sd' for SiT's and REPA's), LATENT_UNKNOWN when none matches; None
    for pixel models.
    """

    family: str
    source: str
    model: dict[str, Any]
    data_shape: tuple[int, ...]
    num_classes: int
    data_name: str | None
    method: dict[str, Any]
    sampling: dict[str, Any]
    params: dict[str, Any]
    summary: dict[str, Any]
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    latent_preset: str | None = None

    def build(self, **overrides: Any) -> Any:
        """The suite's network for these params (model section with `overrides`, e.g. dtype)."""
        from fewstep_jax import models

        return models.build({**self.model, **overrides}, data_shape=self.data_shape, num_classes=self.num_classes)

    def config(self) -> Any:
        """A config as experiment.load_pretrained returns for a run: model, data (name and
        conditional), method, and a `pretrained` section naming the file, its data's shape, label
        count and latent preset ('' for pixels)."""
        import ml_collections

        return ml_collections.ConfigDict(
            dict(
                model=dict(self.model),
                data=dict(name=self.data_name or "", conditional=self.num_classes > 0),
                method=dict(self.method),
                pretrained=dict(
                    family=self.family,
                    source=self.source,
                    data_shape=tuple(self.data_shape),
                    num_classes=self.num_classes,
                    latent_preset=self.latent_preset or "",
                ),
            )
        )


# ---------------------------------------------------------------------------- reading files


def file_kind(path: str) -> str:
    """'torch_save' (a torch.save zip or legacy file) or 'network_pickle' (any other pickle)."""
    if not os.path.isfile(path):
        raise PretrainedError(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"PK\x03\x04"):
        return "torch_save"
    if head[:1] == b"\x80" and b"\x8a\x0a" in head[:4]:  # legacy torch.save: pickled magic number first
        return "torch_save"
    if head[:1] == b"\x80":
        return "network_pickle"
    raise PretrainedError(f"{path} is neither a pickle nor a torch.save file (first bytes {head[:8]!r})")


def _pickle_family(data: Any, path: str) -> str:
    """The REGISTRY family that owns data['ema'] of a network pickle."""
    if not isinstance(data, Mapping) or "ema" not in data:
        keys = sorted(map(str, data)) if isinstance(data, Mapping) else type(data).__name__
        raise PretrainedError(f"{path}: a network pickle holds a dict with the network under 'ema'; this one: {keys}")
    ema = data["ema"]
    if not isinstance(ema, network_pickle.Module):
        raise PretrainedError(f"{path}: 'ema' is a {type(ema).__name__}, not a pickled network")
    owners = {}
    for importer in REGISTRY.values():
        if importer.file_kind == "network_pickle":
            try:
                implementation = importer.implementation()
            except PretrainedError:  # an importer not in this version
                continue
            for name in implementation.NETWORK_CLASSES:
                owners[name] = importer.family
    if ema.class_name not in owners:
        raise PretrainedError(
            f"{path}: unknown network class {ema.class_name!r} under 'ema'; importable: "
            + ", ".join(f"{k} ({v})" for k, v in sorted(owners.items()))
        )
    return owners[ema.class_name]


def detect(path: str) -> str:
    """The REGISTRY family of a released file (reads the file)."""
    kind = file_kind(path)
    if kind == "network_pickle":
        return _pickle_family(network_pickle.load(path), path)
    found = set()
    for importer in REGISTRY.values():
        if importer.file_kind == kind:
            try:
                family = importer.implementation().detect(path)
            except PretrainedError:
                continue
            if family:
                found.add(family)
    if len(found) != 1:
        raise PretrainedError(f"{path}: cannot tell its family ({sorted(found) or 'no importer claims it'}); pass one")
    return found.pop()


def import_file(path: str | os.PathLike[str], family: str | None = None) -> Imported:
    """Import a released file; `family` (a REGISTRY key) is checked against the file, None: detected."""
    path = os.fspath(path)
    if family is not None and family not in REGISTRY:
        raise PretrainedError(f"unknown family {family!r}; known: {', '.join(REGISTRY)}")
    kind = file_kind(path)
    if family is not None and REGISTRY[family].file_kind != kind:
        wanted = REGISTRY[family]
        raise PretrainedError(
            f"{path} is a {kind.replace('_', ' ')} file; {family!r} reads {wanted.file_kind.replace('_', ' ')} "
            f"files ({wanted.description})"
        )
    if kind == "network_pickle":
        try:
            data = network_pickle.load(path)
        except network_pickle.NetworkPickleError as e:
            raise PretrainedError(str(e)) from None
        found = _pickle_family(data, path)
        if family is not None and found != family:
            raise PretrainedError(
                f"{path} holds a {data['ema'].class_name} network, a {found!r} file; read it with --from={found}"
            )
        return REGISTRY[found].implementation().convert(data, path)
    if family is None:
        family = detect(path)
    return REGISTRY[family].implementation().read(path, family)


# ---------------------------------------------------------------------------- the exported folder


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a/b/c': leaf} of a tree of nested mappings."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(_flatten(value, name))
        else:
            out[name] = value
    return out


def _unflatten(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in flat.items():
        node = out
        *parents, leaf = name.split("/")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return out


def save(imported: Imported, directory: str) -> str:
    """Write `imported` into `directory`: params.safetensors (the network under 'net/...', other
    kept weights under 'extra/...') and pretrained.json (family, source, model, data, method,
    sampling, summary). Returns the directory. train.init_from / method.teacher read it."""
    from safetensors.numpy import save_file

    os.makedirs(directory, exist_ok=True)
    tensors = {**_flatten(imported.params, "net"), **_flatten(imported.extra, "extra")}
    tensors = {k: np.ascontiguousarray(np.asarray(v)) for k, v in tensors.items()}
    save_file(tensors, os.path.join(directory, EXPORT_WEIGHTS))
    meta = dict(
        format=EXPORT_FORMAT,
        family=imported.family,
        source=imported.source,
        model=imported.model,
        data=dict(
            name=imported.data_name,
            shape=list(imported.data_shape),
            num_classes=imported.num_classes,
            latent_preset=imported.latent_preset,
        ),
        method=imported.method,
        sampling=imported.sampling,
        summary=imported.summary,
    )
    with open(os.path.join(directory, EXPORT_JSON), "w") as f:
        json.dump(meta, f, indent=2, default=_json_default)
        f.write("\n")
    return directory


def _json_default(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def is_export(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, EXPORT_JSON))


def _tuples(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def load_export(directory: str) -> Imported:
    """An `Imported` from a folder written by `save`."""
    from safetensors.numpy import load_file

    with open(os.path.join(directory, EXPORT_JSON)) as f:
        meta = json.load(f)
    if meta.get("format") != EXPORT_FORMAT:
        raise PretrainedError(f"{directory}/{EXPORT_JSON}: format {meta.get('format')!r}, expected {EXPORT_FORMAT!r}")
    weights = os.path.join(directory, EXPORT_WEIGHTS)
    if not os.path.isfile(weights):
        raise PretrainedError(f"{directory}: {EXPORT_WEIGHTS} is missing (write the folder again with import_weights)")
    tree = _unflatten(load_file(weights))
    return Imported(
        family=meta["family"],
        source=meta["source"],
        model=_tuples(meta["model"]),
        data_shape=tuple(meta["data"]["shape"]),
        num_classes=int(meta["data"]["num_classes"]),
        data_name=meta["data"]["name"],
        method=meta["method"],
        sampling=meta["sampling"],
        params=tree.get("net", {}),
        summary=meta["summary"],
        extra=tree.get("extra", {}),
        latent_preset=meta["data"].get("latent_preset"),
    )


def is_pretrained_path(path: str) -> bool:
    """Whether train.init_from / method.teacher names a released file or an exported folder
    (rather than a run of the suite)."""
    return os.path.isfile(path) or is_export(path)


def load(path: str) -> Imported:
    """A released file (imported) or an exported folder."""
    return load_export(path) if is_export(path) else import_file(path)


# ---------------------------------------------------------------------------- shared by the importers

#: (shape, label count) -> the suite's dataset with that layout.
SUITE_DATASETS = {
    ((32, 32, 3), 0): "cifar10",
    ((32, 32, 3), 10): "cifar10",
    ((64, 64, 3), 1000): "imagenet64",
    ((8, 8, 1), 0): "digits",
    ((8, 8, 1), 10): "digits",
}


def suite_dataset(shape: tuple[int, ...], num_classes: int) -> str | None:
    return SUITE_DATASETS.get((tuple(shape), int(num_classes)))


#: (latent shape, label count) -> the suite's latent dataset with that layout (SD VAE latents of
#: ImageNet at 256 and 512 pixels); which preset normalizes them is Imported.latent_preset.
LATENT_DATASETS = {((32, 32, 4), 1000): "imagenet256_latents", ((64, 64, 4), 1000): "imagenet512_latents"}

#: Imported.latent_preset of latents normalized as none of the suite's presets.
LATENT_UNKNOWN = "unknown"


def latent_dataset(shape: tuple[int, ...], num_classes: int, preset: str | None) -> str | None:
    """The suite's latent dataset of this layout when the latents follow one of its presets."""
    if preset in (None, LATENT_UNKNOWN):
        return None
    return LATENT_DATASETS.get((tuple(shape), int(num_classes)))


def latent_preset_of(scale: Any, bias: Any) -> str:
    """The data/latents.py preset whose map latent = z * scale + bias (per channel; EDM2's
    StabilityVAEEncoder stores scale = 0.5 / raw_std and bias = -raw_mean * scale) this is, or
    LATENT_UNKNOWN. Float32 storage: equal to 1e-5 relative."""
    from fewstep_jax.data import latents

    scale, bias = np.asarray(scale, np.float64).ravel(), np.asarray(bias, np.float64).ravel()
    for preset in latents.PRESETS.values():
        ours = np.asarray(preset.scale, np.float64)
        if scale.shape != ours.shape:
            continue
        if np.allclose(scale, ours, rtol=1e-5, atol=0) and np.allclose(
            bias, -np.asarray(preset.shift) * ours, rtol=1e-5, atol=1e-6
        ):
            return preset.name
    return LATENT_UNKNOWN


def ema_from_file_name(path: str) -> dict[str, Any] | None:
    """EDM2's post-hoc EMA files are named <name>-<training kimg, 7 digits>-<sigma_rel>.pkl
    (reconstruct_phema.py; the pickle itself does not record either)."""
    match = re.search(r"-(\d{7})-(\d+\.\d+)\.pkl$", os.path.basename(path))
    if not match:
        return None
    return dict(kind="power", sigma_rel=float(match.group(2)), training_kimg=int(match.group(1)), source="file name")


class TensorMap:
    """Collects a network's params from a file's tensors and checks the result: every file
    tensor used (or explicitly dropped), every suite param filled with the right shape."""

    def __init__(self, tensors: Mapping[str, np.ndarray], path: str):
        self.tensors = dict(tensors)
        self.path = path
        self.used: set[str] = set()
        self.missing: list[str] = []
        self.params: dict[str, np.ndarray] = {}

    def has(self, name: str) -> bool:
        return name in self.tensors

    def take(self, name: str) -> np.ndarray | None:
        """The file tensor `name` in float64 (None, recorded as missing, when absent)."""
        if name not in self.tensors:
            self.missing.append(name)
            return None
        self.used.add(name)
        return np.asarray(self.tensors[name], np.float64)

    def drop(self, prefix: str) -> list[str]:
        """Mark the file tensors under `prefix` as deliberately not imported; returns them."""
        names = [n for n in self.tensors if n == prefix or n.startswith(prefix + ".")]
        self.used.update(names)
        return names

    def put(self, target: str, value: np.ndarray | None) -> None:
        if value is not None:
            self.params[target] = value

    def finish(self, expected: Mapping[str, tuple[int, ...]], what: str) -> dict[str, Any]:
        """The nested float32 params; a one-line PretrainedError naming what differs."""
        unexpected = sorted(set(self.tensors) - self.used)
        absent = sorted(set(expected) - set(self.params))
        shapes = sorted(
            f"{k} {tuple(self.params[k].shape)} (expected {tuple(expected[k])})"
            for k in set(expected) & set(self.params)
            if tuple(self.params[k].shape) != tuple(expected[k])
        )
        problems = []
        for label, names in (
            ("missing from the file", sorted(set(self.missing))),
            ("unexpected in the file", unexpected),
            ("mis-shaped", shapes),
            ("not filled in the suite's network", absent),
        ):
            if names:
                problems.append(f"{len(names)} {label}: {', '.join(names[:4])}{' ...' if len(names) > 4 else ''}")
        if problems:
            raise PretrainedError(f"{self.path}: its weights do not match {what}: " + "; ".join(problems))
        return _unflatten({k: v.astype(np.float32) for k, v in self.params.items()})


def expected_shapes(net: Any, data_shape: tuple[int, ...], num_classes: int) -> dict[str, tuple[int, ...]]:
    """{'a/b/c': shape} of the network's params (jax.eval_shape: nothing is computed)."""
    import jax
    import jax.numpy as jnp

    def init():
        x = jnp.zeros((1, *data_shape), jnp.float32)
        t = jnp.full((1,), 0.5, jnp.float32)
        y = jnp.zeros((1,), jnp.int32) if num_classes else None
        d = jnp.zeros((1,), jnp.float32) if getattr(net, "use_d", False) else None
        return net.init(jax.random.key(0), x, t, y=y, d=d, train=False)["params"]

    return {k: tuple(v.shape) for k, v in _flatten(jax.eval_shape(init)).items()}


def check_classes(root: network_pickle.Module, known: set[str], path: str, what: str) -> None:
    """Every pickled module under `root` must be of a class the importer knows."""
    for where, module in root.walk("ema"):
        if module.persistent and module.class_name not in known:
            raise PretrainedError(
                f"{path}: unknown class {module.class_name!r} at {where} (a {what} network has only "
                f"{', '.join(sorted(known))})"
            )
        if not module.persistent and module.class_name not in ("ModuleDict", "ModuleList", "Sequential"):
            raise PretrainedError(f"{path}: unexpected container {module.class_name!r} at {where}")


#: EDM's sampling schedule (Karras et al. 2022, eq. 5 with Table 1's values), which EDM2 keeps.
EDM_SCHEDULE = dict(sigma_min=0.002, sigma_max=80.0, rho=7.0)


def imported(
    family: str,
    path: str,
    data: Mapping[str, Any],
    *,
    model: dict[str, Any],
    shape: tuple[int, ...],
    num_classes: int,
    data_name: str | None,
    sigma_data: float,
    sampling: Mapping[str, Any],
    params: dict[str, Any],
    summary: Mapping[str, Any],
    extra: dict[str, Any] | None = None,
    latent_preset: str | None = None,
) -> Imported:
    """The Imported of an EDM-preconditioned network (EDM, EDM2): method 'edm' with the file's
    sigma_data and training proposal; the summary's common entries, then the family's."""
    from fewstep_jax import models

    loss = loss_section(data)
    common = dict(
        family=family,
        file=os.path.basename(path),
        parameters=models.count_params(params),
        resolution=shape[0],
        channels=shape[2],
        conditional=num_classes > 0,
        num_classes=num_classes,
        preconditioning=f"EDM, sigma_data {sigma_data:g}",
        training_loss=loss,
    )
    return Imported(
        family=family,
        source=os.path.abspath(path),
        model=model,
        data_shape=tuple(shape),
        num_classes=num_classes,
        data_name=data_name,
        method=dict(name="edm", sigma_d=sigma_data, **loss, **EDM_SCHEDULE),
        sampling=dict(sampling),
        params=params,
        summary={**common, **summary},
        extra=extra or {},
        latent_preset=latent_preset,
    )


def loss_section(data: Mapping[str, Any]) -> dict[str, float]:
    """P_mean / P_std of the file's loss_fn (EDMLoss, EDM2Loss), when it has one."""
    loss = data.get("loss_fn")
    if not isinstance(loss, network_pickle.Module):
        return {}
    out = {}
    for key, name in (("P_mean", "p_mean"), ("P_std", "p_std")):
        value = loss.state.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


#: Model keys that leave what the weights compute unchanged (training and compute settings), or
#: that init_from checks against the method (the time map).
NON_ARCHITECTURE = ("dropout", "dropout_res", "dtype", "use_d", "time_map", "time_map_sigma_d")


def resolved_model(model: Mapping[str, Any]) -> dict[str, Any]:
    """A model section with every default filled and each size preset resolved (unet / adm
    emb_dim 0 -> 4 * channels, unet noise_dim 0 -> its default width; edm2 channels and dit
    hidden / depth / num_heads from `size`), sequences as tuples: two sections describe the same
    weights iff their resolved forms agree."""
    from fewstep_jax import models

    name = model.get("name")
    if name not in models.REGISTRY:
        return dict(model)
    out = {**models.REGISTRY[name].defaults, **dict(model)}
    if name in ("unet", "adm") and not out["emb_dim"]:
        out["emb_dim"] = 4 * out["channels"]
    if name == "unet" and not out["noise_dim"]:
        from fewstep_jax.models import unet

        out["noise_dim"] = unet.default_noise_dim(out["channels"])
    if name == "edm2" and out["channels"] is None and out["size"] is not None:
        out["channels"] = models.EDM2_SIZES.get(str(out["size"]).upper())
    if name == "dit" and out["size"] in models.DIT_SIZES:
        for key, value in zip(("hidden", "depth", "num_heads"), models.DIT_SIZES[out["size"]]):
            out[key] = value if out[key] is None else out[key]
    out.pop("size", None)
    return {k: tuple(v) if isinstance(v, list) else v for k, v in out.items()}


#: Model keys that only matter with class labels.
LABEL_KEYS = ("label_embed", "label_balance")


def architecture_differences(
    file_model: Mapping[str, Any], config_model: Mapping[str, Any], num_classes: int = 1
) -> list[str]:
    """'key=file value (file) vs config value (config)' for each key in which a config's model
    section describes other weights than an imported file's (NON_ARCHITECTURE keys aside, and
    LABEL_KEYS for unconditional networks, num_classes = 0)."""
    ours, theirs = resolved_model(config_model), resolved_model(file_model)
    if ours.get("name") != theirs.get("name"):
        return [f"name={theirs.get('name')!r} (file) vs {ours.get('name')!r} (config)"]
    ignored = set(NON_ARCHITECTURE) | (set(LABEL_KEYS) if num_classes == 0 else set())
    keys = sorted((set(ours) | set(theirs)) - ignored)
    return [f"{k}={theirs.get(k)!r} (file) vs {ours.get(k)!r} (config)" for k in keys if theirs.get(k) != ours.get(k)]


def as_trigflow(config: Any) -> Any:
    """The exact TrigFlow form of an imported EDM-preconditioned network's config (sCM, Lu &
    Song 2024, sec. 3: with sigma = sigma_d tan t the EDM denoiser is TrigFlow's f when the
    network embeds c_noise = ln(sigma_d tan t) / 4 and its output is negated; layers.map_time):
    model.time_map = 'edm_as_trigflow', method 'trigflow' with the same sigma_d. The params
    are unchanged. Raises for other networks."""
    import ml_collections

    if config.method.name != "edm" or config.model.get("time_map", "identity") != "identity":
        raise PretrainedError(
            f"only an EDM-preconditioned network converts to TrigFlow; this one is {config.method.name!r} "
            f"(model.time_map={config.model.get('time_map', 'identity')!r})"
        )
    sigma_d = float(config.method.sigma_d)
    out = ml_collections.ConfigDict(config.to_dict())
    out.model.update(dict(time_map="edm_as_trigflow", time_map_sigma_d=sigma_d))
    out.method = ml_collections.ConfigDict(
        dict(
            name="trigflow",
            sigma_d=sigma_d,
            learned_weighting=False,
            sigma_min=config.method.get("sigma_min", 0.002),
            sigma_max=config.method.get("sigma_max", 80.0),
            rho=config.method.get("rho", 7.0),
        )
    )
    return out
