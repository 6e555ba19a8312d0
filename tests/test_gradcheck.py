"""Finite-difference gradient checks in float64 of every path with its own derivative code.

``jax.test_util.check_grads`` compares forward-mode (``jvp``) and reverse-mode (``vjp``)
derivatives with central differences (``eps=1e-6``) on random directions. The recurrence has a
hand-written tangent recurrence and backward pass, whose branches are: one or two directions,
with or without ``proj_size``, with or without ``seq_lengths`` (masked steps, including an
empty sequence under ``jit``), given or zero ``(h0, c0)``, and the rematerialising backward
pass (``remat``, chunked, with a padded last chunk); the cell's derivative is written once, as
its VJP (its JVP is that VJP's transpose). Second order (forward and reverse over forward and
reverse, so also forward over reverse: a Hessian's path) runs on the cheap configurations. The
tolerance is 1e-7: central differences in float64 are accurate to about 1e-10 here, so a wrong
derivative term cannot hide under it.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxlstm import functional
from jaxlstm.config import LSTMCellConfig, LSTMConfig

TOL = 1e-7
EPS = 1e-6
MODES = ("fwd", "rev")

# (id, config arguments, batch (None: unbatched), seq_lengths, with (h0, c0), order, remat)
LSTM_CASES = [
    ("plain", dict(), 2, None, True, 1, False),
    ("bi proj 2-layer batch-first", dict(num_layers=2, bidirectional=True, proj_size=2,
                                         batch_first=True), 2, None, True, 1, False),
    ("seq-lengths", dict(), 3, [3, 1, 2], True, 2, False),
    ("seq-lengths bi proj", dict(bidirectional=True, proj_size=2), 3, [3, 1, 2], True, 1,
     False),
    ("seq-lengths unbatched bi no-bias zero-hx", dict(bidirectional=True, bias=False), None, 2,
     False, 1, False),
    # remat: chunks of 2 over 3 steps leave a padded last chunk; True picks ~sqrt(T) steps.
    ("remat bi proj", dict(bidirectional=True, proj_size=2), 2, None, True, 1, 2),
    ("remat seq-lengths bi", dict(bidirectional=True), 3, [2, 3, 1], True, 1, True),
]
INPUT_SIZE, HIDDEN_SIZE, SEQ_LEN = 2, 3, 3


def random_params(config, seed=0):
    params = functional.init_params(jax.random.key(seed), config, jnp.float64)
    return {name: np.asarray(value) for name, value in params.items()}


def lstm_args(config: LSTMConfig, batch, with_hx, seed=1):
    rng = np.random.default_rng(seed)
    batch_shape = () if batch is None else (batch,)
    time_batch = (SEQ_LEN, *batch_shape)
    if config.batch_first and batch is not None:
        time_batch = time_batch[::-1]
    x = rng.standard_normal((*time_batch, config.input_size))
    layers = config.num_layers * config.num_directions
    h0 = rng.standard_normal((layers, *batch_shape, config.output_size)) if with_hx else None
    c0 = rng.standard_normal((layers, *batch_shape, config.hidden_size)) if with_hx else None
    return x, h0, c0


@pytest.mark.parametrize("name, kwargs, batch, lengths, with_hx, order, remat", LSTM_CASES,
                         ids=[case[0] for case in LSTM_CASES])
def test_lstm_gradients_match_finite_differences(name, kwargs, batch, lengths, with_hx, order,
                                                 remat):
    with jax.enable_x64(True):
        config = LSTMConfig.create(INPUT_SIZE, HIDDEN_SIZE, **kwargs)
        params = random_params(config)
        x, h0, c0 = lstm_args(config, batch, with_hx)
        seq_lengths = None if lengths is None else np.asarray(lengths)

        if with_hx:
            def f(params, x, h0, c0):
                return functional.lstm(params, x, (h0, c0), config=config,
                                       seq_lengths=seq_lengths, remat=remat)
            args = (params, x, h0, c0)
        else:
            def f(params, x):
                return functional.lstm(params, x, config=config, seq_lengths=seq_lengths,
                                       remat=remat)
            args = (params, x)
        check_grads(jax.jit(f), args, order=order, modes=MODES, eps=EPS, atol=TOL,
                    rtol=TOL)


def test_gradients_with_an_empty_sequence_under_jit():
    """Traced lengths are clipped to [0, T]; a 0-length sequence keeps (h0, c0) and its output
    is padding, so its gradients flow to (h0, c0) only."""
    with jax.enable_x64(True):
        config = LSTMConfig.create(INPUT_SIZE, HIDDEN_SIZE, bidirectional=True)
        params = random_params(config)
        x, h0, c0 = lstm_args(config, 3, True)
        lengths = jnp.asarray([3, 0, 2])

        @jax.jit
        def run(params, x, h0, c0, seq_lengths):
            return functional.lstm(params, x, (h0, c0), config=config, seq_lengths=seq_lengths)

        def f(params, x, h0, c0):
            return run(params, x, h0, c0, lengths)

        check_grads(f, (params, x, h0, c0), order=1, modes=MODES, eps=EPS, atol=TOL, rtol=TOL)
        # The empty sequence: h_n/c_n equal (h0, c0), its input and output take no part.
        grad_x, grad_h0 = jax.grad(
            lambda x, h0: sum(jnp.sum(a) for a in jax.tree.leaves(f(params, x, h0, c0))),
            argnums=(0, 1),
        )(x, h0)
        np.testing.assert_array_equal(grad_x[:, 1], 0.0)
        np.testing.assert_array_equal(grad_h0[:, 1], 1.0)


@pytest.mark.parametrize("bias, batch, with_hx, order", [
    (True, 2, True, 2),
    (False, None, False, 1),
])
def test_cell_gradients_match_finite_differences(bias, batch, with_hx, order):
    with jax.enable_x64(True):
        config = LSTMCellConfig.create(INPUT_SIZE, HIDDEN_SIZE, bias)
        params = random_params(config)
        rng = np.random.default_rng(2)
        shape = () if batch is None else (batch,)
        x = rng.standard_normal((*shape, INPUT_SIZE))
        if with_hx:
            h, c = rng.standard_normal((2, *shape, HIDDEN_SIZE))
            args = (params, x, h, c)

            def f(params, x, h, c):
                return functional.lstm_cell(params, x, (h, c), config=config)
        else:
            args = (params, x)

            def f(params, x):
                return functional.lstm_cell(params, x, config=config)
        check_grads(jax.jit(f), args, order=order, modes=MODES, eps=EPS, atol=TOL,
                    rtol=TOL)
