"""Progress of long work: a tqdm bar on a terminal, plain periodic log lines in a log file or CI."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Iterator


class Progress:
    """``with Progress(total, "decode tiles") as p: ... p.update()``; ``total=None`` when unknown."""

    def __init__(self, total: int | None, desc: str, *, unit: str = "it", every_s: float = 10.0,
                 logger: logging.Logger | None = None, enabled: bool = True):
        self.total, self.desc, self.unit = total, desc, unit
        self.every_s = every_s
        self.log = logger or logging.getLogger("pyratok.progress")
        self.done = self.reported = 0
        self.enabled = enabled and (total is None or total > 1)
        self.started = self.last = time.monotonic()
        self.bar = None
        if self.enabled and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, leave=False)

    def update(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if now - self.last >= self.every_s or self.done == self.total:
            self.last = now
            self._line(now)

    def _line(self, now: float) -> None:
        self.reported = self.done
        elapsed = now - self.started
        if self.total is None:
            self.log.info("%s: %d %s (%.0f s)", self.desc, self.done, self.unit, elapsed)
            return
        eta = elapsed / self.done * (self.total - self.done) if self.done else float("nan")
        self.log.info("%s: %d/%d %s (%.0f s, ~%.0f s left)", self.desc, self.done, self.total, self.unit, elapsed, eta)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and exc_type is None and self.total is None and self.done != self.reported:
            self._line(time.monotonic())  # where an unknown total ended


def stream_rows(ds, *, total: int | None, desc: str, unit: str, logger: logging.Logger | None = None) -> Iterator[dict[str, Any]]:
    """The rows of a Ray Data dataset as its blocks finish, with progress of ``total`` ``unit``.

    On a terminal Ray Data draws its own live bars (one per running dataset, closed at its end); in
    a log, where its console lines are off (``quiet_ray_data``), this writes plain periodic lines.
    """
    with Progress(total, desc, unit=unit, logger=logger, enabled=not sys.stderr.isatty()) as progress:
        for batch in ds.iter_batches(batch_size=None, batch_format="pandas"):
            rows = batch.to_dict("records")
            yield from rows
            progress.update(len(rows))
