"""Checkpoints: model weights as safetensors with torch's names, training state with orbax.

- :func:`save_safetensors` / :func:`load_safetensors`: parameters only, keyed by torch's names
  (``weight_ih_l0``; ``lstm.weight_ih_l0`` inside a larger model), so
  ``torch_module.load_state_dict(safetensors.torch.load_file(path))`` loads the file directly,
  and a file torch wrote loads here. The file format and the atomic write are those of
  :mod:`jaxlstm.files`; this module maps modules and parameter trees to torch's names.
- :func:`save_train_state` / :func:`restore_train_state`: everything needed to resume training
  exactly (parameters, optimizer state, step), as an orbax checkpoint directory.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlstm import files
from jaxlstm.arrays import to_numpy


def _is_variables(tree: Mapping[str, Any]) -> bool:
    """Linen variables of parameters only: ``{'params': {...}}``."""
    return set(tree) == {"params"} and isinstance(tree["params"], Mapping)


def _param_tree(source: Any) -> Mapping[str, Any]:
    """The torch-named parameter tree of a module, Linen variables or params dict."""
    if isinstance(source, nnx.Module):
        return nnx.to_pure_dict(nnx.state(source, nnx.Param))
    if isinstance(source, Mapping):
        return source["params"] if _is_variables(source) else source
    raise TypeError(
        "expected an NNX module, Linen variables {'params': {...}} or a dict of torch-named "
        f"arrays, got {type(source).__name__}"
    )


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts to torch's dotted names: ``{'lstm': {'weight_ih_l0': w}}`` -> ``lstm.w...``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _rebuild(tree: Mapping[str, Any], fn: Callable[[str, Any], Any], prefix: str = "") -> dict:
    """``tree`` with each leaf replaced by ``fn(dotted name, leaf)``, keys kept as they are."""
    return {
        key: _rebuild(value, fn, f"{prefix}{key}.") if isinstance(value, Mapping)
        else fn(f"{prefix}{key}", value)
        for key, value in tree.items()
    }


def _check_names(
    found: Mapping[str, np.ndarray], expected: Mapping[str, Any], path: Path
) -> None:
    problems = []
    for name, leaf in expected.items():
        shape = tuple(np.shape(leaf))
        if name not in found:
            problems.append(f"missing key {name!r} (expected shape {shape})")
        elif found[name].shape != shape:
            problems.append(f"wrong shape for {name!r}: the model has {shape}, the file "
                            f"{found[name].shape}")
    problems += [
        f"unexpected key {name!r} (shape {found[name].shape})"
        for name in sorted(found) if name not in expected
    ]
    if problems:
        raise ValueError(
            f"{path} does not match the model's parameters:\n  " + "\n  ".join(problems)
        )


def _numeric(value: Any, name: str) -> np.ndarray:
    array = to_numpy(value, name)
    # Kind "V" covers ml_dtypes' bfloat16 / float8, which safetensors stores natively.
    if array.dtype.kind not in "biufcV" or array.dtype.names is not None:
        raise TypeError(f"{name!r} is not a numeric array (dtype {array.dtype})")
    return array


def save_safetensors(source: Any, path: str | os.PathLike, *, force: bool = False) -> Path:
    """Write parameters to a safetensors file under torch's names, atomically.

    **Arguments:**

    - ``source``: a :class:`jaxlstm.LSTM` / ``LSTMCell`` or any NNX module (its ``nnx.Param``s),
      Linen variables ``{'params': {...}}``, or a (nested) dict of arrays. Nested names are
      joined with ``.`` like torch's ``state_dict`` (``{'lstm': {...}, 'fc': {...}}`` ->
      ``lstm.weight_ih_l0``, ``fc.weight``); for torch to load the file, the names and layouts
      must be torch's (``nn.Linear``'s ``weight`` is the transpose of a Flax kernel).
    - ``path``: the file to write, in an existing directory. It is written to a temporary file
      beside it and renamed, so a crash never leaves a half-written checkpoint.
    - ``force``: replace an existing file (default: refuse with ``FileExistsError``).

    **Returns:** the path written. Dtypes are kept (``bfloat16`` included).
    """
    tensors = {
        name: _numeric(value, name) for name, value in _flatten(_param_tree(source)).items()
    }
    if not tensors:
        raise ValueError("no parameters to save: the source holds no arrays")
    return files.save_safetensors(tensors, path, force=force)


def load_safetensors(path: str | os.PathLike, into: Any = None) -> Any:
    """Read parameters from a safetensors file (ours or one torch wrote).

    **Arguments:**

    - ``path``: the file (read by :func:`jaxlstm.files.load_state_dict`, which also reads a
      ``torch.save`` file safely).
    - ``into``: where the weights go.

      - ``None``: return ``{name: jax array}`` with the file's names and dtypes.
      - an NNX module (e.g. :class:`jaxlstm.LSTM`): its ``nnx.Param``s are set in place (each
        keeps its dtype) and the module is returned.
      - Linen variables ``{'params': {...}}`` or a (nested) params dict: a new tree of the same
        structure and dtypes holding the file's values is returned.

    Every name must match with its shape: missing, unexpected and mis-shaped keys are all named
    in one error.
    """
    path = Path(path)
    arrays = files.load_state_dict(path)
    if into is None:
        return {name: jnp.asarray(value) for name, value in arrays.items()}
    tree = _param_tree(into)
    _check_names(arrays, _flatten(tree), path)

    def value(name: str, leaf: Any) -> jax.Array:
        return jnp.asarray(arrays[name], dtype=jnp.asarray(leaf).dtype)

    loaded = _rebuild(tree, value)
    if isinstance(into, nnx.Module):
        state = nnx.state(into, nnx.Param)
        nnx.replace_by_pure_dict(state, loaded)
        nnx.update(into, state)
        return into
    return {"params": loaded} if _is_variables(into) else loaded


def _state_tree(value: Any) -> Any:
    """NNX objects (modules, ``nnx.Optimizer``) are checkpointed through their ``nnx.state``."""
    return nnx.state(value) if isinstance(value, nnx.Pytree) else value


def save_train_state(
    directory: str | os.PathLike,
    params: Any,
    opt_state: Any,
    step: int,
    *,
    force: bool = False,
) -> Path:
    """Save a training state with orbax, synchronously: ``params``, ``opt_state`` and ``step``.

    **Arguments:**

    - ``directory``: the checkpoint directory to create (orbax writes it atomically).
    - ``params``: any pytree of arrays (e.g. Linen variables), or an NNX module (its whole
      ``nnx.state``, rng counters included, so dropout resumes exactly too).
    - ``opt_state``: the optax state, or an ``nnx.Optimizer``.
    - ``step``: the number of steps taken so far.
    - ``force``: replace an existing checkpoint at ``directory``.

    **Returns:** the absolute checkpoint path.
    """
    import orbax.checkpoint as ocp

    if not isinstance(step, (int, np.integer)) or isinstance(step, bool) or step < 0:
        raise TypeError(f"step must be a non-negative int, got {step!r}")
    directory = Path(directory).absolute()
    if directory.exists() and not force:
        raise FileExistsError(
            f"checkpoint {directory} already exists; pass force=True to replace it, or "
            "save each step to its own directory"
        )
    state = {"params": _state_tree(params), "opt_state": _state_tree(opt_state),
             "step": int(step)}
    with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as checkpointer:
        checkpointer.save(directory, args=ocp.args.StandardSave(state), force=force)
    return directory


def restore_train_state(
    directory: str | os.PathLike, params: Any, opt_state: Any
) -> tuple[Any, Any, int]:
    """Restore what :func:`save_train_state` wrote, into the structure of the given templates.

    **Arguments:**

    - ``directory``: the checkpoint directory.
    - ``params``, ``opt_state``: templates with the saved structure, shapes and dtypes, e.g. a
      fresh ``model.init(...)`` and ``tx.init(params)``; their values are not used, their
      shardings are (restored arrays land where the templates live). NNX modules and
      ``nnx.Optimizer``s are updated in place.

    **Returns:** ``(params, opt_state, step)``; NNX objects are returned updated.
    """
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    if not directory.is_dir():
        raise FileNotFoundError(f"no checkpoint directory at {directory}")
    template = {"params": _state_tree(params), "opt_state": _state_tree(opt_state), "step": 0}
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as checkpointer:
        try:
            restored = checkpointer.restore(directory, args=ocp.args.StandardRestore(abstract))
        except ValueError as error:
            raise ValueError(
                f"checkpoint {directory} does not match the params/opt_state templates; build "
                "them exactly as for the saved run (same model, same optimizer):\n"
                f"{error}"
            ) from error
    results = []
    for given, key in ((params, "params"), (opt_state, "opt_state")):
        if isinstance(given, nnx.Pytree):
            nnx.update(given, restored[key])
            results.append(given)
        else:
            results.append(restored[key])
    return results[0], results[1], int(restored["step"])
