"""Schedules as validated strategy objects: shorthand arguments, errors, and equal numbers."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxlstm
from jaxlstm import functional
from jaxlstm.functional import Layered, Remat, Wavefront


def _model(**kwargs):
    torch.manual_seed(0)
    return jaxlstm.from_torch(torch.nn.LSTM(3, 5, num_layers=2, **kwargs))


X = jnp.asarray(np.random.default_rng(0).standard_normal((7, 2, 3)), jnp.float32)


@pytest.mark.parametrize("schedule, shorthand", [
    (Layered(), {}),
    (Layered(unroll=3, chunk_rows=4), dict(unroll=3, chunk_rows=4)),
    (Remat(), dict(remat=True)),
    (Remat(chunk=2, unroll=2), dict(remat=2, unroll=2)),
    (Wavefront(unroll=2), dict(wavefront=True, unroll=2)),
], ids=repr)
def test_a_schedule_and_its_shorthand_compute_the_same(schedule, shorthand):
    model = _model()
    params, config = model.params(), model.config
    reference = functional.lstm(params, X, config=config)
    for result in (functional.lstm(params, X, config=config, schedule=schedule),
                   functional.lstm(params, X, config=config, **shorthand)):
        for ours, theirs in zip((result[0], *result[1]), (reference[0], *reference[1])):
            np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("build, error, message", [
    (lambda: Layered(unroll=2.7), TypeError, "unroll should be of type int, got: float"),
    (lambda: Layered(unroll=0), ValueError, "unroll must be greater than zero, got 0"),
    (lambda: Layered(chunk_rows=0), ValueError, "chunk_rows must be greater than zero"),
    (lambda: Layered(unroll=True), TypeError, "unroll should be of type int, got: bool"),
    (lambda: Remat(chunk=0), ValueError, "remat chunk must be greater than zero"),
    (lambda: Wavefront(unroll=-1), ValueError, "unroll must be greater than zero"),
    (lambda: jaxlstm.LSTM(3, 4, 2, unroll=2.7), TypeError, "unroll should be of type int"),
    (lambda: jaxlstm.LSTM(3, 4, 2, remat=-3), ValueError, "remat must be True, False or a "
     "positive chunk length, got -3"),
    (lambda: jaxlstm.LSTM(3, 4, 2, wavefront=True, remat=True), ValueError,
     "wavefront=True and remat cannot be combined"),
    (lambda: jaxlstm.LSTM(3, 4, 2, bidirectional=True, wavefront=True), ValueError,
     "the wavefront schedule runs stacked unidirectional layers; this LSTM is bidirectional"),
    (lambda: jaxlstm.LSTM(3, 4, 2, wavefront="yes"), TypeError,
     "wavefront must be True or False, got 'yes'"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_knobs_are_checked_where_the_schedule_is_built(build, error, message):
    with pytest.raises(error, match=message):
        build()


def test_schedule_and_shorthand_together_is_an_error():
    model = _model()
    with pytest.raises(ValueError, match="give either schedule=.* or the shorthand arguments"):
        functional.lstm(model.params(), X, config=model.config, schedule=Remat(), unroll=2)
    with pytest.raises(TypeError, match="schedule must be jaxlstm.functional.Layered"):
        functional.lstm(model.params(), X, config=model.config, schedule="remat")


def test_a_one_layer_wavefront_is_its_one_layer_and_a_bidirectional_one_an_error():
    torch.manual_seed(0)
    single = jaxlstm.from_torch(torch.nn.LSTM(3, 5))
    out = functional.lstm(single.params(), X, config=single.config, schedule=Wavefront())[0]
    np.testing.assert_array_equal(out, single(X)[0])
    bi = _model(bidirectional=True)
    with pytest.raises(ValueError, match="bidirectional: use the default"):
        functional.lstm(bi.params(), X, config=bi.config, schedule=Wavefront())
