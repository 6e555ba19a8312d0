"""Other libraries' LSTM weights <-> jaxlstm's torch-named parameters.

Every format maps to and from the one internal representation, a ``{torch name: array}``
dict (what :func:`jaxlstm.to_torch` returns and :func:`jaxlstm.from_torch` accepts). They
depend only on :mod:`jaxlstm.arrays`, :mod:`jaxlstm.config` and :mod:`jaxlstm.nnx`:

- :mod:`jaxlstm.formats.flax`: Flax Linen / NNX ``LSTMCell`` and ``OptimizedLSTMCell``.
- :mod:`jaxlstm.formats.keras`: Keras 3 ``LSTM`` and ``Bidirectional(LSTM)`` layers.
- :mod:`jaxlstm.formats.keras_h5`: Keras files (``.h5``/``.hdf5`` of Keras 1, 2 and tf.keras,
  Keras 3 ``.keras``/``.weights.h5``; ``LSTM``, ``CuDNNLSTM``, ``Bidirectional``), import only.
- :mod:`jaxlstm.formats.jax_rnn`: ``jax.experimental.rnn`` flat weights (layers, directions).
- :mod:`jaxlstm.formats.equinox`: Equinox ``LSTMCell``.
- :mod:`jaxlstm.formats.onnx`: ONNX ``LSTM`` nodes (import of any chain of them, in subgraphs
  too, and of ONNX Runtime's ``DynamicQuantizeLSTM``; export of an ``nn.LSTM`` as a model ONNX
  Runtime runs).

Where a format cannot hold the weights (two biases, a projection, several layers in a
single-cell format) the export raises instead of dropping anything. :func:`write` saves
torch-named weights in any of these formats, atomically.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from jaxlstm.writing import atomic_write, safetensors_bytes


class OutputFormat(NamedTuple):
    """A file format that :func:`write` produces."""

    name: str
    suffix: str
    description: str
    write: Callable[[Mapping[str, Any], Path, bool], None]
    """``write(state_dict, path, merge_biases)`` creates ``path``."""
    write_gates: Callable[[Mapping[str, Any], Path, bool, Any], None] | None = None
    """``write_gates(state_dict, path, merge_biases, gate_activation)`` for a format that can
    hold gates other than sigmoid (``None``: it cannot)."""


def _safetensors(state_dict: Mapping[str, Any], path: Path, merge_biases: bool) -> None:
    del merge_biases  # torch's own layout: both biases kept
    path.write_bytes(safetensors_bytes(state_dict))


def _flax(layout: str) -> Callable[[Mapping[str, Any], Path, bool], None]:
    def write_flax(state_dict: Mapping[str, Any], path: Path, merge_biases: bool) -> None:
        from jaxlstm.formats.flax import write_msgpack

        write_msgpack(state_dict, path, layout=layout, merge_biases=merge_biases)

    return write_flax


def _keras(state_dict: Mapping[str, Any], path: Path, merge_biases: bool,
           gate_activation: Any = "sigmoid") -> None:
    from jaxlstm.formats.keras import write_keras

    write_keras(state_dict, path, merge_biases=merge_biases, gate_activation=gate_activation)


def _equinox(state_dict: Mapping[str, Any], path: Path, merge_biases: bool) -> None:
    from jaxlstm.formats.equinox import write_equinox

    write_equinox(state_dict, path, merge_biases=merge_biases)


def _onnx(state_dict: Mapping[str, Any], path: Path, merge_biases: bool,
          gate_activation: Any = "sigmoid") -> None:
    from jaxlstm.formats.onnx import write_onnx

    del merge_biases  # ONNX's B holds both biases, like torch
    write_onnx(state_dict, path, gate_activation=gate_activation)


def _jax_rnn(state_dict: Mapping[str, Any], path: Path, merge_biases: bool) -> None:
    from jaxlstm.formats.jax_rnn import write_npz

    del merge_biases  # two biases, like torch
    write_npz(state_dict, path)


OUTPUT_FORMATS: dict[str, OutputFormat] = {
    f.name: f for f in (
        OutputFormat("safetensors", ".safetensors", "torch names; loads into nn.LSTM/LSTMCell",
                     _safetensors),
        OutputFormat("flax", ".msgpack", "Flax Linen LSTMCell/OptimizedLSTMCell variables",
                     _flax("linen")),
        OutputFormat("flax-nnx", ".msgpack", "Flax NNX LSTMCell parameters (pure dict)",
                     _flax("nnx")),
        OutputFormat("flax-nnx-optimized", ".msgpack",
                     "Flax NNX OptimizedLSTMCell parameters (pure dict)", _flax("nnx-optimized")),
        OutputFormat("keras", ".keras", "Keras 3 model: Input, then LSTM or Bidirectional(LSTM)",
                     _keras, _keras),
        OutputFormat("equinox", ".eqx", "Equinox LSTMCell leaves (eqx.tree_serialise_leaves)",
                     _equinox),
        OutputFormat("jax-rnn", ".npz", "jax.experimental.rnn flat weights and sizes", _jax_rnn),
        OutputFormat("onnx", ".onnx", "ONNX model of LSTM nodes (inputs input, h0, c0)", _onnx,
                     _onnx),
    )
}


def format_for(path: str | os.PathLike[str], name: str | None = None) -> OutputFormat:
    """The output format named ``name``, or the one ``path``'s suffix implies.

    Raises ``ValueError`` for an unknown name, or a suffix that names no format or several.
    """
    choices = ", ".join(OUTPUT_FORMATS)
    if name is not None:
        if name not in OUTPUT_FORMATS:
            raise ValueError(f"unknown output format {name!r}; choose one of: {choices}")
        return OUTPUT_FORMATS[name]
    suffix = Path(path).suffix
    matches = [f for f in OUTPUT_FORMATS.values() if f.suffix == suffix]
    if len(matches) == 1:
        return matches[0]
    if matches:
        names = ", ".join(f.name for f in matches)
        raise ValueError(f"{suffix!r} files can be several formats ({names}); choose one")
    raise ValueError(
        f"cannot tell the output format from {os.fspath(path)!r}; use a suffix such as "
        f".safetensors, .keras, .eqx, .npz, or choose the format ({choices})"
    )


def write(
    state_dict: Mapping[str, Any],
    path: str | os.PathLike[str],
    fmt: str | OutputFormat | None = None,
    *,
    merge_biases: bool = False,
    force: bool = False,
    gate_activation: Any = "sigmoid",
) -> Path:
    """Save torch-named weights as ``fmt`` (default: from ``path``'s suffix), atomically.

    **Arguments:**

    - ``state_dict``: ``{torch name: array}`` of one ``nn.LSTM`` or ``nn.LSTMCell``.
    - ``path``: the output file; it is created through a temporary file and a rename, so a
      failure leaves nothing behind.
    - ``fmt``: a name from :data:`OUTPUT_FORMATS` or an :class:`OutputFormat`.
    - ``merge_biases``: for one-bias formats, store ``bias_ih + bias_hh`` (see
      :func:`jaxlstm.formats._common.one_bias`).
    - ``force``: replace an existing file.
    - ``gate_activation``: the LSTM's gates, ``"sigmoid"`` or a ``HardSigmoid``. Only
      ``onnx`` (any ``HardSigmoid``) and ``keras`` (Keras 3's, ``HardSigmoid(1/6, 0.5)``) can
      hold hard-sigmoid gates; every other format raises, as it would compute sigmoid gates.
    """
    if not isinstance(fmt, OutputFormat):
        fmt = format_for(path, fmt)
    if gate_activation == "sigmoid":
        def writer(temporary: Path) -> None:
            fmt.write(state_dict, temporary, merge_biases)
    elif fmt.write_gates is None:
        raise ValueError(
            f"this LSTM's gates are {gate_activation}, and the {fmt.name} format holds torch's "
            "sigmoid gates only (its weights would compute something else); write onnx (any "
            "hard sigmoid) or keras (Keras 3's, alpha 1/6)")
    else:
        def writer(temporary: Path) -> None:
            fmt.write_gates(state_dict, temporary, merge_biases, gate_activation)
    return atomic_write(path, writer, force=force)
