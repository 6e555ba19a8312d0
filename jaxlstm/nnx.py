"""Flax NNX modules: thin shells of torch-named ``nnx.Param``s over :mod:`jaxlstm.functional`."""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlstm import functional
from jaxlstm.arrays import check_weights, resolve_param_dtype
from jaxlstm.config import (
    LSTMCellConfig,
    LSTMConfig,
    check_dropout,
    check_dtypes,
    check_lengths_at_run_time,
    check_params,
)
from jaxlstm.functional import schedules

Array = jax.Array


def _rngs_or_fresh(rngs: nnx.Rngs | None) -> nnx.Rngs:
    # Like torch without torch.manual_seed: each module built without rngs draws new weights.
    return nnx.Rngs(secrets.randbits(31)) if rngs is None else rngs


def _constructor_argument(name: str) -> property:
    """torch's attribute for a constructor argument, read from ``config``; read-only, because
    the parameters' shapes (or the layout of inputs and outputs) were fixed by it."""

    def get(self: _TorchNamedParams) -> Any:
        return getattr(self.config, name)

    def set_(self: _TorchNamedParams, value: Any) -> None:
        raise AttributeError(
            f"{type(self).__name__}.{name} is read-only: it is fixed when the module is built; "
            f"build a new jaxlstm.{type(self).__name__}(..., {name}={value!r}) instead"
            + (" (only dropout can be changed in place)" if hasattr(self.config, "dropout")
               else "")
        )

    return property(get, set_, doc=f"``{name}`` as given to the constructor (read-only).")


class _TorchNamedParams(nnx.Module):
    """Stores one ``nnx.Param`` per torch parameter name; ``params()`` gives the plain dict."""

    config: LSTMConfig | LSTMCellConfig
    dtype: Any

    input_size = _constructor_argument("input_size")
    hidden_size = _constructor_argument("hidden_size")
    bias = _constructor_argument("bias")
    gate_activation = _constructor_argument("gate_activation")

    def _init_params(
        self, rngs: nnx.Rngs, param_dtype: Any, params: Mapping[str, Any] | None
    ) -> None:
        """Torch-named ``params`` (shapes checked, dtype kept unless ``param_dtype`` is given),
        or torch's random init drawn from ``rngs`` (in ``param_dtype``, default float32)."""
        if params is None:
            params = functional.init_params(rngs.params(), self.config,
                                            jnp.float32 if param_dtype is None else param_dtype)
        else:
            check_params(params, self.config.param_shapes(), what=type(self).__name__)
        for name in self.config.param_shapes():
            setattr(self, name, nnx.Param(jnp.asarray(params[name], dtype=param_dtype)))

    def params(self) -> dict[str, Array]:
        """The parameters as ``{torch name: array}`` (the torch ``state_dict`` layout)."""
        return {name: getattr(self, name)[...] for name in self.config.param_shapes()}

    def _checked_params(self, x: Array, hx: tuple[Array, Array] | None) -> dict[str, Array]:
        """``params()``, after torch's dtype check of ``x`` and ``hx`` (unless ``dtype`` is set,
        which casts everything to that compute dtype)."""
        params = self.params()
        if self.dtype is None:
            check_dtypes(self.config, next(iter(params.values())).dtype, x, hx)
        return params


class LSTM(_TorchNamedParams):
    r"""Multi-layer LSTM, argument-for-argument ``torch.nn.LSTM``.

    For each element of the input sequence, each layer computes (gates in torch's order)::

        i_t = sigmoid(W_ii x_t + b_ii + W_hi h_{t-1} + b_hi)
        f_t = sigmoid(W_if x_t + b_if + W_hf h_{t-1} + b_hf)
        g_t = tanh(W_ig x_t + b_ig + W_hg h_{t-1} + b_hg)
        o_t = sigmoid(W_io x_t + b_io + W_ho h_{t-1} + b_ho)
        c_t = f_t * c_{t-1} + i_t * g_t
        h_t = o_t * tanh(c_t)                  (h_t <- W_hr h_t when proj_size > 0)

    Layer ``k > 0`` reads the (dropout-masked in training) output of layer ``k - 1``.

    **Arguments:**

    - ``input_size``: features ``I`` of the input ``x``.
    - ``hidden_size``: features ``H`` of the cell state (and of ``h`` without projection).
    - ``num_layers``: stacked LSTM layers (default 1).
    - ``bias``: if ``False``, no ``bias_ih``/``bias_hh`` parameters (default ``True``).
    - ``batch_first``: input/output as ``(N, L, *)`` instead of ``(L, N, *)``; never applies to
      ``h_n``/``c_n`` (default ``False``).
    - ``dropout``: probability of zeroing each layer's output except the last, in training mode
      only (default 0). Each call draws a new mask from the ``dropout`` stream, whose counter is
      module state: ``nnx.jit`` carries it across calls; under ``jax.jit`` over ``nnx.split``,
      return ``nnx.state(model)`` and pass it to the next call, or every call repeats one mask.
      Only a module whose dropout acts (``dropout > 0``, ``num_layers > 1``) holds that stream;
      otherwise ``nnx.state(model)`` is the weights alone. With dropout, differentiate the
      weights only: ``graphdef, params, rest = nnx.split(model, nnx.Param, ...)``.
    - ``bidirectional``: add a reverse direction, ``D = 2`` (default ``False``).
    - ``proj_size``: if ``> 0``, project ``h`` to this size with ``weight_hr`` (default 0).
    - ``rngs``: ``nnx.Rngs`` with a ``params`` stream for init and a ``dropout`` stream for
      dropout (both fall back to ``default``). Pass ``nnx.Rngs(seed)`` for reproducible weights
      and masks; when omitted, a fresh seed is drawn, so two modules built alike get different
      weights (as torch does without ``torch.manual_seed``).
    - ``param_dtype``: dtype of the parameters (default float32, or the dtype of ``params``).
    - ``params``: torch-named initial parameters (``{"weight_ih_l0": ..., ...}``, shapes
      checked) instead of the random init, e.g. a torch ``state_dict`` as numpy arrays.
    - ``dtype``: compute dtype. Default ``None``: like torch, ``x``, ``h_0`` and ``c_0`` must have
      the parameters' dtype (a mismatch raises torch's error); given, everything is cast to it.
    - ``precision``: matmul precision (default ``None``, JAX's default; ``"highest"`` for full
      float32 on GPU/TPU).
    - ``unroll``: unroll factor of the forward recurrence loop (default 1).
    - ``remat``: bound activation memory for long sequences by recomputing the forward pass in
      chunks during backward: ``True`` for ``~sqrt(L)``-step chunks, an int for the chunk length
      (default ``False``: save every step, fastest).
    - ``wavefront``: run two or more unidirectional layers in one loop, layer ``l + 1`` one step
      behind layer ``l`` (``L + T - 1`` sequential steps instead of ``L * T``; same numbers).
      Default ``False``: on CPU the layer-by-layer schedule is faster; see
      :func:`jaxlstm.functional.lstm`. A bidirectional LSTM, or ``remat`` with it, raises.
    - ``gate_activation``: the activation of the gates i, f, o: ``"sigmoid"`` (torch's, the
      default) or ``jaxlstm.HardSigmoid(alpha, beta)``, ``clip(alpha * x + beta, 0, 1)``
      (Keras 2 / tf.keras ``hard_sigmoid``: ``HardSigmoid(0.2, 0.5)``; Keras 3's:
      ``HardSigmoid(1 / 6, 0.5)``; ONNX ``HardSigmoid``: its ``alpha``, ``beta``). Every schedule
      and both derivative modes run either; a hard-sigmoid model has no torch counterpart, so
      ``jaxlstm.to_torch`` refuses it.

    **Call:** ``output, (h_n, c_n) = lstm(x, hx=None, *, seq_lengths=None)``

    - ``x``: ``(L, N, I)`` (``(N, L, I)`` batch-first) or unbatched ``(L, I)``.
    - ``hx``: ``(h_0, c_0)`` with ``h_0 (D*num_layers, N, H_out)`` and ``c_0 (D*num_layers, N,
      H)``, ``H_out = proj_size or hidden_size``; unbatched: drop ``N``. Zeros when omitted.
    - ``seq_lengths``: int ``(N,)``, each sequence's valid length (torch ``PackedSequence``
      semantics; see :func:`jaxlstm.functional.lstm`). Concrete lengths outside ``[1, L]`` raise
      ``ValueError``; traced ones (under ``jit``) are only checked with ``check_lengths=True``.
    - ``check_lengths``: check traced ``seq_lengths`` when the computation runs (a host
      callback; under ``jit`` the error arrives as ``jax.errors.JaxRuntimeError``). Default
      ``False``: out-of-range traced lengths are clipped to ``[0, L]``.
    - ``output``: ``(L, N, D*H_out)``; ``h_n``: ``(D*num_layers, N, H_out)``; ``c_n``:
      ``(D*num_layers, N, H)``, indexed ``layer*D + direction``.

    **Attributes** (torch's): ``input_size``, ``hidden_size``, ``num_layers``, ``bias``,
    ``batch_first``, ``dropout``, ``bidirectional``, ``proj_size`` as constructed, and
    ``gate_activation`` (not torch's), read-only except ``dropout``, which may be set
    (``lstm.dropout = 0.3``, validated like the constructor
    argument) and acts from the next call in training mode; ``all_weights``: the ``nnx.Param``s
    of each ``(layer, direction)`` in torch's order.

    Parameters are attributes with torch's names and shapes: ``weight_ih_l{k}`` ``(4H, I)`` for
    ``k = 0`` else ``(4H, D*H_out)``, ``weight_hh_l{k}`` ``(4H, H_out)``, ``bias_ih_l{k}``,
    ``bias_hh_l{k}`` ``(4H,)``, ``weight_hr_l{k}`` ``(P, H)``, suffix ``_reverse`` for the reverse
    direction; init ``U(-1/sqrt(H), 1/sqrt(H))`` like torch.

    Example::

        >>> import jax.numpy as jnp, jaxlstm
        >>> lstm = jaxlstm.LSTM(10, 20, num_layers=2)
        >>> out, (h_n, c_n) = lstm(jnp.ones((5, 3, 10)))
        >>> out.shape, h_n.shape, c_n.shape
        ((5, 3, 20), (2, 3, 20), (2, 3, 20))
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        *,
        rngs: nnx.Rngs | None = None,
        param_dtype: Any = None,
        dtype: Any = None,
        precision: Any = None,
        unroll: int = 1,
        remat: bool | int = False,
        wavefront: bool = False,
        params: Mapping[str, Any] | None = None,
        gate_activation: Any = "sigmoid",
    ):
        self.config = LSTMConfig.create(
            input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
            proj_size, gate_activation,
        )
        rngs = _rngs_or_fresh(rngs)
        self._init_params(rngs, param_dtype, params)
        self.dtype = dtype
        self.precision = precision
        # Checked now, so that a schedule that cannot apply fails where the module is built.
        schedules.resolve(schedules.from_arguments(unroll, remat, wavefront=wavefront),
                          self.config, 1, precision)
        self.unroll = unroll
        self.remat = remat
        self.wavefront = wavefront
        self.deterministic = False
        # Only a module whose dropout can act holds RNG state: without it, nnx.state(model) is
        # the weights alone, so jax.grad over nnx.split(model)'s state works.
        self.dropout_rngs = nnx.data(rngs["dropout"].fork() if self._dropout_acts() else None)

    num_layers = _constructor_argument("num_layers")
    batch_first = _constructor_argument("batch_first")
    bidirectional = _constructor_argument("bidirectional")
    proj_size = _constructor_argument("proj_size")

    @property
    def dropout(self) -> float:
        """Dropout probability between layers; settable, as torch's ``rnn.dropout = p``."""
        return self.config.dropout

    @dropout.setter
    def dropout(self, value: float) -> None:
        check_dropout(value)
        self.config = dataclasses.replace(self.config, dropout=float(value))
        if self._dropout_acts() and self.dropout_rngs is None:
            # Built without dropout, so no stream was kept: a fresh seed, as torch's unseeded
            # global generator would give. Assign dropout_rngs for reproducible masks.
            self.dropout_rngs = nnx.data(nnx.Rngs(dropout=secrets.randbits(31))["dropout"])

    def _dropout_acts(self) -> bool:
        """Dropout acts between layers: ``dropout > 0`` and more than one layer (as in torch,
        a 1-layer LSTM has no layer output to drop)."""
        return self.config.dropout > 0 and self.config.num_layers > 1

    @property
    def all_weights(self) -> list[list[nnx.Param]]:
        """torch's ``all_weights``: for each ``layer * D + direction``, its ``nnx.Param``s in
        ``state_dict`` order (``weight_ih``, ``weight_hh``, [``bias_ih``, ``bias_hh``],
        [``weight_hr``])."""
        return [[getattr(self, name) for name in group] for group in self.config.param_groups()]

    def set_view(self, deterministic: bool | None = None) -> None:
        """Used by ``nnx.view``: ``deterministic=True`` disables dropout."""
        if deterministic is not None:
            self.deterministic = deterministic

    def __call__(
        self,
        x: Array,
        hx: tuple[Array, Array] | None = None,
        *,
        seq_lengths: Array | None = None,
        deterministic: bool | None = None,
        check_lengths: bool = False,
    ) -> tuple[Array, tuple[Array, Array]]:
        params = self._checked_params(x, hx)
        if check_lengths and seq_lengths is not None:
            check_lengths_at_run_time(seq_lengths, x, batch_first=self.config.batch_first)
        deterministic = self.deterministic if deterministic is None else deterministic
        dropout_rng = None
        if not deterministic and self._dropout_acts():
            dropout_rng = self.dropout_rngs()
        with jax.named_scope(type(self).__name__):
            return functional.lstm(
                params, x, hx, config=self.config, seq_lengths=seq_lengths,
                dropout_rng=dropout_rng, deterministic=deterministic,
                precision=self.precision, dtype=self.dtype, unroll=self.unroll,
                remat=self.remat, wavefront=self.wavefront,
            )


class BiLSTM(LSTM):
    """Bidirectional LSTM: ``LSTM(..., bidirectional=True)`` with the same arguments otherwise.

    ``output[..., :H_out]`` is the forward direction, ``output[..., H_out:]`` the reverse one;
    ``h_n[2k]`` / ``h_n[2k + 1]`` are layer ``k``'s forward / reverse final states.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        proj_size: int = 0,
        *,
        rngs: nnx.Rngs | None = None,
        **kwargs: Any,
    ):
        if kwargs.pop("bidirectional", True) is not True:
            raise ValueError("BiLSTM is always bidirectional; use jaxlstm.LSTM for one direction")
        super().__init__(
            input_size, hidden_size, num_layers, bias, batch_first, dropout, True, proj_size,
            rngs=rngs, **kwargs,
        )


class LSTMCell(_TorchNamedParams):
    """One LSTM step, argument-for-argument ``torch.nn.LSTMCell``.

    **Arguments:**

    - ``input_size``: features ``I`` of ``x``; ``hidden_size``: features ``H`` of ``h`` and ``c``.
    - ``bias``: if ``False``, no ``bias_ih``/``bias_hh`` (default ``True``).
    - ``rngs``: ``nnx.Rngs`` for init (default: a fresh seed, as in :class:`LSTM`);
      ``param_dtype``, ``dtype``, ``precision``, ``params``: as in :class:`LSTM` (with
      ``dtype=None``, ``x`` and ``hx`` must have the parameters' dtype; a mismatch raises
      ``RuntimeError`` as torch).
    - ``gate_activation``: ``"sigmoid"`` (torch's, the default) or ``jaxlstm.HardSigmoid(alpha,
      beta)``, as in :class:`LSTM`.

    **Attributes:** ``input_size``, ``hidden_size``, ``bias`` (torch's), ``gate_activation``;
    read-only.

    **Call:** ``h_1, c_1 = cell(x, hx=None)`` with ``x`` ``(N, I)`` or ``(I,)``, ``hx = (h_0,
    c_0)`` each ``(N, H)`` or ``(H,)`` (zeros when omitted); returns ``h_1, c_1`` of the same shape.

    Parameters: ``weight_ih (4H, I)``, ``weight_hh (4H, H)``, ``bias_ih (4H,)``, ``bias_hh (4H,)``,
    init ``U(-1/sqrt(H), 1/sqrt(H))``. Equations as in :class:`LSTM`, one step.

    Example::

        >>> import jax.numpy as jnp, jaxlstm
        >>> cell = jaxlstm.LSTMCell(10, 20)
        >>> h, c = cell(jnp.ones((3, 10)))
        >>> h.shape, c.shape
        ((3, 20), (3, 20))
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        *,
        rngs: nnx.Rngs | None = None,
        param_dtype: Any = None,
        dtype: Any = None,
        precision: Any = None,
        params: Mapping[str, Any] | None = None,
        gate_activation: Any = "sigmoid",
    ):
        self.config = LSTMCellConfig.create(input_size, hidden_size, bias, gate_activation)
        rngs = _rngs_or_fresh(rngs)
        self._init_params(rngs, param_dtype, params)
        self.dtype = dtype
        self.precision = precision

    def __call__(self, x: Array, hx: tuple[Array, Array] | None = None) -> tuple[Array, Array]:
        with jax.named_scope(type(self).__name__):
            return functional.lstm_cell(
                self._checked_params(x, hx), x, hx, config=self.config, precision=self.precision,
                dtype=self.dtype,
            )


def from_weights(
    state_dict: Mapping[str, Any],
    *,
    batch_first: bool | None = None,
    dropout: float | None = None,
    param_dtype: Any = None,
    rngs: nnx.Rngs | None = None,
    source: str = "the state dict",
    **module_kwargs: Any,
) -> LSTM | LSTMCell:
    """The :class:`LSTM` or :class:`LSTMCell` that torch-named weights describe, holding them.

    **Arguments:**

    - ``state_dict``: ``{torch name: array}`` of one ``nn.LSTM``/``nn.LSTMCell`` (torch
      tensors, numpy or JAX arrays); the architecture is inferred, every key checked.
    - ``batch_first``, ``dropout``: not stored in weights (default: torch's).
    - ``param_dtype``: dtype of the parameters; default the weights' own (``bfloat16`` stays).
    - ``rngs``: seeds dropout; default ``nnx.Rngs(0)`` (the weights come from ``state_dict``).
    - ``source``: how errors name the weights.
    - ``module_kwargs``: ``dtype``, ``precision``, ``unroll``, ``remat``, ``wavefront``,
      ``gate_activation``.

    The module is built from the weights directly (no random init is drawn).
    """
    config, arrays = check_weights(state_dict)
    dtype = resolve_param_dtype(arrays, param_dtype, source)
    rngs = nnx.Rngs(0) if rngs is None else rngs
    if isinstance(config, LSTMCellConfig):
        extra = {k: v for k, v in (("batch_first", batch_first), ("dropout", dropout)) if v}
        if extra:
            raise ValueError(f"LSTMCell takes no {', '.join(extra)}; drop those arguments")
        return LSTMCell(config.input_size, config.hidden_size, config.bias, rngs=rngs,
                        param_dtype=dtype, params=arrays, **module_kwargs)
    return LSTM(
        config.input_size, config.hidden_size, config.num_layers, config.bias,
        bool(batch_first), float(dropout or 0.0), config.bidirectional, config.proj_size,
        rngs=rngs, param_dtype=dtype, params=arrays, **module_kwargs,
    )
