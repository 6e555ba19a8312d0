"""Dropout in training mode against torch: jaxlstm's masks, applied by torch between its layers.

torch's ``nn.LSTM`` draws its own masks, so in training mode it computes a different random
function than jaxlstm. It computes exactly jaxlstm's when the stacked module's layers run one by
one (single-layer ``nn.LSTM``\\ s holding its weights) with jaxlstm's documented masks applied
between them (:func:`jaxlstm.functional.lstm`): layer ``k``'s time-major output
``(L, N, D*H_out)`` is kept where ``jax.random.bernoulli(jax.random.fold_in(key, k), 1 - p,
shape)`` and scaled by ``1 / (1 - p)`` there (by 0 at ``p = 1``). Outputs, ``h_n``, ``c_n`` and
every gradient are compared, as the grid compares them.
"""

from __future__ import annotations

import jax
import numpy as np
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from jaxlstm import testing
from parity import properties, runner
from parity.properties import PropertyCase

SMALL = dict(input_size=3, hidden_size=5, seq_len=6, batch=3)


def grid(full: bool = False) -> list[PropertyCase]:
    """The dropout cases: every schedule with masks at p = 0.5 (the full grid adds p = 0 and 1,
    and more layouts)."""
    cases = [
        PropertyCase(**SMALL, num_layers=2, bidirectional=True, dropout=0.5, batch_first=True),
        PropertyCase(**SMALL, num_layers=3, proj_size=2, dropout=0.5, packed=True,
                     lengths=(6, 2, 4), wavefront=True),
    ]
    if full:
        layouts = [
            dict(num_layers=2),
            dict(num_layers=3, proj_size=2, packed=True, lengths=(6, 2, 4)),
            dict(num_layers=2, bidirectional=True, packed=True, lengths=(6, 2, 4)),
            dict(num_layers=3, packed=True, lengths=(6, 2, 4), wavefront=True),
            dict(num_layers=2, proj_size=2, wavefront=True, with_hx=False),
            dict(num_layers=2, bidirectional=True, batch=None, remat=2),
        ]
        cases += [PropertyCase(**SMALL | layout, dropout=p)
                  for p in (0.0, 0.5, 1.0) for layout in layouts]
    return cases


def masks(key: jax.Array, rate: float, layers: int, shape: tuple[int, ...]) -> list[np.ndarray]:
    """jaxlstm's documented keep-masks between ``layers`` layers, each of the time-major
    ``shape`` ``(L, N, D*H_out)``; drawn in the x64 mode of the run they are compared with."""
    return [np.asarray(jax.random.bernoulli(jax.random.fold_in(key, k), 1 - rate, shape))
            for k in range(layers - 1)]


def torch_reference(module: torch.nn.LSTM, inputs: runner.Inputs, keep: list[np.ndarray],
                    rate: float) -> dict[str, np.ndarray]:
    """torch's values and gradients with jaxlstm's dropout, keyed like
    :func:`jaxlstm.testing.run_torch`: ``module``'s layers run one by one on torch's native path
    (packed when ``inputs`` has lengths), ``keep[k]`` times the scale applied to layer ``k``'s
    time-major output.

    **Arguments:**

    - ``module``: the stacked ``torch.nn.LSTM`` whose weights (and layout) are used.
    - ``inputs``: input, ``(h0, c0)``, lengths and loss cotangents in ``module``'s layout.
    - ``keep``: :func:`masks` for the run; ``rate``: the dropout probability.
    """
    scale = 0.0 if rate >= 1 else 1 / (1 - rate)
    directions = 2 if module.bidirectional else 1
    dtype = next(module.parameters()).dtype
    unbatched = inputs.x.ndim == 2
    x = torch.tensor(inputs.x, requires_grad=True)
    h = x.unsqueeze(1) if unbatched else x.transpose(0, 1) if module.batch_first else x
    hx = None
    if inputs.hx is not None:
        hx = [torch.tensor(a, requires_grad=True) for a in inputs.hx]
        state = [a.unsqueeze(1) if unbatched else a for a in hx]
    weights = module.state_dict()
    h_n, c_n, layers = [], [], []
    with testing.native_path():
        for k in range(module.num_layers):
            layer = torch.nn.LSTM(h.shape[-1], module.hidden_size, bias=module.bias,
                                  bidirectional=module.bidirectional,
                                  proj_size=module.proj_size).to(dtype)
            names = {name: name.replace("_l0", f"_l{k}") for name, _ in layer.named_parameters()}
            layer.load_state_dict({name: weights[names[name]] for name in names})
            layers.append((layer, names))
            layer_hx = None
            if hx is not None:
                layer_hx = tuple(a[k * directions:(k + 1) * directions] for a in state)
            if inputs.seq_lengths is None:
                h, (h_k, c_k) = layer(h, layer_hx)
            else:
                packed = pack_padded_sequence(h, torch.as_tensor(inputs.seq_lengths),
                                              enforce_sorted=False)
                h, (h_k, c_k) = layer(packed, layer_hx)
                h, _ = pad_packed_sequence(h, total_length=inputs.x.shape[
                    1 if module.batch_first and not unbatched else 0])
            h_n.append(h_k)
            c_n.append(c_k)
            if k < module.num_layers - 1:
                h = h * torch.from_numpy(keep[k].astype(inputs.x.dtype)) * scale
        out = h[:, 0] if unbatched else h.transpose(0, 1) if module.batch_first else h
        h_n, c_n = torch.cat(h_n, dim=0), torch.cat(c_n, dim=0)
        if unbatched:
            h_n, c_n = h_n[:, 0], c_n[:, 0]
        parameters = [(names[name], param) for layer, names in layers
                      for name, param in layer.named_parameters()]
        return testing.backward({"output": out, "h_n": h_n, "c_n": c_n}, inputs.cotangents, x,
                                hx, parameters)


def run_dropout_case(case: PropertyCase, dtype: str, seed: int = 0) -> list[runner.Result]:
    """Compare jaxlstm in training mode (dropout drawn from ``jax.random.key(seed)``) with torch
    running its layers one by one with the same masks; float32 misses are measured against
    torch in float64 on the same weights, inputs and masks (as the grid does)."""
    module = runner.torch_module(case, dtype, seed)
    inputs = properties.make_inputs(case, dtype, seed)
    key = jax.random.key(seed)
    steps, batch = case.seq_len, 1 if case.batch is None else case.batch
    shape = (steps, batch, (2 if case.bidirectional else 1) * (case.proj_size or case.hidden_size))
    with jax.enable_x64(dtype == "float64"):
        actual = properties.run_jax(module, case, inputs, dropout_rng=key)
        keep = masks(key, case.dropout, case.num_layers, shape)
    with properties.single_thread_torch():
        expected = torch_reference(module, inputs, keep, case.dropout)
        found = testing.compare_values(dtype, "native", actual, expected)
        results = [runner.Result(case, dtype, "native", found.errors, check="dropout")]
        testing.check_against_float64(results, actual, module, inputs,
                                      lambda m, i: torch_reference(m, i, keep, case.dropout))
    return results
