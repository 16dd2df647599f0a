"""Every reader of a user's file refuses a crafted file that would run code, and runs none of it.

Each crafted file carries a pickle whose loading would execute `open(MARKER, 'w')`; the test
asserts a clear error and that MARKER never appears. docs/FILES.md lists the readers.
"""

from __future__ import annotations

import argparse
import codecs
import io
import json
import os
import pickle
import tarfile
import zipfile

import numpy as np
import pytest

from fewstep_jax import safe_pickle
from fewstep_jax.data import formats, prepare, sources, tfds_reader
from fewstep_jax.metrics import dinov2, fd_dinov2, fid, inception, torch_pickle
from fewstep_jax.models import vae
from fewstep_jax.models.pretrained import dit as pretrained_dit
from fewstep_jax.models.pretrained import network_pickle

EXEC = r"(__builtin__|builtins)\.exec"  # protocol 2 writes Python 2's module name


class Exploit:
    """Unpickling this object runs exec(...), which writes the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('code ran')",))


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "MARKER"
    yield path
    assert not path.exists(), "a crafted file ran code while being read"


def test_the_exploit_does_run_under_plain_pickle(marker):
    """The crafted payload is live: plain pickle.loads executes it (so the tests below mean something)."""
    pickle.loads(pickle.dumps(Exploit(marker)))
    assert marker.exists()
    marker.unlink()


# ---------------------------------------------------------------------------- PyTorch weight files


@pytest.mark.parametrize(
    "load, name",
    [(inception.load_params, "Inception"), (dinov2.load_params, "DINOv2")],
    ids=["inception", "dinov2"],
)
def test_zip_pth_with_code_is_refused(tmp_path, marker, load, name):
    path = tmp_path / "weights.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"w": Exploit(marker)}, protocol=2))
    with pytest.raises(ValueError, match=rf"cannot read {name} weights .*refusing to unpickle " + EXEC):
        load(str(path))


def test_vae_ckpt_with_code_is_refused(tmp_path, marker):
    """An LDM-style .ckpt (the state dict nested under 'state_dict') carrying code."""
    path = tmp_path / "vae-ft-mse-840000-ema-pruned.ckpt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"state_dict": {"w": Exploit(marker)}}, protocol=2))
    with pytest.raises(ValueError, match=r"cannot read VAE weights .*refusing to unpickle " + EXEC):
        vae.load_params(str(path))


def _legacy_file(path, pickles: list[bytes]) -> None:
    path.write_bytes(b"".join(pickles))


@pytest.mark.parametrize("where", ["magic", "system_info", "object", "storage_keys"])
def test_legacy_pth_with_code_in_any_of_its_pickles_is_refused(tmp_path, marker, where):
    """The legacy format is five pickles in a row; the header ones were once read with plain pickle."""
    evil = pickle.dumps(Exploit(marker), protocol=2)
    parts = {
        "magic": pickle.dumps(torch_pickle.LEGACY_MAGIC, protocol=2),
        "protocol": pickle.dumps(torch_pickle.LEGACY_PROTOCOL, protocol=2),
        "system_info": pickle.dumps({"little_endian": True}, protocol=2),
        "object": pickle.dumps({}, protocol=2),
        "storage_keys": pickle.dumps([], protocol=2),
    }
    parts[where] = evil
    path = tmp_path / "legacy.pth"
    _legacy_file(path, list(parts.values()))
    with pytest.raises(torch_pickle.TorchFileError, match="refusing to unpickle " + EXEC):
        torch_pickle.load(path)


def test_torch_file_tensor_of_an_unknown_storage_type_is_refused(tmp_path, marker):
    """A global outside the tensor allow-list (here a torch attribute that is not a storage) is refused."""
    payload = b"\x80\x02}q\x00X\x01\x00\x00\x00wq\x01ctorch\nload\nq\x02X\x05\x00\x00\x00x.pthq\x03\x85q\x04Rq\x05s."
    path = tmp_path / "w.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
    with pytest.raises(torch_pickle.TorchFileError, match=r"refusing to unpickle torch\.load"):
        torch_pickle.load(path)


def test_dit_sit_training_checkpoint_with_code_is_refused(tmp_path, marker):
    """An official-looking DiT / SiT train.py checkpoint ({'ema', 'args'}) whose tensors run code."""
    path = tmp_path / "SiT-XL-2-256.pt"
    payload = {"ema": {"w": Exploit(marker)}, "args": argparse.Namespace(model="SiT-XL/2")}
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(payload, protocol=2))
    refused = r"cannot read .*SiT-XL-2-256\.pt as a PyTorch checkpoint.*refusing to unpickle " + EXEC
    with pytest.raises(ValueError, match=refused):
        pretrained_dit.load(path, "sit")


# ---------------------------------------------------------------------------- EDM2 reference statistics (pickles)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_edm2_reference_pickle_with_code_is_refused(tmp_path, marker, protocol):
    path = tmp_path / "img512.pkl"
    refs = {"fid": {"mu": np.zeros(2048), "sigma": np.eye(2048)}, "fd_dinov2": {"mu": Exploit(marker), "sigma": None}}
    path.write_bytes(pickle.dumps(refs, protocol=protocol))
    with pytest.raises(safe_pickle.PickleRefused, match=r"img512\.pkl: refusing to unpickle " + EXEC):
        fd_dinov2.load_edm2_refs(str(path))


def test_edm2_reference_pickle_with_an_object_array_is_refused(tmp_path, marker):
    path = tmp_path / "img64.pkl"
    mu = np.array([Exploit(marker)], dtype=object)
    path.write_bytes(pickle.dumps({"fd_dinov2": {"mu": mu, "sigma": np.eye(1)}}, protocol=4))
    with pytest.raises(safe_pickle.PickleRefused, match="object"):
        fd_dinov2.load_edm2_refs(str(path))


# ---------------------------------------------------------------------------- NVlabs network pickles (EDM, EDM2)


def _persistent_pickle(monkeypatch, path, meta_fn, protocol=4) -> None:
    """Write a network pickle as NVlabs' torch_utils/persistence.py does: {'ema': a call
    `torch_utils.persistence._reconstruct_persistent_obj(meta)`}, meta from meta_fn()."""
    import sys
    import types

    package, module = types.ModuleType("torch_utils"), types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):  # what persistence does: compile and run module_src
        namespace = {}
        exec(compile(meta["module_src"], "<module_src>", "exec"), namespace)
        return namespace[meta["class_name"]]

    _reconstruct_persistent_obj.__module__ = module.__name__
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    module._reconstruct_persistent_obj = _reconstruct_persistent_obj
    package.persistence = module
    monkeypatch.setitem(sys.modules, "torch_utils", package)
    monkeypatch.setitem(sys.modules, "torch_utils.persistence", module)

    class Persistent:
        def __reduce__(self):
            return _reconstruct_persistent_obj, (meta_fn(),)

    path.write_bytes(pickle.dumps({"ema": Persistent()}, protocol=protocol))
    return module


def _meta(module_src: str, state=None) -> dict:
    return dict(type="class", version=6, module_src=module_src, class_name="EDMPrecond", state=state or {})


@pytest.mark.parametrize("protocol", [2, 4])
def test_network_pickle_module_source_is_never_run(tmp_path, monkeypatch, marker, protocol):
    """A persistent object's module_src is exactly what pickle.load would execute; the reader
    records the object and never compiles it, and the importer then refuses the incomplete network."""
    source = f"open({str(marker)!r}, 'w').write('code ran')\nclass EDMPrecond: pass\n"
    path = tmp_path / "edm-cifar10-32x32-uncond-vp.pkl"
    _persistent_pickle(monkeypatch, path, lambda: _meta(source), protocol)
    pickle.loads(path.read_bytes())  # live: plain pickle (with persistence's reconstructor) runs it
    assert marker.exists()
    marker.unlink()

    data = network_pickle.load(path)
    assert data["ema"].class_name == "EDMPrecond" and not marker.exists()
    from fewstep_jax.models import pretrained

    with pytest.raises(ValueError, match="edm-cifar10-32x32-uncond-vp.pkl: .*EDMPrecond.*no 'model'"):
        pretrained.import_file(path)


def test_network_pickle_asking_for_os_system_is_refused(tmp_path, monkeypatch, marker):
    state = {"_init_kwargs": {"img_resolution": 32}, "hook": Calls(os.system, f"touch {marker}")}
    path = tmp_path / "net.pkl"
    _persistent_pickle(monkeypatch, path, lambda: _meta("class EDMPrecond: pass\n", state))
    with pytest.raises(network_pickle.NetworkPickleError, match=r"net.pkl: refusing to unpickle (posix|os|nt)\.system"):
        network_pickle.load(path)


def test_network_pickle_with_code_in_a_tensor_storage_is_refused(tmp_path, monkeypatch, marker):
    """A storage is the bytes of a nested torch.save, read by the torch file reader's allow-list."""
    import sys
    import types

    storage_module = types.ModuleType("torch.storage")

    def _load_from_bytes(b):
        raise AssertionError("never called while writing")

    _load_from_bytes.__module__, _load_from_bytes.__qualname__ = "torch.storage", "_load_from_bytes"
    storage_module._load_from_bytes = _load_from_bytes
    monkeypatch.setitem(sys.modules, "torch.storage", storage_module)
    if "torch" not in sys.modules:
        monkeypatch.setitem(sys.modules, "torch", types.ModuleType("torch"))
    evil = pickle.dumps(Exploit(marker), protocol=2)
    state = {"_parameters": {"weight": Calls(_load_from_bytes, evil)}}
    path = tmp_path / "net.pkl"
    _persistent_pickle(monkeypatch, path, lambda: _meta("", state))
    refused = "tensor storage inside it.*refusing to unpickle " + EXEC
    with pytest.raises(network_pickle.NetworkPickleError, match=refused):
        network_pickle.load(path)


def test_network_pickle_constructor_arguments_must_be_plain(tmp_path, monkeypatch):
    state = {"_init_kwargs": {"img_resolution": 32, "table": np.arange(3)}}
    path = tmp_path / "net.pkl"
    _persistent_pickle(monkeypatch, path, lambda: _meta("", state))
    ema = network_pickle.load(path)["ema"]
    with pytest.raises(ValueError, match=r"constructor arguments of EDMPrecond hold a ndarray at \['table'\]"):
        ema.kwargs


def test_network_pickle_that_is_a_torch_zip_is_named(tmp_path):
    path = tmp_path / "DiT-XL-2-256x256.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({}, protocol=2))
    with pytest.raises(network_pickle.NetworkPickleError, match=r"torch.save \(zip\) file, not an NVlabs network"):
        network_pickle.load(path)


# ---------------------------------------------------------------------------- .npz files (numpy refuses object arrays)


def _object_npz(path, **names) -> None:
    np.savez(path, **{k: np.array([v], dtype=object) for k, v in names.items()})


def test_inception_npz_with_an_object_array_is_refused(tmp_path, marker):
    path = tmp_path / "inception.npz"
    _object_npz(path, **{"Conv2d_1a_3x3.conv.weight": Exploit(marker)})
    with pytest.raises(ValueError, match="cannot read Inception weights .*allow_pickle"):
        inception.load_params(str(path))


def test_fid_statistics_with_object_arrays_are_refused(tmp_path, marker):
    path = tmp_path / "stats.npz"
    _object_npz(path, mu=Exploit(marker), sigma=Exploit(marker))
    with pytest.raises(ValueError, match=r"stats\.npz: 'mu' and 'sigma' must be numeric arrays"):
        fid.load_stats(str(path))


def test_latent_shards_with_object_arrays_are_refused(tmp_path, marker):
    folder = tmp_path / "shards"
    folder.mkdir()
    _object_npz(folder / "000.npz", latents=Exploit(marker))
    with pytest.raises(ValueError, match="'latents' must be float16 / float32"):
        formats.scan_latent_shards(str(folder))
    shards = formats.LatentShards((str(folder / "000.npz"),), "latents", (1, 1, 1), "float32", False, (1,))
    with pytest.raises(ValueError, match="allow_pickle"):
        list(formats.latent_examples(shards))


# ---------------------------------------------------------------------------- CIFAR-10 batches (pickles)


def _cifar_tarball(path, batches: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name in (*sources_names(), "batches.meta"):
            data = batches.get(name, pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]}, protocol=2))
            info = tarfile.TarInfo(f"{formats.CIFAR10_DIR}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def sources_names() -> tuple[str, ...]:
    return formats.CIFAR10_SPLITS["train"] + formats.CIFAR10_SPLITS["test"]


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_batches_of_every_pickle_protocol_are_read(tmp_path, protocol):
    """The allow-list admits numpy arrays as numpy 1.x and 2.x pickle them at protocols 2 to 5."""
    rows = np.arange(2 * 3072, dtype=np.int64).reshape(2, 3072).astype(np.uint8)
    batch = pickle.dumps({b"data": rows, b"labels": [3, 7], b"filenames": [b"a.png", b"b.png"]}, protocol=protocol)
    path = tmp_path / sources.CIFAR10_FILE
    _cifar_tarball(path, {"test_batch": batch})
    x, y = formats.read_cifar10(str(path))["test"]
    np.testing.assert_array_equal(x, rows.reshape(2, 3, 32, 32).transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(y, [3, 7])


def test_cifar_tarball_with_code_is_refused_by_the_reader_and_by_prepare(tmp_path, marker):
    manual = tmp_path / "manual"
    manual.mkdir()
    path = manual / sources.CIFAR10_FILE
    _cifar_tarball(path, {"data_batch_3": pickle.dumps({b"data": Exploit(marker), b"labels": []}, protocol=2)})
    with pytest.raises(ValueError, match="data_batch_3: refusing to unpickle " + EXEC):
        formats.read_cifar10(str(path))
    with pytest.raises(Exception, match="refusing to unpickle " + EXEC):
        prepare.prepare("cifar10", manual_dir=str(manual), data_dir=str(tmp_path / "tfds"), num_workers=1)


def test_cifar_batch_with_an_object_array_is_refused(tmp_path, marker):
    """An object array's items would be arbitrary pickled objects: refused at its dtype."""
    rows = np.array([[1, 2]], dtype=object)
    path = tmp_path / sources.CIFAR10_FILE
    _cifar_tarball(path, {"test_batch": pickle.dumps({b"data": rows, b"labels": [0]}, protocol=2)})
    with pytest.raises(ValueError, match="object arrays"):
        formats.read_cifar10(str(path))


# ---------------------------------------------------------------------------- the unpickler itself


class Calls:
    """Pickles as a call of `fn(*args)`."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"not a pickle at all", "f.pkl is not a readable pickle"),
        (pickle.dumps(np.arange(3), protocol=2)[:-8], "f.pkl is not a readable pickle"),  # truncated
        (pickle.dumps(Calls(np.ndarray, (3,), "O")), "f.pkl: refusing to call numpy.ndarray"),
        (pickle.dumps(Calls(codecs.encode, "a", "rot13")), r"f.pkl: refusing _codecs.encode\(str, 'rot13'\)"),
        (pickle.dumps(Calls(os.system, "true")), r"f.pkl: refusing to unpickle (posix|os|nt)\.system"),
        (pickle.dumps(Calls(np.dtype, "O")), "f.pkl: refusing a numpy array of dtype object"),
    ],
)
def test_safe_pickle_errors(payload, message):
    with pytest.raises(safe_pickle.PickleRefused, match=message):
        safe_pickle.load(io.BytesIO(payload), safe_pickle.NUMPY_ARRAYS, source="f.pkl")


# ---------------------------------------------------------------------------- prepared tfds folders


def test_prepared_folder_naming_a_foreign_feature_class_is_refused_before_import(tmp_path, monkeypatch, marker):
    """tfds imports the module named in features.json; a folder naming another module is refused."""
    module_dir = tmp_path / "site"
    module_dir.mkdir()
    (module_dir / "crafted_feature.py").write_text(f"open({str(marker)!r}, 'w').write('code ran')\n")
    monkeypatch.syspath_prepend(str(module_dir))
    data_dir = tmp_path / "tfds"
    folder = sources.prepared_dir(sources.get("cifar10"), str(data_dir))
    os.makedirs(folder)
    (tmp_path / "tfds").joinpath(os.path.relpath(folder, data_dir), "dataset_info.json").write_text("{}")
    features = {
        "pythonClassName": "tensorflow_datasets.core.features.features_dict.FeaturesDict",
        "featuresDict": {"features": {"image": {"pythonClassName": "crafted_feature.Image"}}},
    }
    with open(os.path.join(folder, "features.json"), "w") as f:
        json.dump(features, f)
    with pytest.raises(ValueError, match="names the feature class 'crafted_feature.Image'"):
        tfds_reader.open_prepared("cifar10", str(data_dir))
