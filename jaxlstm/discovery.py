"""The LSTMs inside a whole-model state dict: find them, list them, pick one by its prefix.

Works on flat ``{dotted key: array}`` dicts (what :func:`jaxlstm.files.read_checkpoint` returns,
or ``model.state_dict()``); nested dicts are flattened first. Wrapper names are removed from
the keys: ``_orig_mod.`` (``torch.compile``), ``_fsdp_wrapped_module.``,
``_checkpoint_wrapped_module.`` wherever they occur, and ``module.`` (``DataParallel``) at any
level where every key below that point has it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from jaxlstm.arrays import (
    WRAPPER_SEGMENTS,
    describe,
    flatten_arrays,
    infer_config,
    is_array,
    recurrent_kind,
    to_numpy,
)
from jaxlstm.config import LSTMCellConfig, LSTMConfig, check_params


class FoundLSTM(NamedTuple):
    """One ``nn.LSTM`` / ``nn.LSTMCell`` found in a state dict by :func:`find_lstms`."""

    prefix: str
    """Key prefix of its weights, wrappers removed: ``"encoder.rnn."``, or ``""`` at the root."""
    config: LSTMConfig | LSTMCellConfig | None
    """The architecture its weights determine (``batch_first``/``dropout`` at torch's
    defaults); ``None`` when the weights do not determine one."""
    param_count: int
    """Number of scalar parameters."""
    weights: dict[str, np.ndarray]
    """Its weights under torch's names (no prefix), as numpy arrays: they load into the
    matching ``nn.LSTM``/``nn.LSTMCell`` with ``strict=True``."""
    problem: str | None = None
    """Why the weights do not form a valid module (a missing, extra or mis-shaped key), or
    ``None``. Only :func:`find_lstms` with ``strict=False`` returns such entries."""


def _bare(path: str) -> str:
    """A dotted path with every wrapper name removed."""
    return ".".join(part for part in path.split(".") if part and part not in WRAPPER_SEGMENTS)


def _strip_module(entries: list[list[str]], depth: int = 0) -> None:
    """Remove, in place, a ``module`` segment that every key below a point shares."""
    while entries and all(len(s) > depth + 1 and s[depth] == "module" for s in entries):
        for segments in entries:
            del segments[depth]
    groups: dict[str, list[list[str]]] = {}
    for segments in entries:
        if len(segments) > depth + 1:
            groups.setdefault(segments[depth], []).append(segments)
    for group in groups.values():
        _strip_module(group, depth + 1)


def unwrap_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """``state_dict`` with the names that model wrappers add removed from every key.

    **Arguments:**

    - ``state_dict``: ``{key: array}`` (nested dicts are flattened to dotted keys first).

    Removes ``_orig_mod.``, ``_fsdp_wrapped_module.``, ``_checkpoint_wrapped_module.``
    wherever they occur, and ``module.`` where every key below that point has it
    (``DataParallel`` inside a checkpoint at any depth). Two keys that become the same name
    raise a ``ValueError`` naming both.
    """
    flat = _flat(state_dict)
    segments = {raw: [p for p in raw.split(".") if p not in WRAPPER_SEGMENTS - {"module"}]
                for raw in flat}
    _strip_module(list(segments.values()))
    unwrapped: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for raw, parts in segments.items():
        clean = ".".join(parts)
        if clean in unwrapped:
            raise ValueError(
                f"keys {origin[clean]!r} and {raw!r} both name {clean!r} once the wrapper "
                "prefixes (module., _orig_mod., ...) are removed; pass the state dict of one "
                "model, not of a model and its wrapper"
            )
        unwrapped[clean] = flat[raw]
        origin[clean] = raw
    return unwrapped


def _flat(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"expected a state dict (a mapping of arrays), got "
                        f"{type(state_dict).__name__}")
    if all(is_array(v) for v in state_dict.values()):
        return {str(k): v for k, v in state_dict.items()}
    return flatten_arrays(state_dict)[0]


def _modules(state_dict: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{prefix: {parameter name: value}}`` for every module that looks like an LSTM.

    All of a module's direct keys are kept, so that a stray key is reported, not dropped.
    ``nn.GRU``/``nn.RNN`` (and their cells) are left out by their shapes.
    """
    modules: dict[str, dict[str, Any]] = {}
    for key, value in unwrap_state_dict(state_dict).items():
        head, _, name = key.rpartition(".")
        modules.setdefault(head + "." if head else "", {})[name] = value
    return {
        prefix: params for prefix, params in sorted(modules.items())
        if any(name == "weight_ih" or name.startswith("weight_ih_l") for name in params)
        and recurrent_kind(params) is None
    }


def _found(prefix: str, params: Mapping[str, Any], source: str, strict: bool) -> FoundLSTM:
    where = f"at prefix {prefix!r}" if prefix else "at the root"
    arrays = {name: to_numpy(value, prefix + name) for name, value in params.items()}
    count = sum(int(a.size) for a in arrays.values())
    try:
        config = infer_config(arrays)
    except ValueError as error:
        if strict:
            raise ValueError(f"{source}: the recurrent weights {where}: {error}") from error
        return FoundLSTM(prefix, None, count, arrays, str(error))
    kind = "LSTM" if isinstance(config, LSTMConfig) else "LSTMCell"
    try:
        check_params(
            {prefix + name: value for name, value in arrays.items()},
            {prefix + name: shape for name, shape in config.param_shapes().items()},
            what=f"{source}: the {kind} {where}:",
        )
    except ValueError as error:
        if strict:
            raise
        return FoundLSTM(prefix, config, count, arrays, str(error).split(":\n", 1)[-1].strip())
    return FoundLSTM(prefix, config, count, arrays)


def find_lstms(
    state_dict: Mapping[str, Any], *, source: str = "state dict", strict: bool = True
) -> list[FoundLSTM]:
    """Every ``nn.LSTM`` and ``nn.LSTMCell`` inside a (whole-model) state dict.

    **Arguments:**

    - ``state_dict``: ``{key: tensor or array}``, e.g. ``model.state_dict()`` of a model with
      LSTM submodules, the contents of a checkpoint file (see :mod:`jaxlstm.files`), or a
      training checkpoint nested to any depth (flattened to dotted keys).
    - ``source``: how errors name the state dict, e.g. ``"file 'model.pt'"``.
    - ``strict``: raise for a module whose weights are missing, extra or mis-shaped (default);
      with ``False`` such a module is returned with :attr:`FoundLSTM.problem` set.

    Returns one :class:`FoundLSTM` per module, sorted by prefix. Modules are recognised by
    torch's key pattern (``<prefix>weight_ih_l0``, ``<prefix>weight_ih``, ...); wrapper names
    are removed from the prefixes (see :func:`unwrap_state_dict`). ``nn.GRU``/``nn.RNN``
    weights are told apart by their shapes and skipped; optimizer state (integer-keyed
    ``exp_avg``...) never forms such keys.
    """
    return [_found(p, params, source, strict) for p, params in _modules(state_dict).items()]


def select_lstm(
    state_dict: Mapping[str, Any],
    prefix: str | None = None,
    *,
    source: str = "the state dict",
    container: str | None = None,
) -> FoundLSTM:
    """The one LSTM at ``prefix`` in ``state_dict``, its config and its torch-named weights.

    **Arguments:**

    - ``state_dict``: a whole-model state dict or checkpoint contents (wrappers such as
      ``module.`` and nesting are handled).
    - ``prefix``: the module's key prefix, with or without the trailing dot or the wrapper
      names (``"encoder.rnn"``, ``"module.encoder.rnn."``); a unique tail of it is enough
      (``"encoder.rnn."`` for ``"state_dict.model.encoder.rnn."``); ``""`` for a bare LSTM;
      ``None`` when there is only one.
    - ``source``: how errors name the state dict.
    - ``container``: the dotted path in the file that held every tensor of ``state_dict`` and was
      dropped when reading it (``Checkpoint.wrapper``, e.g. ``"model_state.encoder"``), so that
      a prefix through it (``"model_state.encoder.rnn."`` or ``"encoder.rnn."``) still fits.

    Only the chosen module's weights are checked, so a broken unrelated module does not get in
    the way. Errors list the prefixes available.
    """
    candidates = _modules(state_dict)
    if not candidates:
        keys = list(_flat(state_dict))
        shown = ", ".join(map(repr, keys[:5])) + (", ..." if len(keys) > 5 else "")
        raise ValueError(
            f"no LSTM or LSTMCell weights in {source}: expected keys ending in 'weight_ih_l0' "
            f"(nn.LSTM) or 'weight_ih' (nn.LSTMCell); it holds {len(keys)} keys: {shown or '-'}"
        )
    chosen = _match(candidates, prefix, source, container)
    return _found(chosen, candidates[chosen], source, strict=True)


def _match(
    candidates: Mapping[str, Any], prefix: str | None, source: str, container: str | None
) -> str:
    listing = "\n  ".join(_listing(p, params) for p, params in candidates.items())
    if prefix is None:
        if len(candidates) == 1:
            return next(iter(candidates))
        raise ValueError(
            f"{source} holds {len(candidates)} LSTMs; choose one by its prefix (e.g. "
            f"{next(iter(candidates))!r}):\n  {listing}"
        )
    wanted = _bare(prefix.strip())
    paths = {p: _bare(f"{container}.{p}" if container else p) for p in candidates}
    exact = [p for p in candidates if wanted in (_bare(p), paths[p])]
    tails = [p for p in candidates if ("." + paths[p]).endswith("." + wanted) and wanted]
    matches = exact or tails
    if len(matches) == 1:
        return matches[0]
    shown = wanted + "." if wanted else "(root)"
    if matches:
        raise ValueError(f"prefix {shown!r} fits {len(matches)} LSTMs in {source}: "
                         f"{', '.join(map(repr, matches))}; give the full prefix")
    raise ValueError(f"no LSTM at prefix {shown!r} in {source}; found:\n  {listing}")


def _listing(prefix: str, params: Mapping[str, Any]) -> str:
    try:
        summary = describe(infer_config(params))
    except ValueError as error:
        summary = f"(unreadable: {error})"
    return f"{prefix or '(root)':<24} {summary}"


def lstm_prefixes(state_dict: Mapping[str, Any]) -> list[str]:
    """The prefixes of the LSTM-like modules in ``state_dict`` (checks nothing else)."""
    return list(_modules(state_dict))
