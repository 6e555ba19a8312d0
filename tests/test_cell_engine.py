"""The loops are generic over the cell: two test-only cells without memory, torch's RNN (tanh)
and GRU cells, run through every loop (layers, directions, packed lengths, chunked inference,
remat, the wavefront, reverse and forward mode) and compared in float64 with ``torch.nn.RNN``
and ``torch.nn.GRU`` on the same weights. The GRU also reads ``gx`` and ``gh`` apart (its
``b_hh`` inside the step), records two parts and depends on ``h`` outside ``gh``.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from jaxlstm.config import LSTMConfig
from jaxlstm.functional import Layered, Remat, Wavefront, api
from jaxlstm.functional.cells import Cell
from jaxlstm.functional.schedules import resolve


@dataclasses.dataclass(frozen=True)
class TanhRNN(Cell):
    """torch's ``RNNCell(nonlinearity='tanh')``: ``h' = tanh(gx + gh)``."""

    gates = 1
    memory = False

    def activate(self, gx, gh, h, c):
        out = jnp.tanh(gx + gh)
        return out, None, (out,)

    def activate_vjp(self, record, h, c, d_out, d_c_new):
        (out,) = record
        d_pre = d_out * (1.0 - out * out)
        return d_pre, d_pre, None, None


@dataclasses.dataclass(frozen=True)
class GRU(Cell):
    """torch's ``GRUCell``: gates r, z, n; ``n = tanh(gx_n + r * gh_n)`` with ``b_hn`` in
    ``gh_n``; ``h' = (1 - z) * n + z * h``."""

    gates = 3
    memory = False
    recurrent_bias_inside = True

    def record_widths(self, hidden):
        return (3 * hidden, hidden)

    def activate(self, gx, gh, h, c):
        x_r, x_z, x_n = jnp.split(gx, 3, axis=-1)
        h_r, h_z, h_n = jnp.split(gh, 3, axis=-1)
        r, z = jax.nn.sigmoid(x_r + h_r), jax.nn.sigmoid(x_z + h_z)
        n = jnp.tanh(x_n + r * h_n)
        return n + z * (h - n), None, (jnp.concatenate([r, z, n], axis=-1), h_n)

    def activate_vjp(self, record, h, c, d_out, d_c_new):
        rzn, h_n = record
        r, z, n = jnp.split(rzn, 3, axis=-1)
        d_pre_n = d_out * (1.0 - z) * (1.0 - n * n)
        d_pre_r = d_pre_n * h_n * r * (1.0 - r)
        d_pre_z = d_out * (h - n) * z * (1.0 - z)
        d_gx = jnp.concatenate([d_pre_r, d_pre_z, d_pre_n], axis=-1)
        d_gh = jnp.concatenate([d_pre_r, d_pre_z, d_pre_n * r], axis=-1)
        return d_gx, d_gh, d_out * z, None


CELLS = {"rnn": (TanhRNN(), torch.nn.RNN), "gru": (GRU(), torch.nn.GRU)}
STEPS, BATCH, INPUT, HIDDEN = 7, 3, 4, 5
CASES = {
    "one layer": dict(layers=1, bidirectional=False, lengths=False, schedule=Layered()),
    "bidirectional, lengths": dict(layers=2, bidirectional=True, lengths=True,
                                   schedule=Layered()),
    "chunked inference": dict(layers=2, bidirectional=True, lengths=True,
                              schedule=Layered(chunk_rows=6)),
    "remat": dict(layers=2, bidirectional=True, lengths=True, schedule=Remat(chunk=3)),
    "wavefront": dict(layers=3, bidirectional=False, lengths=True, schedule=Wavefront()),
    "wavefront, no bias": dict(layers=2, bidirectional=False, lengths=False,
                               schedule=Wavefront(), bias=False),
}


def _problem(kind, layers, bidirectional, lengths, bias=True):
    torch.manual_seed(0)
    module = CELLS[kind][1](INPUT, HIDDEN, layers, bias=bias, bidirectional=bidirectional)
    module = module.double()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((STEPS, BATCH, INPUT))
    h0 = rng.standard_normal((layers * (2 if bidirectional else 1), BATCH, HIDDEN))
    seq = np.array([STEPS, 4, 2]) if lengths else None
    config = LSTMConfig(INPUT, HIDDEN, layers, bias=bias, bidirectional=bidirectional)
    return module, config, x, h0, seq


def _torch_loss(module, x, h0, seq):
    """torch's loss and its gradients with respect to every parameter, ``x`` and ``h0``."""
    x, h0 = (torch.tensor(a, requires_grad=True) for a in (x, h0))
    if seq is None:
        out, h_n = module(x, h0)
    else:
        packed = pack_padded_sequence(x, torch.tensor(seq), enforce_sorted=False)
        out, h_n = module(packed, h0)
        out = pad_packed_sequence(out, total_length=STEPS)[0]
    loss = torch.sum(torch.sin(out)) + torch.sum(h_n**2)
    names = [n for n, _ in module.named_parameters()]
    grads = torch.autograd.grad(loss, [*module.parameters(), x, h0])
    return out, h_n, {n: g.numpy() for n, g in zip(names, grads)}, grads[-2].numpy(), \
        grads[-1].numpy()


def _jax_run(cell, config, schedule):
    resolved = resolve(schedule, config, STEPS, "highest")

    def run(params, x, h0, seq):
        return api.time_major(params, x, h0, None, seq, None, config=config, cell=cell,
                              deterministic=True, dtype=jnp.float64, padding_value=0.0,
                              schedule=resolved)

    return run


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("kind", list(CELLS))
def test_a_memoryless_cell_runs_through_every_loop_as_torch(kind, case):
    spec = dict(CASES[case])
    schedule = spec.pop("schedule")
    module, config, x, h0, seq = _problem(kind, **spec)
    out_t, h_t, grads_t, dx_t, dh0_t = _torch_loss(module, x, h0, seq)
    with jax.enable_x64(True):
        run = _jax_run(CELLS[kind][0], config, schedule)
        params = {k: jnp.asarray(v.detach().numpy()) for k, v in module.state_dict().items()}
        seq_j = None if seq is None else jnp.asarray(seq)
        x_j, h0_j = jnp.asarray(x), jnp.asarray(h0)
        out, (h_n, c_n) = run(params, x_j, h0_j, seq_j)
        assert c_n is None
        np.testing.assert_allclose(out, out_t.detach().numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(h_n, h_t.detach().numpy(), rtol=1e-10, atol=1e-12)

        def loss(params, x, h0):
            out, (h_n, _) = run(params, x, h0, seq_j)
            return jnp.sum(jnp.sin(out)) + jnp.sum(h_n**2)

        grads, dx, dh0 = jax.grad(loss, argnums=(0, 1, 2))(params, x_j, h0_j)
        for name, g in grads_t.items():
            np.testing.assert_allclose(grads[name], g, rtol=1e-10, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(dx, dx_t, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(dh0, dh0_t, rtol=1e-10, atol=1e-12)

        # Forward mode: the directional derivative is torch's gradient along the tangent.
        keys = iter(jax.random.split(jax.random.key(2), len(params) + 2))
        tangents = jax.tree.map(lambda a: jax.random.normal(next(keys), a.shape, a.dtype),
                                (params, x_j, h0_j))
        _, directional = jax.jvp(loss, (params, x_j, h0_j), tangents)
        expected = sum(np.sum(grads_t[k] * np.asarray(tangents[0][k])) for k in grads_t)
        expected += np.sum(dx_t * np.asarray(tangents[1])) + np.sum(dh0_t * np.asarray(tangents[2]))
        np.testing.assert_allclose(directional, expected, rtol=1e-10)


@pytest.mark.parametrize("kind", list(CELLS))
def test_one_step_of_a_memoryless_cell_is_torchs_cell(kind):
    torch.manual_seed(0)
    module = {"rnn": torch.nn.RNNCell, "gru": torch.nn.GRUCell}[kind](INPUT, HIDDEN).double()
    rng = np.random.default_rng(3)
    x, h = rng.standard_normal((BATCH, INPUT)), rng.standard_normal((BATCH, HIDDEN))
    x_t, h_t = (torch.tensor(a, requires_grad=True) for a in (x, h))
    out_t = module(x_t, h_t)
    grads_t = torch.autograd.grad(torch.sum(torch.sin(out_t)), [x_t, h_t])
    with jax.enable_x64(True):
        params = {k: jnp.asarray(v.detach().numpy()) for k, v in module.state_dict().items()}

        def run(x, h):
            out, c = api.cell_step(CELLS[kind][0], params, x, h, None, bias=True,
                                   precision="highest")
            assert c is None
            return out

        x_j, h_j = jnp.asarray(x), jnp.asarray(h)
        np.testing.assert_allclose(run(x_j, h_j), out_t.detach().numpy(), rtol=1e-10)
        grads = jax.grad(lambda x, h: jnp.sum(jnp.sin(run(x, h))), argnums=(0, 1))(x_j, h_j)
        for g, g_t in zip(grads, grads_t):
            np.testing.assert_allclose(g, g_t.numpy(), rtol=1e-10, atol=1e-12)
        _, directional = jax.jvp(lambda x, h: jnp.sum(jnp.sin(run(x, h))), (x_j, h_j),
                                 (jnp.cos(x_j), jnp.sin(h_j)))
        expected = np.sum(grads_t[0].numpy() * np.cos(x)) + np.sum(grads_t[1].numpy() * np.sin(h))
        np.testing.assert_allclose(directional, expected, rtol=1e-10)
