"""Plain progress lines for long silent steps when the output is not a terminal.

On a terminal kbench shows transient rich bars; in a CI log, under ``nohup`` or in a
pipe those bars are off, and a step such as decoding an image folder or computing
the frozen-prefix feature cache would print nothing for minutes. :class:`LineProgress`
prints one plain line about every :data:`INTERVAL_S` seconds instead::

    decoding /data/train: 12800/50000 images (26%), 1280 images/s, 10 s elapsed, eta 29 s

Nothing is printed before the first interval has passed, so a step shorter than
:data:`INTERVAL_S` adds no line; when at least one line was printed, :meth:`LineProgress.finish`
prints a last one with the final count. Used by :func:`kbench.data.images.decode_all`
and by :class:`kbench.trainer.callbacks.LineProgressCallback` (feature-cache computation).
No keras import here.
"""

from __future__ import annotations

import sys
import time

#: Seconds between two progress lines (read at every update: tests may lower it).
INTERVAL_S = 10.0


def _duration(seconds: float) -> str:
    """``42 s``, ``3 min 5 s`` or ``1 h 02 min``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class LineProgress:
    """Prints ``what: done/total unit (pct), rate unit/s, elapsed, eta`` on ``stream``
    (default ``sys.stderr`` at each print) at most once per :data:`INTERVAL_S` seconds.

    Args:
        what: the step, e.g. ``"decoding /data/train"``.
        total: how many items the step has (> 0 for a percentage and an eta).
        unit: the items' name in the line (``"images"``).
        stream: a text stream; None: the current ``sys.stderr``.

    Call :meth:`update` with the number of items done so far (non-decreasing), and
    :meth:`finish` at the end.
    """

    def __init__(self, what: str, total: int, unit: str = "images", stream=None):
        self.what, self.total, self.unit, self.stream = what, int(total), unit, stream
        self.start = self.last = time.perf_counter()
        self.done = 0
        self.printed = 0  # the ``done`` of the last printed line (0: none yet)

    def line(self, done: int, now: float | None = None) -> str:
        """The progress line for ``done`` items at time ``now`` (``time.perf_counter()``)."""
        elapsed = max((now or time.perf_counter()) - self.start, 1e-9)
        rate = done / elapsed
        pct = f" ({100 * done / self.total:.0f}%)" if self.total > 0 else ""
        eta = f", eta {_duration((self.total - done) / rate)}" if rate > 0 and self.total > done else ""
        return (f"{self.what}: {done}/{self.total} {self.unit}{pct}, {rate:.0f} {self.unit}/s, "
                f"{_duration(elapsed)} elapsed{eta}")

    def _print(self, done: int, now: float) -> None:
        print(self.line(done, now), file=self.stream or sys.stderr, flush=True)
        self.last, self.printed = now, done

    def update(self, done: int) -> None:
        """Record ``done`` items; print a line when :data:`INTERVAL_S` has passed since the last one."""
        self.done = done
        now = time.perf_counter()
        if now - self.last >= INTERVAL_S:
            self._print(done, now)

    def finish(self) -> None:
        """Print a last line with the final count, only if a line was printed before
        (short steps stay silent) and the count changed since."""
        if self.printed and self.done != self.printed:
            self._print(self.done, time.perf_counter())


__all__ = ["INTERVAL_S", "LineProgress"]
