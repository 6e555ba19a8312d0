"""Flax Linen modules: thin shells of torch-named parameters over :mod:`jaxlstm.functional`.

``jaxlstm.linen.LSTM``, ``BiLSTM`` and ``LSTMCell`` take the same arguments as the NNX modules
(and torch's modules) and compute the same numbers through the same functions. Their parameters
are created with ``self.param`` under torch's names and shapes, so ``variables['params']`` *is*
the torch ``state_dict`` (nested under the module's name inside a larger model)::

    >>> import jax, jax.numpy as jnp
    >>> from jaxlstm import linen
    >>> lstm = linen.LSTM(10, 20, num_layers=2)
    >>> variables = lstm.init(jax.random.key(0), jnp.ones((5, 3, 10)))
    >>> sorted(variables['params'])[:2]
    ['bias_hh_l0', 'bias_hh_l1']
    >>> out, (h_n, c_n) = lstm.apply(variables, jnp.ones((5, 3, 10)))

Dropout between layers draws from the ``'dropout'`` rng stream and is switched off by
``deterministic=True`` (attribute or call argument), as in ``flax.linen.Dropout``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxlstm import functional
from jaxlstm.arrays import check_weights, resolve_param_dtype
from jaxlstm.config import LSTMCellConfig, LSTMConfig, check_dtypes, check_lengths_at_run_time

Array = jax.Array
State = tuple[Array, Array]


@functools.lru_cache(maxsize=256, typed=True)
def _lstm_config(*args: Any) -> LSTMConfig:
    # Linen clones modules often; caching validates (and warns) once per distinct configuration.
    return LSTMConfig.create(*args)


@functools.lru_cache(maxsize=256, typed=True)
def _cell_config(*args: Any) -> LSTMCellConfig:
    return LSTMCellConfig.create(*args)


def torch_uniform(hidden_size: int):
    """torch's LSTM init as a Linen initializer: ``U(-1/sqrt(hidden_size), 1/sqrt(hidden_size))``.

    The same distribution as :func:`jaxlstm.functional.init_params`, one parameter at a time.
    """
    bound = 1.0 / np.sqrt(hidden_size)

    def init(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
        return jax.random.uniform(key, shape, dtype, minval=-bound, maxval=bound)

    return init


class _TorchNamedParams(nn.Module):
    """Creates one Linen param per torch parameter name of ``self.config``."""

    def _torch_params(self, x: Array, hx: State | None) -> dict[str, Array]:
        """The parameters, after torch's dtype check of ``x`` and ``hx`` in ``apply`` (unless
        ``dtype`` is set, which casts everything to that compute dtype)."""
        config = self.config
        init = torch_uniform(config.hidden_size)
        params = {
            name: self.param(name, init, shape, self.param_dtype)
            for name, shape in config.param_shapes().items()
        }
        if self.dtype is None and not self.is_initializing():
            # init only creates the parameters, whatever dtype its example input has.
            check_dtypes(config, next(iter(params.values())).dtype, x, hx)
        return params


class _LSTMBase(_TorchNamedParams):
    """The forward pass shared by :class:`LSTM` and :class:`BiLSTM`."""

    @property
    def config(self) -> LSTMConfig:
        return _lstm_config(
            self.input_size, self.hidden_size, self.num_layers, self.bias, self.batch_first,
            self.dropout, self.bidirectional, self.proj_size, self.gate_activation,
        )

    def __post_init__(self) -> None:
        self.config  # noqa: B018 - validate at construction, with torch's errors, like torch
        super().__post_init__()

    @nn.compact
    def __call__(
        self,
        x: Array,
        hx: State | None = None,
        *,
        seq_lengths: Array | None = None,
        deterministic: bool | None = None,
        check_lengths: bool = False,
    ) -> tuple[Array, State]:
        config = self.config
        params = self._torch_params(x, hx)
        if check_lengths and seq_lengths is not None:
            check_lengths_at_run_time(seq_lengths, x, batch_first=config.batch_first)
        deterministic = self.deterministic if deterministic is None else deterministic
        uses_dropout = config.dropout > 0 and config.num_layers > 1
        dropout_rng = None
        if uses_dropout and deterministic is None:
            if not self.is_initializing():
                raise ValueError(
                    f"{type(self).__name__} has dropout={config.dropout} between layers, so it "
                    "needs deterministic=True (evaluation) or deterministic=False (training, "
                    "with a 'dropout' rng), as a module attribute or a call argument"
                )
            # Creating the parameters does not depend on dropout; init needs no mode or rng.
            deterministic = True
        if uses_dropout:
            if not deterministic:
                if not self.has_rng("dropout"):
                    raise ValueError(
                        f"{type(self).__name__} is in training mode (deterministic=False) with "
                        f"dropout={config.dropout}, so it needs a 'dropout' rng: "
                        "apply(..., rngs={'dropout': key}), or deterministic=True to evaluate"
                    )
                dropout_rng = self.make_rng("dropout")
        with jax.named_scope(type(self).__name__):
            return functional.lstm(
                params, x, hx, config=config, seq_lengths=seq_lengths, dropout_rng=dropout_rng,
                deterministic=bool(deterministic) if uses_dropout else True,
                precision=self.precision, dtype=self.dtype, unroll=self.unroll,
                remat=self.remat, wavefront=getattr(self, "wavefront", False),
            )


class LSTM(_LSTMBase):
    r"""Multi-layer LSTM as a Flax Linen module, argument-for-argument ``torch.nn.LSTM``.

    Same equations, shapes and parameter names as :class:`jaxlstm.LSTM` (the NNX module), computed
    by :func:`jaxlstm.functional.lstm`.

    **Arguments:**

    - ``input_size``, ``hidden_size``, ``num_layers``, ``bias``, ``batch_first``, ``dropout``,
      ``bidirectional``, ``proj_size``: torch's, with torch's defaults and validation.
    - ``param_dtype``: dtype of the parameters (default float32).
    - ``dtype``: compute dtype. Default ``None``: like torch, ``x``, ``h_0`` and ``c_0`` must have
      the parameters' dtype (a mismatch raises torch's error); given, everything is cast to it.
    - ``precision``: matmul precision (``"highest"`` for full float32 on GPU/TPU).
    - ``unroll``: unroll factor of the forward recurrence loop (default 1).
    - ``remat``: recompute the forward in chunks during backward to bound activation memory
      (``True``: ``~sqrt(L)``-step chunks, or an int chunk length; default ``False``).
    - ``wavefront``: two or more unidirectional layers in one loop, each layer one step behind
      the one below (default ``False``; see :func:`jaxlstm.functional.lstm`).
    - ``deterministic``: ``True`` disables dropout; may instead be passed at call time (the call
      argument wins). Needed only when ``dropout > 0`` and ``num_layers > 1``.
    - ``gate_activation``: ``"sigmoid"`` (torch's, the default) or ``jaxlstm.HardSigmoid(alpha,
      beta)``, as in :class:`jaxlstm.LSTM`.

    **Call:** ``output, (h_n, c_n) = lstm.apply(variables, x, hx=None, *, seq_lengths=None,
    deterministic=None, rngs={'dropout': key})``

    - ``x``: ``(L, N, I)`` (``(N, L, I)`` batch-first) or unbatched ``(L, I)``.
    - ``hx``: ``(h_0, c_0)``, ``h_0 (D*num_layers, N, H_out)``, ``c_0 (D*num_layers, N, H)``;
      zeros when omitted.
    - ``seq_lengths``: int ``(N,)``, valid length of each sequence (torch ``PackedSequence``
      semantics).
    - ``check_lengths``: also check traced ``seq_lengths`` against ``[1, L]`` when the
      computation runs, as in :class:`jaxlstm.LSTM`.
    - ``output``: ``(L, N, D*H_out)``; ``h_n``: ``(D*num_layers, N, H_out)``; ``c_n``:
      ``(D*num_layers, N, H)``.

    **Parameters** (collection ``'params'``): ``weight_ih_l{k}``, ``weight_hh_l{k}``,
    ``bias_ih_l{k}``, ``bias_hh_l{k}``, ``weight_hr_l{k}`` (suffix ``_reverse`` for the reverse
    direction) with torch's shapes and init ``U(-1/sqrt(H), 1/sqrt(H))``.
    """

    input_size: int
    hidden_size: int
    num_layers: int = 1
    bias: bool = True
    batch_first: bool = False
    dropout: float = 0.0
    bidirectional: bool = False
    proj_size: int = 0
    param_dtype: Any = jnp.float32
    dtype: Any = None
    precision: Any = None
    unroll: int = 1
    remat: bool | int = False
    wavefront: bool = False
    deterministic: bool | None = None
    gate_activation: Any = "sigmoid"


class BiLSTM(_LSTMBase):
    """Bidirectional Linen LSTM: :class:`LSTM` with ``bidirectional=True``, other arguments alike.

    ``output[..., :H_out]`` is the forward direction, ``output[..., H_out:]`` the reverse one;
    ``h_n[2k]`` / ``h_n[2k + 1]`` are layer ``k``'s forward / reverse final states.
    """

    input_size: int
    hidden_size: int
    num_layers: int = 1
    bias: bool = True
    batch_first: bool = False
    dropout: float = 0.0
    proj_size: int = 0
    param_dtype: Any = jnp.float32
    dtype: Any = None
    precision: Any = None
    unroll: int = 1
    remat: bool | int = False
    deterministic: bool | None = None
    gate_activation: Any = "sigmoid"

    @property
    def bidirectional(self) -> bool:
        return True


class LSTMCell(_TorchNamedParams):
    """One LSTM step as a Flax Linen module, argument-for-argument ``torch.nn.LSTMCell``.

    **Arguments:** ``input_size``, ``hidden_size``, ``bias`` (torch's); ``param_dtype``,
    ``dtype``, ``precision``, ``gate_activation`` as in :class:`LSTM`.

    **Call:** ``h_1, c_1 = cell.apply(variables, x, hx=None)`` with ``x`` ``(N, I)`` or ``(I,)``
    and ``hx = (h_0, c_0)``, each ``(N, H)`` or ``(H,)`` (zeros when omitted).

    **Parameters:** ``weight_ih (4H, I)``, ``weight_hh (4H, H)``, ``bias_ih (4H,)``,
    ``bias_hh (4H,)``, init ``U(-1/sqrt(H), 1/sqrt(H))``.
    """

    input_size: int
    hidden_size: int
    bias: bool = True
    param_dtype: Any = jnp.float32
    dtype: Any = None
    precision: Any = None
    gate_activation: Any = "sigmoid"

    @property
    def config(self) -> LSTMCellConfig:
        return _cell_config(self.input_size, self.hidden_size, self.bias, self.gate_activation)

    def __post_init__(self) -> None:
        self.config  # noqa: B018 - validate at construction, with torch's errors
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, hx: State | None = None) -> State:
        params = self._torch_params(x, hx)
        with jax.named_scope(type(self).__name__):
            return functional.lstm_cell(
                params, x, hx, config=self.config, precision=self.precision, dtype=self.dtype
            )


def _unwrap_variables(variables: Mapping[str, Any]) -> Mapping[str, Any]:
    if not isinstance(variables, Mapping):
        raise TypeError(
            "expected Linen variables {'params': {...}} or a torch-named params dict, got "
            f"{type(variables).__name__}"
        )
    if set(variables) == {"params"}:
        variables = variables["params"]
    nested = [k for k, v in variables.items() if isinstance(v, Mapping)]
    if nested:
        raise ValueError(
            f"the params hold submodules {nested}, not one LSTM's torch-named arrays; pass the "
            f"LSTM's own subtree, e.g. variables['params'][{nested[0]!r}]"
        )
    return variables


def params_from_torch(source: Any, *, param_dtype: Any = None) -> dict[str, dict[str, Array]]:
    """torch LSTM weights as Linen variables ``{'params': {torch name: array}}``.

    **Arguments:**

    - ``source``: a live ``torch.nn.LSTM`` / ``torch.nn.LSTMCell`` or its ``state_dict`` (values
      may be torch tensors or numpy/JAX arrays). Every key is checked against the architecture
      the weights imply; errors name each missing, unexpected or mis-shaped key.
    - ``param_dtype``: dtype of the result; default: the weights' own (float64 needs
      ``jax_enable_x64``).
    """
    return from_torch(source, param_dtype=param_dtype)[1]


def from_torch(
    source: Any,
    *,
    batch_first: bool | None = None,
    dropout: float | None = None,
    param_dtype: Any = None,
    **module_kwargs: Any,
) -> tuple[LSTM | LSTMCell, dict[str, dict[str, Array]]]:
    """A Linen module with torch's architecture and its variables, from torch weights.

    **Arguments:** as :func:`jaxlstm.from_torch`: ``source`` (live module or ``state_dict``),
    ``batch_first`` / ``dropout`` (taken from a live module unless given), ``param_dtype``, and
    ``module_kwargs`` (``dtype``, ``precision``, ``unroll``, ``deterministic``) for the module.
    A live module's ``train()``/``eval()`` mode sets ``deterministic``.

    **Returns:** ``(module, variables)``; ``module.apply(variables, x)`` reproduces torch.
    """
    from jaxlstm.porting import torch_weights

    arrays, settings = torch_weights(source, batch_first=batch_first, dropout=dropout)
    config, arrays = check_weights(arrays)
    dtype = resolve_param_dtype(arrays, param_dtype)
    params = {name: jnp.asarray(value, dtype) for name, value in arrays.items()}
    if isinstance(config, LSTMCellConfig):
        extra = [k for k in ("batch_first", "dropout") if settings[k]]
        if extra:
            raise ValueError(f"LSTMCell takes no {', '.join(extra)}; drop those arguments")
        module: LSTM | LSTMCell = LSTMCell(
            **dataclasses.asdict(config), param_dtype=dtype, **module_kwargs
        )
    else:
        if settings["training"] is not None:
            # A live module's train/eval mode carries over; a bare state_dict leaves it unset.
            module_kwargs.setdefault("deterministic", not settings["training"])
        config = dataclasses.replace(config, batch_first=bool(settings["batch_first"]),
                                     dropout=float(settings["dropout"] or 0.0))
        module = LSTM(**dataclasses.asdict(config), param_dtype=dtype, **module_kwargs)
    return module, {"params": params}


def to_torch(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Linen LSTM/LSTMCell variables as a torch ``state_dict`` of numpy arrays.

    **Arguments:**

    - ``variables``: ``{'params': {...}}`` of one :class:`LSTM` / :class:`BiLSTM` /
      :class:`LSTMCell`, or the params dict itself (e.g. ``variables['params']['lstm']`` of a
      larger model).

    ``torch_module.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)``
    loads the result into a torch module of the same architecture.
    """
    config, arrays = check_weights(_unwrap_variables(variables))
    return {name: np.array(arrays[name]) for name in config.param_shapes()}
