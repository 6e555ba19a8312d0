"""The configurations whose outputs and gradients the parity suite checks against torch.

``grid()`` is the default run's (and CI's): every feature at least once — 1–3 layers, both
directions, ``proj_size``, no bias, ``batch_first``, unbatched input, with and without
``(h0, c0)``, dropout (eval mode), packed sequences, ``remat``, the wavefront, the cell.
``grid(full=True)`` is the full grid: every combination of layers, directions, projection,
bias and layout, and longer sequences. The forward-mode and dropout-mask cases are in
:mod:`parity.forward_mode` and :mod:`parity.dropout`.
"""

from __future__ import annotations

import dataclasses
import itertools


@dataclasses.dataclass(frozen=True)
class Case:
    """One torch module + one input. ``batch=None`` means unbatched input.

    ``packed``: the batch has per-sequence lengths (random, unsorted, including 1 and
    ``seq_len``) and torch runs it through ``pack_padded_sequence``.
    """

    kind: str = "lstm"  # "lstm" or "cell"
    input_size: int = 5
    hidden_size: int = 8
    num_layers: int = 1
    bias: bool = True
    batch_first: bool = False
    bidirectional: bool = False
    proj_size: int = 0
    dropout: float = 0.0
    seq_len: int = 7
    batch: int | None = 4
    with_hx: bool = True
    packed: bool = False
    remat: int = 0  # chunk length of the rematerialised backward pass (0: off)
    wavefront: bool = False  # stacked unidirectional layers in one loop (functional.lstm)

    @property
    def name(self) -> str:
        if self.kind == "cell":
            parts = [f"cell I{self.input_size} H{self.hidden_size}"]
        else:
            parts = [f"L{self.num_layers}", "bi" if self.bidirectional else "uni"]
            if self.proj_size:
                parts.append(f"P{self.proj_size}")
            if self.batch_first:
                parts.append("bf")
            if self.dropout:
                parts.append(f"drop{self.dropout}")
            if self.packed:
                parts.append("packed")
            if self.remat:
                parts.append(f"remat{self.remat}")
            if self.wavefront:
                parts.append("wavefront")
            parts.append(f"T{self.seq_len}")
        if not self.bias:
            parts.append("nobias")
        parts.append("unbatched" if self.batch is None else f"N{self.batch}")
        if not self.with_hx:
            parts.append("no-hx")
        return " ".join(parts)


def _lstm_cases(full: bool) -> list[Case]:
    cases = []
    lengths = [1, 7, 50, 200] if full else [1, 7, 30]
    layer_counts = [1, 2, 3]
    combos = list(itertools.product(layer_counts, [False, True], [0, 3], [True, False],
                                    [False, True]))
    if not full:
        combos = combos[::3]
    for index, (layers, bi, proj, bias, batch_first) in enumerate(combos):
        cases.append(
            Case(
                num_layers=layers, bidirectional=bi, proj_size=proj, bias=bias,
                batch_first=batch_first, seq_len=lengths[index % len(lengths)],
                with_hx=index % 4 != 1, dropout=0.4 if layers > 1 and index % 5 == 0 else 0.0,
            )
        )
    unbatched = [(1, False, 0), (2, True, 3), (3, True, 0)] if full else [(2, True, 3)]
    for layers, bi, proj in unbatched:
        for batch_first, with_hx in [(False, True), (True, False)]:
            cases.append(Case(num_layers=layers, bidirectional=bi, proj_size=proj, batch=None,
                              batch_first=batch_first, with_hx=with_hx))
    packed = list(itertools.product([1, 2, 3], [False, True], [0, 3]))
    if not full:
        packed = packed[::3]
    for index, (layers, bi, proj) in enumerate(packed):
        cases.append(
            Case(num_layers=layers, bidirectional=bi, proj_size=proj, packed=True,
                 seq_len=[9, 30, 200][index % 3] if full else 9, batch=5,
                 batch_first=index % 2 == 1, with_hx=index % 4 != 3,
                 dropout=0.3 if layers > 1 else 0.0)
        )
    cases.append(Case(num_layers=2, bidirectional=True, proj_size=3, packed=True, seq_len=23,
                      batch=5, remat=5))
    # Stacked unidirectional layers as one wavefront: plain, projected + packed + batch-first,
    # without bias or initial state, unbatched.
    cases += [
        Case(num_layers=2, wavefront=True),
        Case(num_layers=3, proj_size=3, packed=True, batch_first=True, seq_len=9, batch=5,
             dropout=0.3, wavefront=True),
        Case(num_layers=3, bias=False, with_hx=False, seq_len=1, wavefront=True),
        Case(num_layers=2, batch=None, wavefront=True),
    ]
    if full:
        cases.append(Case(num_layers=3, packed=True, seq_len=200, batch=5, wavefront=True))
    if full:
        cases.append(Case(num_layers=1, seq_len=64, remat=8))
        cases.append(Case(input_size=32, hidden_size=64, num_layers=2, bidirectional=True,
                          seq_len=200, batch=16))
    return cases


def _cell_cases(full: bool) -> list[Case]:
    combos = [(True, 4, True), (False, 4, True), (True, None, True), (True, 3, False)]
    if full:
        combos += [(False, None, False), (True, 1, True)]
    return [Case(kind="cell", bias=bias, batch=batch, with_hx=with_hx)
            for bias, batch, with_hx in combos]


def grid(full: bool = False) -> list[Case]:
    """The default grid (what ``python -m parity`` and CI run) or the full grid (``--full``)."""
    return _lstm_cases(full) + _cell_cases(full)
