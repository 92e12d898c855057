"""Run ffmpeg/ffprobe with a hard timeout.

A corrupt or stalled input can make ffmpeg wait forever (a FIFO, a dead HTTP
range read). ``subprocess.run(timeout=...)`` only kills the direct child, so
each command gets its own process group and the whole group is killed when
the deadline passes; the caller turns that into a reject, never a hung task.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from dataclasses import dataclass

_CONTEXT_ADDRESS = re.compile(r" @ 0x[0-9a-fA-F]+\]")


class CommandTimeout(RuntimeError):
    def __init__(self, program: str, timeout_s: float):
        super().__init__(f"{program} did not finish within {timeout_s:g}s (killed)")
        self.program = program
        self.timeout_s = timeout_s


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: bytes
    stderr: bytes

    def error_tail(self, limit: int = 300) -> str:
        """The last line(s) of stderr: ffmpeg's actual complaint, not its banner.

        ffmpeg tags lines with its context's address (``[mov,mp4 @ 0x5581...]``); that differs
        every run, and a reject's detail must not (two runs of one input give identical rejects).
        """
        text = _CONTEXT_ADDRESS.sub("]", self.stderr.decode("utf-8", errors="replace")).strip()
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        return (" | ".join(lines[-2:]) if lines else f"exit code {self.returncode}")[-limit:]


def run_command(args: list[str], timeout_s: float) -> CommandResult:
    """Run ``args`` to completion; raise :class:`CommandTimeout` (after killing its group) if it overruns."""
    proc = subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):  # the group may already be gone
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise CommandTimeout(os.path.basename(args[0]), timeout_s) from None
    return CommandResult(proc.returncode, out, err)

