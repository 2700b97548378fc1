"""An instance's output on its vm host: appended to a file of bounded size, and read back in
chunks for the controller's `logs` requests (protocol.py).

The daemon reads the instance's stdout and stderr (one pipe) and writes here, so it knows when
each byte came: a *mark* (end offset, time) per quarter second of output, as the lab's
controller times its instances' files once a tick (controller/instance_logs.py). A chunk is cut
at marks, so the time it carries is its lines' time within 0.25 s.

The file is NAME.HOST.log as before (earlier instances of the name on this host come before
this one's output); when it would pass `cap` bytes it is renamed to NAME.HOST.log.1 (replacing
the one before) and a new file begins: a host keeps at most 2 x cap bytes per instance name, and
the controller can read the current file's part, the bytes before it are reported as skipped.
Offsets are the instance's own: byte 0 is its first, whichever file holds it now.
"""

from __future__ import annotations

import os
import time
from collections import deque
from pathlib import Path
from typing import BinaryIO

from boxer.backends.vmhost.limits import DEFAULT_CAP
from boxer.backends.vmhost.protocol import LOG_CHUNK, LOG_CHUNKS, LOG_REQUEST

__all__ = ["DEFAULT_CAP", "InstanceOutput", "Piece"]

MARK_EVERY = 0.25  # seconds of output under one mark (one time for its lines)
_MARKS = 4096  # marks kept per instance: 17 min of continuous output

Piece = tuple[int, bytes, float]  # (offset in the instance's output, bytes, when the last was written)


class InstanceOutput:
    def __init__(self, path: Path, cap: int = DEFAULT_CAP, wall: object = time.time) -> None:
        if cap < LOG_CHUNK:
            raise ValueError(f"a log cap of {cap} bytes is less than one chunk ({LOG_CHUNK})")
        self.path = path
        self.cap = cap
        self._wall = wall
        self._file: BinaryIO | None = open(path, "ab")  # noqa: SIM115
        # The instance's byte x is at x - shift of the current file: it began at the file's end.
        self.shift = -self._file.tell()
        self.size = 0
        self.running = True
        self.started_at: float = self._now()
        self.marks: deque[tuple[int, float]] = deque()
        self.rotations = 0

    def _now(self) -> float:
        return float(self._wall())  # type: ignore[operator]

    @property
    def first(self) -> int:
        """The first byte of the instance's output still on the host."""
        return min(self.size, max(0, self.shift))

    def write(self, data: bytes) -> None:
        if self._file is None or not data:
            return
        if self.size - self.shift + len(data) > self.cap:
            self._rotate()
        self._file.write(data)
        self._file.flush()
        self.size += len(data)
        now = self._now()
        if self.marks and now - self.marks[-1][1] < MARK_EVERY:
            self.marks[-1] = (self.size, self.marks[-1][1])
        else:
            if len(self.marks) >= _MARKS:
                self.marks.popleft()
            self.marks.append((self.size, now))

    def _rotate(self) -> None:
        assert self._file is not None
        self._file.close()
        os.replace(self.path, f"{self.path}.1")
        self._file = open(self.path, "wb")  # noqa: SIM115
        self.shift = self.size
        self.rotations += 1

    def lost_file(self) -> None:
        """Another instance of the name rotated the file this one's output was in (it ended)."""
        self.shift = self.size

    def close(self) -> None:
        self.running = False
        if self._file is not None:
            self._file.close()
            self._file = None

    def read(self, offset: int) -> tuple[int, list[Piece]]:
        """From byte `offset` (negative: the last -offset bytes), at most LOG_REQUEST bytes in at
        most LOG_CHUNKS pieces of at most LOG_CHUNK: (where it began, the pieces)."""
        start = max(0, self.size + offset) if offset < 0 else offset
        start = min(max(start, self.first), self.size)
        end = min(self.size, start + LOG_REQUEST)
        if end <= start:
            return start, []
        try:
            with open(self.path, "rb") as file:
                file.seek(start - self.shift)
                data = file.read(end - start)
        except OSError:
            return start, []
        end = start + len(data)
        pieces: list[Piece] = []
        at = start
        while at < end and len(pieces) < LOG_CHUNKS:
            until, when = self._mark_after(at)
            until = min(until, end, at + LOG_CHUNK)
            pieces.append((at, data[at - start:until - start], when))
            at = until
        return start, pieces

    def _mark_after(self, offset: int) -> tuple[int, float]:
        """The end and time of the mark holding byte `offset` (bytes of marks dropped get the
        oldest kept one's: a little late)."""
        marks = self.marks
        low, high = 0, len(marks)
        while low < high:  # the first mark whose end is past `offset`
            mid = (low + high) // 2
            if marks[mid][0] <= offset:
                low = mid + 1
            else:
                high = mid
        if low == len(marks):
            return self.size, marks[-1][1] if marks else self.started_at
        return marks[low][0], marks[low][1]
