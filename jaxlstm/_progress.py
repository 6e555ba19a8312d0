"""Progress display for the long runs (``jaxlstm parity``, ``jaxlstm bench``).

On a terminal: a ``tqdm`` bar redrawn in place. Piped into a file or a CI log: plain lines, one
every ``PIPED_INTERVAL_S`` seconds (also while a single step runs longer than that) and one at
the end, so a log shows the run is alive. Both go to stderr, leaving stdout to the report.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterable
from typing import IO, Any

PIPED_INTERVAL_S = 10.0
# No bar in a log: the count, the times and what was done last.
PIPED_FORMAT = ("{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} "
                "[{elapsed}<{remaining}, {rate_fmt}]{postfix}")


class _Lines:
    """A stream for tqdm that turns each redraw (``\\r`` + status) into a line of its own."""

    def __init__(self, stream: IO[str]):
        self.stream = stream
        self.last = ""

    def write(self, text: str) -> None:
        text = text.replace("\r", "").strip()
        if text and text != self.last:  # closing the bar redraws its last state
            self.stream.write(text + "\n")
            self.stream.flush()
            self.last = text

    def flush(self) -> None:
        self.stream.flush()


def progress(
    iterable: Iterable[Any] | None = None,
    *,
    total: int | None = None,
    desc: str | None = None,
    unit: str = "it",
    file: IO[str] | None = None,
) -> Any:
    """A ``tqdm`` progress bar over ``iterable`` (or updated by hand up to ``total``).

    **Arguments:**

    - ``iterable``: what to iterate over; ``None`` for a bar advanced with ``.update()``.
    - ``total``: the number of steps (default ``len(iterable)``).
    - ``desc``, ``unit``: the label in front and the name of a step.
    - ``file``: where to draw (default stderr); a bar on a terminal, periodic lines otherwise.
    """
    from tqdm import tqdm

    stream = sys.stderr if file is None else file
    if stream.isatty():
        return tqdm(iterable, total=total, desc=desc, unit=unit, file=stream, mininterval=0.2,
                    dynamic_ncols=True)
    bar = tqdm(iterable, total=total, desc=desc, unit=unit, file=_Lines(stream),
               mininterval=PIPED_INTERVAL_S, bar_format=PIPED_FORMAT)
    _heartbeat(bar, PIPED_INTERVAL_S)
    return bar


def _heartbeat(bar: Any, interval: float) -> None:
    """Redraws ``bar`` every ``interval`` seconds until it is closed: tqdm itself only draws
    when a step ends, which can be minutes apart. The elapsed time changes, so each redraw is a
    new line."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            bar.refresh()

    close = bar.close

    def close_and_stop() -> None:
        stop.set()
        close()

    bar.close = close_and_stop
    threading.Thread(target=beat, name="progress-heartbeat", daemon=True).start()
