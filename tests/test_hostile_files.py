"""Hostile checkpoint files: every format the reader reads, crafted as an attacker would.

Each case writes a file with the real tool (``torch.save``, ``torch.jit.save``, safetensors,
``torch.onnx.export``, ``numpy.savez``, h5py) and then tampers with its bytes, or writes the
bytes itself (``hostile.pickle_bytes``, ``hostile.write_zip``). The suite guarantees, for each case
and each entry point (``read_checkpoint``, ``jaxlstm.from_checkpoint``, and ``python -m jaxlstm
inspect`` / ``convert`` / ``parity``), run in a child process with a bounded address space and a
time limit:

- the file is refused with a ``CheckpointError`` (a ``ValueError``) whose message names the
  file and the reason, and the CLI exits 1 with ``jaxlstm <command>: error: ...`` and no
  traceback; a file whose tensors read fine but do not make an LSTM ("port" cases) is refused
  by the porting, naming what is wrong;
- no refusal advises loading the file unsafely (``weights_only=False``);
- nothing runs: no command is started and the payloads' marker file never appears;
- nothing outside the file's directory is opened: not the checkpoint and the secret placed in a
  sibling directory (checked by an audit hook and by inotify, which sees native opens too), not
  ``/etc/passwd``, nothing else besides the interpreter's and libraries' own files;
- no read hangs or exhausts memory (``hostile.TIMEOUT_S``, ``hostile.HEADROOM``).

Positive controls run the same way on valid files of every format, including files written by
this suite's own pickle and zip writers, so that a refusal is the tampering's doing.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import os
import pickle
import random
import re
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import hostile
import numpy as np
import pytest
import torch
from hostile import Build, Call, Deflated, Global, Obj, SelfList, pickle_bytes, tensor, write_zip

SECRET = "the secret beside the case directory\n"
FORBIDDEN = re.compile(r"weights_only\s*=\s*False|will likely succeed|can still be loaded")
"""torch's advice to load the file unsafely: a refusal must never pass it on."""

# Reasons, as the refusal should say them (case-insensitive; lenient on the wording).
ESCAPE = r"outside|escap|travers|absolute|symlink|symbolic|link|not (?:inside|within)"
STORAGE = (r"storage|out of (?:bounds|range)|exceed|beyond|bytes|stride|offset|too (?:large|big)"
           r"|memory")
CYCLE = r"recurs|cycl|circular|itself|self-referen|refer|nest|deep|depth|loop"
CORRUPT = r"corrupt|truncat|damaged|not a |zip|central directory|bad|invalid|incomplete"
GLOBAL = r"global|not allowed|unsafe|posix|builtins|os\.system|eval|code"
HEADER = r"header|truncat|corrupt|invalid|too (?:large|long|big)|length|exceed"
OFFSETS = r"offset|out of (?:bounds|range)|outside|overlap|corrupt|invalid|truncat"
HUGE = r"large|size|bytes|exceed|shape|memory|limit|bomb|compress|truncat"


# --- the valid files the cases start from --------------------------------------------------------


@functools.cache
def lstm_state() -> dict[str, torch.Tensor]:
    """An ``nn.LSTM(3, 4)`` state dict: the records ``data/0..3`` of the archives below."""
    torch.manual_seed(0)
    return dict(torch.nn.LSTM(3, 4).state_dict())


def numpy_state() -> dict[str, np.ndarray]:
    return {key: value.numpy() for key, value in lstm_state().items()}


def weight_sum() -> float:
    """The sum of |weights|: the same in every format (gate order and layout aside)."""
    return float(sum(np.abs(a.astype(np.float64)).sum() for a in numpy_state().values()))


def members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


@functools.cache
def scripted() -> bytes:
    buffer = io.BytesIO()
    module = torch.nn.LSTM(3, 4)
    module.load_state_dict(lstm_state())
    torch.jit.save(torch.jit.script(module), buffer)
    return buffer.getvalue()


@functools.cache
def saved() -> bytes:
    buffer = io.BytesIO()
    torch.save(lstm_state(), buffer)
    return buffer.getvalue()


@functools.cache
def exported() -> bytes:
    import warnings

    buffer = io.BytesIO()
    module = torch.nn.LSTM(3, 4)
    module.load_state_dict(lstm_state())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(5, 1, 3),), buffer, dynamo=False)
    return buffer.getvalue()


def lstm_tensors(**changed: hostile.Call) -> dict[str, hostile.Call]:
    """The pickled tensors of ``lstm_state()`` over records ``0..3``, some of them changed."""
    tensors = {key: tensor(str(index), tuple(value.shape))
               for index, (key, value) in enumerate(lstm_state().items())}
    return {**tensors, **changed}


def torchscript(path: Path, attributes: dict | None = None,
                records: dict[str, bytes | Deflated] | None = None, drop: tuple = ()) -> Path:
    """The ``torch.jit.save`` archive of the LSTM with ``data.pkl`` written anew: the module
    object with ``attributes`` (default: its four weights), records replaced or dropped."""
    files = members(scripted())
    root = next(name for name in files if name.endswith("/data.pkl"))[: -len("/data.pkl")]
    state = {"training": True, **(lstm_tensors() if attributes is None else attributes)}
    files[f"{root}/data.pkl"] = pickle_bytes(
        Obj(Global("__torch__.torch.nn.modules.rnn", "LSTM"), state))
    for key, data in (records or {}).items():
        files[f"{root}/data/{key}"] = data
    for key in drop:
        del files[f"{root}/data/{key}"]
    return write_zip(path, files)


def torch_zip(path: Path, value: object) -> Path:
    """A ``torch.save`` archive of the LSTM whose ``data.pkl`` pickles ``value`` instead."""
    files = members(saved())
    files[next(name for name in files if name.endswith("/data.pkl"))] = pickle_bytes(value)
    return write_zip(path, files)


def safetensors_parts() -> tuple[dict, bytes]:
    from safetensors.torch import save

    data = save(lstm_state())
    size = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + size]), data[8 + size:]


def safetensors_file(path: Path, header: dict | bytes, data: bytes,
                     length: int | None = None) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    length = len(raw) if length is None else length
    path.write_bytes(length.to_bytes(8, "little") + raw + data)
    return path


def safetensors_entries(path: Path, entries: list[tuple[str, str, list, bytes]]) -> Path:
    """A safetensors file of ``(name, dtype, shape, raw bytes)`` with consistent offsets."""
    header, data = {}, b""
    for name, dtype, shape, raw in entries:
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    return safetensors_file(path, header, data)


def f32_entries() -> list[tuple[str, str, list, bytes]]:
    return [(k, "F32", list(v.shape), v.tobytes()) for k, v in numpy_state().items()]


def npy(shape: tuple, data: bytes = b"", descr: str = "<f4") -> bytes:
    """An ``.npy`` header for ``shape``, followed by ``data`` (whatever its length)."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue() + data


def savez(path: Path, **arrays: object) -> Path:
    with open(path, "wb") as handle:  # a handle: np.savez would append ".npz" to a path
        np.savez(handle, **arrays)
    return path


def jax_rnn(path: Path, **sizes: int) -> Path:
    """A jax-rnn ``.npz`` as ``jaxlstm convert`` writes it, with ``sizes`` changed."""
    weights = np.concatenate([a.ravel() for a in numpy_state().values()])
    sizes = {"input_size": 3, "hidden_size": 4, "num_layers": 1, "bidirectional": False, **sizes}
    return savez(path, weights=weights, **{k: np.asarray(v) for k, v in sizes.items()})


def onnx_model(change: Callable[..., None] | None = None, path: Path | None = None) -> Path:
    """The exported LSTM with ``change(model, W, R, B)`` applied to its initializers."""
    import onnx

    model = onnx.load_from_string(exported())
    node = next(n for n in model.graph.node if n.op_type == "LSTM")
    found = {i.name: i for i in model.graph.initializer}
    if change is not None:
        change(model, *(found[name] for name in node.input[1:4]))
    path.write_bytes(model.SerializeToString())
    return path


def replace_initializer(old, array: np.ndarray) -> None:
    from onnx import numpy_helper

    old.CopyFrom(numpy_helper.from_array(array, old.name))


def external(old, location: str, outside: Path) -> None:
    """Move initializer ``old`` to external data at ``location`` (its bytes written outside)."""
    import onnx
    from onnx import external_data_helper, numpy_helper

    raw = numpy_helper.to_array(old).tobytes()
    (outside / "weights.bin").write_bytes(raw)
    external_data_helper.set_external_data(old, location=location, offset=0, length=len(raw))
    old.ClearField("raw_data")
    old.data_location = onnx.TensorProto.EXTERNAL


def index(path: Path, weight_map: object) -> Path:
    """A Hugging Face sharded-checkpoint index."""
    path.write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return path


def shard_map(shard: str) -> dict[str, str]:
    return dict.fromkeys(lstm_state(), shard)


def payload(outside: Path) -> str:
    """The command every code-running payload tries: it would leave a marker file."""
    return f"touch {outside / 'pwned'}"


class Payload:
    """Pickles as ``os.system(command)``: what an unsafe load would run."""

    def __init__(self, outside: Path):
        self.command = payload(outside)

    def __reduce__(self):
        return os.system, (self.command,)


def self_list() -> list:
    looped: list = [lstm_state()["weight_ih_l0"]]
    looped.append(looped)
    return looped


# --- the cases -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[Path, Path], Path]
    """``(case directory, outside directory) -> the crafted file`` (inside the case directory)."""
    reason: str
    """A regular expression the refusal must match (case-insensitive)."""
    stage: str = "read"
    """``read``: ``read_checkpoint`` refuses the file. ``port``: its tensors may read fine,
    but ``from_checkpoint`` and the CLI refuse them as an LSTM."""


def _shard_symlink(d: Path, o: Path) -> Path:
    os.symlink(o / "x.safetensors", d / "shard.safetensors")
    return index(d / "model.safetensors.index.json", shard_map("shard.safetensors"))


def _shard_loop(d: Path, o: Path) -> Path:
    index(d / "b.safetensors.index.json", shard_map("a.safetensors.index.json"))
    return index(d / "a.safetensors.index.json", shard_map("b.safetensors.index.json"))


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _directory(path: Path) -> Path:
    path.mkdir()
    return path


def _pt_extra_layer(d: Path, o: Path) -> Path:
    state = {**lstm_state(), "weight_ih_l99999999999": torch.zeros(16, 4)}
    torch.save(state, d / "model.pt")
    return d / "model.pt"


def _pt_missing_layer(d: Path, o: Path) -> Path:
    torch.manual_seed(0)
    state = torch.nn.LSTM(3, 4, num_layers=3).state_dict()
    torch.save({k: v for k, v in state.items() if "_l1" not in k}, d / "model.pt")
    return d / "model.pt"


def _pt_payload(d: Path, o: Path) -> Path:
    torch.save({"state_dict": lstm_state(), "hook": Payload(o)}, d / "model.pt")
    return d / "model.pt"


def _pt_self_list(d: Path, o: Path) -> Path:
    torch.save({"layers": self_list()}, d / "model.pt")
    return d / "model.pt"


def _pt_numpy_pickle(d: Path, o: Path) -> Path:
    with open(d / "model.pt", "wb") as handle:
        pickle.dump(numpy_state(), handle, protocol=2)
    return d / "model.pt"


def _st_tamper(change: Callable[[dict, bytes], tuple[dict, bytes]]) -> Callable:
    def build(d: Path, o: Path) -> Path:
        header, data = change(*safetensors_parts())
        return safetensors_file(d / "model.safetensors", header, data)

    return build


def _st_shift(header: dict, data: bytes) -> tuple[dict, bytes]:
    header["bias_hh_l0"]["data_offsets"] = [o + len(data) for o in
                                           header["bias_hh_l0"]["data_offsets"]]
    return header, data


def _st_overlap(header: dict, data: bytes) -> tuple[dict, bytes]:
    header["bias_hh_l0"]["data_offsets"] = header["bias_ih_l0"]["data_offsets"]
    return header, data


def _st_shape(header: dict, data: bytes) -> tuple[dict, bytes]:
    header["weight_ih_l0"]["shape"] = [16, 300]
    return header, data


def _st_length(length: Callable[[int], int]) -> Callable:
    def build(d: Path, o: Path) -> Path:
        header, data = safetensors_parts()
        raw = json.dumps(header).encode()
        return safetensors_file(d / "model.safetensors", header, data,
                                length(len(raw) + len(data)))

    return build


def _st_dtype(dtype: str, itemsize: int) -> Callable:
    def build(d: Path, o: Path) -> Path:
        entries = f32_entries()
        name, _, shape, _ = entries[0]
        entries[0] = (name, dtype, shape, bytes([127]) * (16 * 3 * itemsize))
        return safetensors_entries(d / "model.safetensors", entries)

    return build


def _npz_bomb(d: Path, o: Path) -> Path:
    mib = 3990  # 3.9 GiB of float32 zeros, about 4 MiB on disk
    return write_zip(d / "model.npz", {
        "weight_ih_l0.npy": _bomb(mib, npy((mib << 18,)))})


@functools.cache
def _bomb(mib: int, head: bytes = b"") -> Deflated:
    return hostile.zeros_deflated(mib, head)


def _onnx_directions(model, w, r, b) -> None:
    from onnx import numpy_helper

    weight = numpy_helper.to_array(w)
    replace_initializer(w, np.concatenate([weight, weight]))


def _onnx_dims(model, w, r, b) -> None:
    w.dims[:] = [1, 16, 3000]


def _onnx_external(location: Callable[[Path], str]) -> Callable:
    def build(d: Path, o: Path) -> Path:
        return onnx_model(lambda m, w, r, b: external(w, location(o), o), d / "model.onnx")

    return build


SHARDED = [
    Case("shard-parent-dir", lambda d, o: index(
        d / "model.safetensors.index.json", shard_map("../sibling/x.safetensors")), ESCAPE),
    Case("shard-absolute", lambda d, o: index(
        d / "model.safetensors.index.json", shard_map(str(o / "x.safetensors"))), ESCAPE),
    Case("shard-etc-passwd", lambda d, o: index(
        d / "model.safetensors.index.json", shard_map("../" * 32 + "etc/passwd")), ESCAPE),
    Case("shard-symlink-out", _shard_symlink, ESCAPE),
    Case("shard-self", lambda d, o: index(
        d / "model.safetensors.index.json", shard_map("model.safetensors.index.json")),
        CYCLE + r"|index"),
    Case("shard-index-loop", _shard_loop, CYCLE + r"|index"),
    Case("shard-map-list", lambda d, o: index(
        d / "model.safetensors.index.json", ["x.safetensors"]), r"weight_map"),
    Case("shard-map-ints", lambda d, o: index(
        d / "model.safetensors.index.json", {k: i for i, k in enumerate(lstm_state())}),
        r"weight_map|string|file ?name"),
    Case("shard-missing", lambda d, o: index(
        d / "model.safetensors.index.json", shard_map("model-00001-of-00002.safetensors")),
        r"not exist|missing|no such|not found"),
]

TORCHSCRIPT = [
    # A view that reads past its storage: (16, 3) floats over a 16-byte record.
    Case("ts-view-over-storage", lambda d, o: torchscript(
        d / "scripted.pt", lstm_tensors(weight_ih_l0=tensor("0", (16, 3), numel=4)),
        records={"0": bytes(16)}), STORAGE),
    Case("ts-view-512mib", lambda d, o: torchscript(
        d / "scripted.pt", lstm_tensors(weight_ih_l0=tensor("0", (1 << 27,), numel=48))),
        STORAGE),
    # In bounds, but a copy of 4 GiB.
    Case("ts-zero-stride-4gib", lambda d, o: torchscript(
        d / "scripted.pt",
        lstm_tensors(weight_ih_l0=tensor("0", (1 << 30,), stride=(0,), numel=48))), STORAGE),
    Case("ts-negative-stride", lambda d, o: torchscript(
        d / "scripted.pt", lstm_tensors(weight_ih_l0=tensor("0", (16, 3), stride=(-3, 1)))),
        r"negative|" + STORAGE),
    Case("ts-negative-offset", lambda d, o: torchscript(
        d / "scripted.pt", lstm_tensors(weight_ih_l0=tensor("0", (16, 3), offset=-1))),
        r"negative|" + STORAGE),
    Case("ts-numel-mismatch", lambda d, o: torchscript(
        d / "scripted.pt", lstm_tensors(weight_ih_l0=tensor("0", (16, 3), numel=10**6))),
        r"numel|size|record|" + STORAGE),
    # 3.9 GiB of zeros in a 4 MiB record.
    Case("ts-zip-bomb", lambda d, o: torchscript(d / "scripted.pt", records={"0": _bomb(3990)}),
         HUGE + r"|record|storage"),
    Case("ts-self-list", lambda d, o: torchscript(
        d / "scripted.pt", {**lstm_tensors(), "_all_weights": SelfList(("weight_ih_l0",))}),
        CYCLE),
    Case("ts-global-posix-system", lambda d, o: torchscript(
        d / "scripted.pt", {**lstm_tensors(),
                            "hook": Call(Global("posix", "system"), (payload(o),))}), GLOBAL),
    Case("ts-global-builtins-eval", lambda d, o: torchscript(
        d / "scripted.pt", {**lstm_tensors(), "hook": Call(
            Global("builtins", "eval"), (f"__import__('os').system({payload(o)!r})",))}),
        GLOBAL),
    Case("ts-global-os-system", lambda d, o: torchscript(
        d / "scripted.pt", {**lstm_tensors(),
                            "hook": Call(Global("os", "system"), (payload(o),))}), GLOBAL),
    Case("ts-missing-record", lambda d, o: torchscript(d / "scripted.pt", drop=("1",)),
         r"data/1|missing|record|not found|no item"),
    Case("ts-truncated", lambda d, o: _bytes(d / "scripted.pt", scripted()[: len(scripted()) // 2]),
         CORRUPT),
    Case("ts-bad-end-record", lambda d, o: _bytes(
        d / "scripted.pt", scripted()[:-22] + b"\xff" * 22), CORRUPT),
]

TORCH = [
    Case("pt-payload-reduce", _pt_payload, GLOBAL + r"|pickled"),
    # BUILD applies attributes to an object; on a dict it has nothing legitimate to do.
    Case("pt-build-on-dict", lambda d, o: torch_zip(
        d / "model.pt", Build(lstm_tensors(), {"__class__": "dict"})),
        r"build|pickle|corrupt|not allowed|unsafe|unsupported"),
    Case("pt-self-list", _pt_self_list, CYCLE),
    Case("pt-numpy-pickle", _pt_numpy_pickle, r"np\.savez|numpy\.savez"),
    Case("pt-view-over-storage", lambda d, o: torch_zip(
        d / "model.pt", lstm_tensors(weight_ih_l0=tensor("0", (16, 300)))), STORAGE),
    Case("pt-zero-stride-4gib", lambda d, o: torch_zip(
        d / "model.pt", lstm_tensors(weight_ih_l0=tensor("0", (1 << 30,), stride=(0,),
                                                          numel=48))), STORAGE),
    Case("pt-truncated", lambda d, o: _bytes(d / "model.pt", saved()[: len(saved()) // 2]),
         CORRUPT),
    Case("pt-garbage", lambda d, o: _bytes(
        d / "model.pt", b"\x13\x37" + random.Random(0).randbytes(4094)), CORRUPT),
    Case("pt-empty", lambda d, o: _bytes(d / "model.pt", b""), r"empty"),
    Case("pt-extra-layer-key", _pt_extra_layer, r"weight_ih_l99999999999", stage="port"),
    Case("pt-missing-layer", _pt_missing_layer, r"_l1\b|layer 1\b", stage="port"),
]

SAFETENSORS = [
    Case("st-header-past-end", _st_length(lambda size: size + 4096), HEADER),
    Case("st-header-2-63", _st_length(lambda size: 1 << 63), HEADER),
    Case("st-header-garbage", lambda d, o: safetensors_file(
        d / "model.safetensors", b'{"weight_ih_l0": {"dtype": [[[', safetensors_parts()[1]),
        HEADER + r"|json"),
    Case("st-offsets-past-end", _st_tamper(_st_shift), OFFSETS),
    Case("st-offsets-overlap", _st_tamper(_st_overlap), OFFSETS),
    Case("st-shape-vs-offsets", _st_tamper(_st_shape), r"shape|size|" + OFFSETS),
    # A valid tensor of an exotic dtype may read; no LSTM is made of it.
    Case("st-dtype-f8-e8m0", _st_dtype("F8_E8M0", 1), r"dtype|f8_e8m0|float8|e8m0",
         stage="port"),
    Case("st-dtype-unknown", _st_dtype("Q7", 1), r"dtype|type|unknown|unsupported|" + HEADER),
    Case("st-truncated-data", lambda d, o: _bytes(
        d / "model.safetensors",
        safetensors_file(d / "model.safetensors", *safetensors_parts()).read_bytes()[:-64]),
        OFFSETS + r"|size|short"),
]

NPZ = [
    Case("npz-npy-1tib", lambda d, o: write_zip(
        d / "model.npz", {"weight_ih_l0.npy": npy((1 << 40,), bytes(16))}), HUGE),
    Case("npz-empty", lambda d, o: _bytes(d / "model.npz", b""), r"empty|" + CORRUPT),
    Case("npz-corrupt-zip", lambda d, o: _bytes(
        d / "model.npz", savez(d / "model.npz", **numpy_state()).read_bytes()[:600]), CORRUPT),
    Case("npz-zip-bomb", _npz_bomb, HUGE),
    Case("npz-jax-rnn-1e12-layers", lambda d, o: jax_rnn(d / "model.npz", num_layers=10**12),
         r"num_layers|layers|size"),
    Case("npz-jax-rnn-negative-size", lambda d, o: jax_rnn(d / "model.npz", hidden_size=-4),
         r"negative|hidden_size|size"),
    Case("npz-object-array", lambda d, o: savez(
        d / "model.npz", weight_ih_l0=np.array([None, {"a": 1}], dtype=object)),
        r"pickle|object"),
]

ONNX = [
    Case("onnx-garbage", lambda d, o: _bytes(
        d / "model.onnx", random.Random(1).randbytes(4096)), r"onnx|protobuf|pars|decod|"
        + CORRUPT),
    Case("onnx-directions-mismatch", lambda d, o: onnx_model(_onnx_directions, d / "model.onnx"),
         r"direction|shape|mismatch|\b[WRB]\b"),
    Case("onnx-external-parent", _onnx_external(lambda o: "../sibling/weights.bin"),
         r"external|" + ESCAPE),
    Case("onnx-external-absolute", _onnx_external(lambda o: str(o / "weights.bin")),
         r"external|" + ESCAPE),
    Case("onnx-dims-past-data", lambda d, o: onnx_model(_onnx_dims, d / "model.onnx"),
         r"raw_data|bytes|size|shape|dims|truncat|corrupt"),
]

def keras_h5(path: Path, change: Callable[..., None] | None = None) -> Path:
    """The LSTM as a Keras 2 ``CuDNNLSTM`` HDF5 file (``model_weights/lstm_1/lstm_1/*:0``),
    laid out so that its weights are torch's exactly; ``change(layer group, names)`` then
    tampers with it."""
    import h5py

    state = numpy_state()
    hidden, inputs = state["weight_hh_l0"].shape[1], state["weight_ih_l0"].shape[1]
    weights = {
        "kernel:0": np.hstack([b.reshape(inputs, hidden)
                               for b in np.split(state["weight_ih_l0"], 4)]),
        "recurrent_kernel:0": np.hstack(np.split(state["weight_hh_l0"], 4)),
        "bias:0": np.concatenate([state["bias_ih_l0"], state["bias_hh_l0"]]),
    }
    with h5py.File(path, "w") as handle:
        root = handle.create_group("model_weights")
        root.attrs["layer_names"] = np.array([b"lstm_1"])
        root.attrs["keras_version"] = b"2.3.1"
        group = root.create_group("lstm_1")
        names = [f"lstm_1/{key}" for key in weights]
        group.attrs["weight_names"] = np.array([n.encode() for n in names])
        for key, value in zip(names, weights.values()):
            group.create_dataset(key, data=value)
        if change is not None:
            change(group, names)
    return path


def _h5_external_link(d: Path, o: Path) -> Path:
    import h5py

    with h5py.File(o / "weights.h5", "w") as outside:
        outside.create_dataset("kernel", data=np.ones((3, 16), np.float32))

    def link(group, names) -> None:
        del group[names[0]]
        group[names[0]] = h5py.ExternalLink("../sibling/weights.h5", "/kernel")

    return keras_h5(d / "model.h5", link)


def _h5_external_storage(d: Path, o: Path) -> Path:
    (o / "raw.bin").write_bytes(bytes(3 * 16 * 4))

    def external_storage(group, names) -> None:
        del group[names[0]]
        group.create_dataset(names[0], shape=(3, 16), dtype="f4",
                             external=[("../sibling/raw.bin", 0, 3 * 16 * 4)])

    return keras_h5(d / "model.h5", external_storage)


def _h5_huge(group, names) -> None:
    del group[names[0]]
    group.create_dataset(names[0], shape=(1 << 16, 1 << 16), dtype="f4")  # 16 GiB, no data


def _h5_soft_loop(group, names) -> None:
    import h5py

    del group[names[0]]
    group[names[0]] = h5py.SoftLink(f"{group.name}/{names[0]}")  # itself


HDF5 = [
    Case("h5-soft-link-loop", lambda d, o: keras_h5(d / "model.h5", _h5_soft_loop), CYCLE),
    Case("h5-external-link", _h5_external_link, ESCAPE),
    Case("h5-external-storage", _h5_external_storage, r"external|" + ESCAPE),
    Case("h5-huge-shape", lambda d, o: keras_h5(d / "model.h5", _h5_huge), HUGE),
    Case("h5-garbage", lambda d, o: _bytes(d / "model.h5", random.Random(2).randbytes(4096)),
         r"hdf5|" + CORRUPT),
    Case("h5-truncated", lambda d, o: _bytes(
        d / "model.h5", keras_h5(d / "model.h5").read_bytes()[:1500]), r"hdf5|" + CORRUPT),
]

PATHS = [
    Case("path-directory", lambda d, o: _directory(d / "model.pt"), r"directory"),
    Case("path-missing", lambda d, o: d / "missing.pt", r"not exist|no such|not found"),
    Case("path-fifo", lambda d, o: _fifo(d / "x.pt"),
         r"fifo|pipe|not a (?:regular )?file|special"),
]

CASES = SHARDED + TORCHSCRIPT + TORCH + SAFETENSORS + NPZ + ONNX + HDF5 + PATHS


def _sharded(d: Path, o: Path) -> Path:
    from safetensors.torch import save_file

    weight_map = {}
    for number, keys in enumerate((list(lstm_state())[:2], list(lstm_state())[2:]), 1):
        shard = f"model-0000{number}-of-00002.safetensors"
        save_file({k: lstm_state()[k] for k in keys}, d / shard)
        weight_map.update(dict.fromkeys(keys, shard))
    return index(d / "model.safetensors.index.json", weight_map)


def _safetensors(d: Path, o: Path) -> Path:
    from safetensors.torch import save_file

    save_file(lstm_state(), d / "model.safetensors")
    return d / "model.safetensors"


def _jax_rnn(d: Path, o: Path) -> Path:
    from jaxlstm.formats.jax_rnn import write_npz

    write_npz(numpy_state(), d / "model.npz")
    return d / "model.npz"


def _npz_deflated(d: Path, o: Path) -> Path:
    # The bomb's machinery (npy headers, write_zip, a Deflated member) on the real weights.
    arrays = {f"{k}.npy": npy(v.shape, v.tobytes()) for k, v in numpy_state().items()}
    arrays["weight_ih_l0.npy"] = hostile.zeros_deflated(0, arrays["weight_ih_l0.npy"])
    return write_zip(d / "model.npz", arrays)


def _torchscript_deflated(d: Path, o: Path) -> Path:
    # The pickle and zip writers, and a deflated record: the TorchScript cases' machinery.
    record = next(v for k, v in members(scripted()).items() if k.endswith("/data/0"))
    return torchscript(d / "scripted.pt", records={"0": hostile.zeros_deflated(0, record)})


def _torch_saved(d: Path, o: Path) -> Path:
    torch.save({"epoch": 3, "state_dict": lstm_state()}, d / "model.pt")
    return d / "model.pt"


CONTROLS = [
    Case("pt", _torch_saved, ""),
    Case("pt-rewritten", lambda d, o: torch_zip(d / "model.pt", lstm_tensors()), ""),
    Case("torchscript", lambda d, o: _bytes(d / "scripted.pt", scripted()), ""),
    Case("torchscript-rewritten", _torchscript_deflated, ""),
    Case("safetensors", _safetensors, ""),
    Case("safetensors-rewritten", lambda d, o: safetensors_entries(
        d / "model.safetensors", f32_entries()), ""),
    Case("sharded", _sharded, ""),
    Case("onnx", lambda d, o: onnx_model(path=d / "model.onnx"), ""),
    Case("npz", lambda d, o: savez(d / "model.npz", **numpy_state()), ""),
    Case("npz-jax-rnn", _jax_rnn, ""),
    Case("npz-rewritten", _npz_deflated, ""),
    Case("keras-h5", lambda d, o: keras_h5(d / "model.h5"), ""),
]


# --- running them --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Site:
    """``case/`` holds the crafted file; ``sibling/`` beside it what must stay unread."""

    root: Path
    case: Path
    outside: Path

    def request(self, path: Path, argv: tuple[str, ...] | None = None) -> hostile.Request:
        return hostile.Request(path=str(path), case_dir=str(self.case),
                               guarded=(str(self.outside), "/etc/passwd"),
                               log=str(self.root / "logs" / "child.log"), argv=argv)


@pytest.fixture
def site(tmp_path: Path) -> Site:
    from safetensors.torch import save_file

    site = Site(tmp_path, tmp_path / "case", tmp_path / "sibling")
    for directory in (site.case, site.outside, tmp_path / "logs"):
        directory.mkdir()
    (site.outside / "secret.txt").write_text(SECRET)
    save_file(lstm_state(), site.outside / "x.safetensors")
    return site


def contained(result: hostile.Result, site: Site) -> None:
    """The child finished in time, opened nothing outside, ran nothing."""
    assert result.failure is None, f"the child {result.failure}; stderr:\n{result.stderr[-2000:]}"
    assert not result.violations, f"outside the case directory: {result.violations}"
    assert not result.native_opens, f"opened beside the case directory: {result.native_opens}"
    assert not (site.outside / "pwned").exists(), "the payload ran"
    assert (site.outside / "secret.txt").read_text() == SECRET


def reasons(text: str, site: Site, path: Path) -> str:
    """``text`` without the paths under the test's directory and the file's name: words in
    those (``pt_empty0``, ``safetensors.index.json``) must not pass for a reason."""
    text = re.sub(re.escape(str(site.root)) + r"[^\s'\"]*", "<path>", text)
    return text.replace(path.name, "<file>")


def refused(entry: dict, path: Path, case: Case, kind: type[Exception], site: Site) -> None:
    assert not entry["ok"], f"accepted the file: {entry['summary']}"
    first = entry["message"].splitlines()[0] if entry["message"] else ""
    got = f"{entry['type']}: {first}"
    is_kind = entry["checkpoint_error"] if kind is not ValueError else entry["value_error"]
    assert is_kind, f"expected {kind.__name__}, got {got}"
    assert path.name in entry["message"], f"the message does not name the file: {got}"
    assert re.search(case.reason, reasons(entry["message"], site, path), re.I), \
        f"not the expected reason: {got}"
    assert not FORBIDDEN.search(entry["message"]), f"advises an unsafe load: {got}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_api_refuses(site: Site, case: Case) -> None:
    from jaxlstm.files import CheckpointError

    path = case.build(site.case, site.outside)
    result = hostile.run(site.request(path))
    contained(result, site)
    read, port = result.entries["read_checkpoint"], result.entries["from_checkpoint"]
    if case.stage == "read":
        refused(read, path, case, CheckpointError, site)
        refused(port, path, case, CheckpointError, site)
    else:
        assert read["ok"] or read["checkpoint_error"], f"{read['type']}: {read['message']}"
        refused(port, path, case, ValueError, site)


@pytest.mark.parametrize("command", ["inspect", "convert", "parity"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_cli_refuses(site: Site, case: Case, command: str) -> None:
    path = case.build(site.case, site.outside)
    output = site.case / "converted.safetensors"
    argv = (command, str(path), *([str(output)] if command == "convert" else []))
    result = hostile.run(site.request(path, argv))
    contained(result, site)
    stderr = result.stderr
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr, f"a traceback: {lines[-1] if lines else ''}"
    assert result.code == 1, f"exit status {result.code}; stderr: {stderr[-500:]}"
    shown = stderr
    if case.stage == "read" or command != "inspect":
        assert re.search(rf"^jaxlstm {command}: error: ", stderr, re.M), \
            f"no error line; stderr: {stderr[-300:]}"
    else:  # inspect may list the inconsistent LSTM under the file's name, with the problem
        shown = result.stdout + stderr
    assert path.name in shown, f"the file is not named: {shown[-500:]}"
    assert re.search(case.reason, reasons(stderr, site, path), re.I), \
        f"not the expected reason: {stderr[-500:]}"
    assert not FORBIDDEN.search(stderr), f"advises an unsafe load: {stderr[-500:]}"
    assert not output.exists(), "converted a hostile file"


@pytest.mark.parametrize("case", CONTROLS, ids=[c.id for c in CONTROLS])
def test_valid_files_read_in_the_same_sandbox(site: Site, case: Case) -> None:
    path = case.build(site.case, site.outside)
    result = hostile.run(site.request(path))
    contained(result, site)
    for name, entry in result.entries.items():
        assert entry["ok"], f"{name}: {entry['type']}: {entry['message'][:500]}"
    read = result.entries["read_checkpoint"]["summary"]
    assert {k.rsplit(".", 1)[-1] for k in read["keys"]} >= set(lstm_state()), read["keys"]
    assert read["sum"] == pytest.approx(weight_sum(), rel=1e-6)
    output = site.case / "converted.safetensors"
    for argv in (("inspect", str(path)), ("convert", str(path), str(output))):
        cli = hostile.run(site.request(path, argv))
        contained(cli, site)
        assert cli.code == 0, f"{argv[0]}: {cli.stderr[-1000:]}"
    assert output.is_file()


def test_the_sandbox_sees_an_open_beside_the_case(site: Site) -> None:
    """The audit hook (Python's opens) and inotify (any open) both report the secret read."""
    result = hostile.run(site.request(site.outside / "secret.txt"))
    assert any("secret.txt" in v for v in result.violations), result.violations
    assert "secret.txt" in result.native_opens


def test_cli_in_a_real_interpreter(site: Site) -> None:
    """``python -m jaxlstm`` itself, once, as the forked children emulate it."""
    path = _bytes(site.case / "model.pt", b"\x13\x37 not a checkpoint")
    done = subprocess.run([sys.executable, "-m", "jaxlstm", "inspect", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.startswith("jaxlstm inspect: error: ") and "model.pt" in done.stderr
    assert "Traceback" not in done.stderr
