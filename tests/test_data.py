"""jaxlstm.data builds the same padded batches as torch.nn.utils.rnn, and they drive the LSTM
exactly like a torch PackedSequence."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import (
    pack_padded_sequence,
    pack_sequence,
    pad_packed_sequence,
    pad_sequence,
    unpad_sequence,
)

import jaxlstm
from jaxlstm.data import from_packed, pad_sequences, unpad_sequences

RNG = np.random.default_rng(0)
LENGTHS = [3, 7, 1, 5]


def sequences(*trailing, lengths=LENGTHS, dtype=np.float32):
    return [RNG.standard_normal((n, *trailing)).astype(dtype) for n in lengths]


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("trailing", [(), (3,), (2, 3)], ids=str)
def test_pad_sequences_matches_torch(batch_first, trailing):
    seqs = sequences(*trailing)
    padded, lengths = pad_sequences(seqs, batch_first=batch_first, padding_value=-2.5)
    expected = pad_sequence([torch.from_numpy(s) for s in seqs], batch_first=batch_first,
                            padding_value=-2.5)
    np.testing.assert_array_equal(padded, expected.numpy())
    np.testing.assert_array_equal(lengths, LENGTHS)
    assert lengths.dtype == np.int32 and padded.dtype == np.float32


def test_pad_sequences_accepts_torch_jax_and_int_inputs():
    seqs = [np.arange(n, dtype=np.int32) for n in LENGTHS]
    mixed = [torch.from_numpy(seqs[0]), jnp.asarray(seqs[1]), *seqs[2:]]
    padded, _ = pad_sequences(mixed, batch_first=True)
    expected = pad_sequence([torch.from_numpy(s) for s in seqs], batch_first=True)
    np.testing.assert_array_equal(padded, expected.numpy())
    assert padded.dtype == np.int32


@pytest.mark.parametrize("make", [np.asarray, torch.from_numpy, jnp.asarray],
                         ids=["numpy", "torch", "jax"])
def test_pad_sequences_iterates_a_stacked_array_like_torch(make):
    stacked = RNG.standard_normal((3, 4, 2)).astype(np.float32)
    padded, lengths = pad_sequences(make(stacked))
    np.testing.assert_array_equal(padded, pad_sequence(torch.from_numpy(stacked)).numpy())
    np.testing.assert_array_equal(lengths, [4, 4, 4])


def test_pad_sequences_takes_any_iterable_like_torch():
    seqs = sequences(3)
    padded, _ = pad_sequences(iter(seqs))
    expected = pad_sequence(iter([torch.from_numpy(s) for s in seqs]))
    np.testing.assert_array_equal(padded, expected.numpy())


@pytest.mark.parametrize("bad", [5, None], ids=["int", "None"])
def test_pad_sequences_non_iterable_raises_torchs_runtime_error(bad):
    with pytest.raises(RuntimeError) as expected:
        pad_sequence(bad)
    with pytest.raises(RuntimeError) as got:
        pad_sequences(bad)
    assert str(got.value).startswith(str(expected.value))
    assert "pass a list of arrays" in str(got.value)


def test_total_length_pads_further_like_pad_packed_sequence():
    seqs = sequences(2)
    padded, lengths = pad_sequences(seqs, total_length=10)
    packed = pack_sequence([torch.from_numpy(s) for s in seqs], enforce_sorted=False)
    expected, _ = pad_packed_sequence(packed, total_length=10)
    assert padded.shape == (10, 4, 2)
    np.testing.assert_array_equal(padded, expected.numpy())
    with pytest.raises(ValueError, match=r"total_length .* longest sequence \(7\); got 5"):
        pad_sequences(seqs, total_length=5)


@pytest.mark.parametrize("batch_first", [False, True])
def test_unpad_sequences_matches_torch(batch_first):
    seqs = sequences(3)
    padded, lengths = pad_sequences(seqs, batch_first=batch_first)
    ours = unpad_sequences(padded, lengths, batch_first=batch_first)
    theirs = unpad_sequence(torch.from_numpy(padded), torch.from_numpy(lengths).long(),
                            batch_first=batch_first)
    assert len(ours) == len(theirs) == len(seqs)
    for a, b, original in zip(ours, theirs, seqs):
        np.testing.assert_array_equal(a, b.numpy())
        np.testing.assert_array_equal(a, original)


@pytest.mark.parametrize("batch_first", [False, True])
def test_from_packed_restores_the_original_order(batch_first):
    seqs = sequences(3)
    packed = pack_sequence([torch.from_numpy(s) for s in seqs], enforce_sorted=False)
    padded, lengths = from_packed(packed, batch_first=batch_first, padding_value=9.0)
    expected, _ = pad_sequences(seqs, batch_first=batch_first, padding_value=9.0)
    np.testing.assert_array_equal(padded, expected)
    np.testing.assert_array_equal(lengths, LENGTHS)
    assert lengths.dtype == np.int32
    padded, _ = from_packed(packed, total_length=9)
    assert padded.shape == (9, 4, 3)


@pytest.mark.parametrize("batch_first", [False, True])
def test_padded_batch_drives_lstm_like_a_packed_sequence(batch_first):
    torch.manual_seed(0)
    module = torch.nn.LSTM(3, 5, num_layers=2, bidirectional=True, batch_first=batch_first)
    seqs = sequences(3)
    packed = pack_sequence([torch.from_numpy(s) for s in seqs], enforce_sorted=False)
    t_out, (t_h, t_c) = module(packed)
    t_out, _ = pad_packed_sequence(t_out, batch_first=batch_first)

    model = jaxlstm.from_torch(module)
    padded, lengths = pad_sequences(seqs, batch_first=batch_first)
    out, (h_n, c_n) = model(padded, seq_lengths=lengths)
    np.testing.assert_allclose(out, t_out.detach().numpy(), atol=2e-6)
    np.testing.assert_allclose(h_n, t_h.detach().numpy(), atol=2e-6)
    np.testing.assert_allclose(c_n, t_c.detach().numpy(), atol=2e-6)
    # And the same packed batch, unpacked by from_packed, gives the same result.
    x, lengths_2 = from_packed(
        pack_padded_sequence(torch.from_numpy(padded), torch.from_numpy(lengths).long(),
                             batch_first=batch_first, enforce_sorted=False),
        batch_first=batch_first,
    )
    np.testing.assert_array_equal(model(x, seq_lengths=lengths_2)[0], out)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: pad_sequences([]), RuntimeError, "received an empty list of sequences"),
        (lambda: pad_sequences(5), RuntimeError,
         "pad_sequence: Expected iterable for input sequences, but got arg of type: "
         "<class 'int'>; pass a list of arrays"),
        (lambda: pad_sequences(np.float32(1.0)), RuntimeError, "Expected iterable"),
        (lambda: pad_sequences([np.ones((2, 3)), np.ones((2, 4))]), ValueError,
         r"sequences\[1\] has trailing shape \(4,\) but sequences\[0\] has \(3,\)"),
        (lambda: pad_sequences([np.ones(2, np.float32), np.ones(2)]), TypeError,
         r"sequences\[1\] has dtype float64"),
        (lambda: pad_sequences([np.float32(1.0)]), ValueError, r"sequences\[0\] is a scalar"),
        (lambda: unpad_sequences(np.ones((4, 2)), np.array([4, 5])), ValueError,
         r"lengths must lie in \[0, 4\]; got 5 at index 1"),
        (lambda: unpad_sequences(np.ones((4, 2)), np.array([1, 2, 3])), ValueError,
         r"shape \(2,\)"),
        (lambda: from_packed(np.ones((3, 2))), TypeError, "PackedSequence"),
    ],
)
def test_bad_inputs_name_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()
