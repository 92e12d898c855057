"""Progress of long work: a tqdm bar on a terminal, plain periodic log lines in a log file or CI."""

from __future__ import annotations

import logging
import sys
import time


class Progress:
    """``with Progress(total, "decode tiles") as p: ... p.update()``."""

    def __init__(self, total: int, desc: str, *, unit: str = "it", every_s: float = 10.0,
                 logger: logging.Logger | None = None, enabled: bool = True):
        self.total, self.desc, self.unit = total, desc, unit
        self.every_s = every_s
        self.log = logger or logging.getLogger("pyratok.progress")
        self.done = 0
        self.enabled = enabled and total > 1
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
            elapsed = now - self.started
            eta = elapsed / self.done * (self.total - self.done) if self.done else float("nan")
            self.log.info("%s: %d/%d %s (%.0f s, ~%.0f s left)", self.desc, self.done, self.total, self.unit, elapsed, eta)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
