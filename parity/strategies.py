"""Hypothesis strategies for random LSTM and LSTMCell configurations, and the test profiles.

The drawn cases (:class:`~parity.properties.PropertyCase`) run through
:func:`parity.properties.run_property_case` (and :mod:`parity.forward_mode`), which need no
hypothesis: only the property tests import this module.

Profiles: the tests use :func:`property_settings`, which reads ``HYPOTHESIS_PROFILE``:
unset or ``ci`` is a fixed-seed run of the number of examples each test asks for; ``long`` is a
fresh random run of :data:`LONG_EXAMPLES` examples per test::

    HYPOTHESIS_PROFILE=long python -m pytest -q tests/test_properties.py
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from parity.properties import DTYPES, PropertyCase

LONG_EXAMPLES = 5000

settings.register_profile(
    "ci", derandomize=True, deadline=None, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "long", max_examples=LONG_EXAMPLES, derandomize=False, deadline=None, database=None,
    print_blob=True, suppress_health_check=[HealthCheck.too_slow],
)


def property_settings(ci_examples: int, long_examples: int = LONG_EXAMPLES) -> settings:
    """Hypothesis settings for one property test.

    **Arguments:**

    - ``ci_examples``: examples per run under the default ``ci`` profile (fixed seed, so every CI
      run checks the same configurations).
    - ``long_examples``: fresh random examples per run under ``HYPOTHESIS_PROFILE=long``
      (default :data:`LONG_EXAMPLES`; a property split over several tests shares them).
    """
    name = os.environ.get("HYPOTHESIS_PROFILE", "ci")
    if name not in ("ci", "long"):
        raise ValueError(f"HYPOTHESIS_PROFILE must be 'ci' or 'long', got {name!r}")
    if name == "long":
        return settings(settings.get_profile("long"), max_examples=long_examples)
    return settings(settings.get_profile("ci"), max_examples=ci_examples)


@st.composite
def lstm_cases(draw: st.DrawFn, max_seq_len: int = 64, max_batch: int = 8,
               max_size: int = 32) -> PropertyCase:
    """Random ``nn.LSTM`` configurations and input shapes.

    1–3 layers, either direction, ``proj_size`` (0 or 1..H-1), bias on/off, ``batch_first``,
    ``N`` in 1..``max_batch`` (unbatched one time in three), with/without ``(h0, c0)``, ``T`` in
    1..``max_seq_len``, sizes in 1..``max_size``, and half the time random lengths in 1..T;
    scan ``unroll`` 1–3, ``remat`` off or with a chunk length in 1..T+2, and for stacked
    unidirectional layers without remat, ``wavefront`` half the time.
    """
    hidden_size = draw(st.integers(1, max_size))
    proj_size = 0
    if hidden_size > 1 and draw(st.booleans()):
        proj_size = draw(st.integers(1, hidden_size - 1))
    seq_len = draw(st.integers(1, max_seq_len))
    # Batched input two times in three: unbatched input is the rarer case in use.
    batch = draw(st.integers(1, max_batch)) if draw(st.sampled_from([True, True, False])) else None
    lengths = None
    if draw(st.booleans()):
        count = 1 if batch is None else batch
        lengths = tuple(draw(st.lists(st.integers(1, seq_len), min_size=count, max_size=count)))
    remat = draw(st.integers(1, seq_len + 2)) if draw(st.sampled_from([0, 0, 1])) else 0
    num_layers = draw(st.integers(1, 3))
    bidirectional = draw(st.booleans())
    return PropertyCase(
        input_size=draw(st.integers(1, max_size)),
        hidden_size=hidden_size,
        num_layers=num_layers,
        bias=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        bidirectional=bidirectional,
        proj_size=proj_size,
        seq_len=seq_len,
        batch=batch,
        with_hx=draw(st.booleans()),
        packed=lengths is not None,
        lengths=lengths,
        unroll=draw(st.sampled_from([1, 1, 2, 3])),
        remat=remat,
        wavefront=num_layers > 1 and not bidirectional and not remat and draw(st.booleans()),
    )


@st.composite
def cell_cases(draw: st.DrawFn, max_batch: int = 8, max_size: int = 32) -> PropertyCase:
    """Random ``nn.LSTMCell`` configurations: sizes, bias, batched or not, with/without hx."""
    return PropertyCase(
        kind="cell",
        input_size=draw(st.integers(1, max_size)),
        hidden_size=draw(st.integers(1, max_size)),
        bias=draw(st.booleans()),
        batch=draw(st.none() | st.integers(1, max_batch)),
        with_hx=draw(st.booleans()),
    )


seeds = st.integers(0, 2**31 - 1)
dtypes = st.sampled_from(DTYPES)
