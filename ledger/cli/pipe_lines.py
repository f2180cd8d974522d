"""The lines of a pipe, a FIFO or a terminal, read so that a reader can tell whether the next
line is already there.

`record -` and `publish -` answer a batch once it is recorded. Read through Python's buffered
file, a batch ended only at its size or at the input's end, so a service that piped one fact
and waited for its answer before writing the next waited for ever, and one that wrote a few
facts a minute had them answered 1,000 (or 2,000) at a time. Read from the descriptor, the
reader knows when the next line has not come yet and ends the batch there.
"""

from __future__ import annotations

import os
import select
from collections import deque
from collections.abc import Iterator

CHUNK = 1 << 16  # bytes asked of the descriptor at a time, a pipe's buffer on Linux


class PipeLines:
    """The lines of a descriptor that may have nothing to read yet, each with its b"\\n"
    (the last one without, if the input does not end with one): what iterating a binary
    file gives."""

    def __init__(self, fd: int, *, owned: bool) -> None:
        self.fd = fd
        self.owned = owned  # closed with this reader (not stdin, which is the process's)
        self.lines: deque[bytes] = deque()  # whole lines read, not yet given
        self.partial = b""  # the start of a line whose end has not been read
        self.ended = False

    def ready(self) -> bool:
        """Whether the next whole line (or the input's end) can be had without waiting.

        What is there is read to find out: bytes there but no line end among them (a writer
        that flushed mid-line) would have the caller wait in the next read, the lines
        before them held unanswered until the writer ends that line.
        """
        while not (self.lines or self.ended):
            # poll, not select: select takes no descriptor past 1023. Any event will do:
            # data, or the writer gone (POLLHUP), after which a read gives the end at once.
            watch = select.poll()
            watch.register(self.fd, select.POLLIN)
            if not watch.poll(0):
                return False
            self._read()
        return True

    def __iter__(self) -> Iterator[bytes]:
        while True:
            if self.lines:
                yield self.lines.popleft()
            elif self.ended:
                return
            else:
                self._read()

    def read(self) -> bytes:
        """The rest of the input, to its end."""
        parts = [*self.lines, self.partial]
        self.lines.clear()
        self.partial = b""
        while not self.ended:
            chunk = os.read(self.fd, CHUNK)
            parts.append(chunk)
            self.ended = not chunk
        return b"".join(parts)

    def close(self) -> None:
        if self.owned and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _read(self) -> None:
        """One read of the descriptor (waiting for it), its whole lines queued."""
        chunk = os.read(self.fd, CHUNK)
        if not chunk:
            self.ended = True
            if self.partial:
                self.lines.append(self.partial)
                self.partial = b""
            return
        *whole, self.partial = (self.partial + chunk).split(b"\n")
        self.lines.extend(line + b"\n" for line in whole)
