"""Docker's exec stream, both ways: the output read as it comes (multiplexed frames, or a
terminal's raw bytes) and the input side (stdin, its end, the terminal's size). Output is
passed on as opaque bytes, never parsed.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from typing import Any

from ..errors import Failed, InvalidInput

STREAMS = {1: "stdout", 2: "stderr"}


class Controls:
    """An interactive exec's input side: stdin, its end, the terminal's size. Safe to use
    from another thread than the one reading the output."""

    def __init__(self, api: Any, exec_id: str, sock: socket.socket, tty: bool) -> None:
        self.api, self.exec_id, self.tty = api, exec_id, tty
        # A descriptor of its own, blocking: the reader's short timeouts never cut stdin.
        self.writer = sock.dup()
        self.writer.settimeout(None)
        # Input waits for the launcher's first line: a terminal echoes what it gets, and
        # an echo before that line would hide it.
        self.ready = threading.Event()

    def write(self, data: bytes) -> None:
        self.ready.wait(30)
        self.writer.sendall(data)

    def close_stdin(self) -> None:
        with contextlib.suppress(OSError):
            self.writer.shutdown(socket.SHUT_WR)

    def resize(self, rows: int, cols: int) -> None:
        if not (self.tty and 0 < rows <= 1000 and 0 < cols <= 1000):
            raise InvalidInput(
                "resize", [f"resize: {rows}x{cols} (allowed: a terminal, 1 to 1000 each way)"]
            )
        self.api.exec_resize(self.exec_id, height=rows, width=cols)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.writer.close()


class Raw:
    """A terminal exec's stream: not multiplexed, all of it the terminal's output."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def next(self) -> tuple[int, bytes] | None:
        data = self.sock.recv(256 * 1024)
        return (1, data) if data else None


class Frames:
    """Docker's multiplexed stream (``<stream><0,0,0><size:4>`` + payload) read from a
    socket as it comes; payloads are passed on as opaque bytes, possibly split."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.stream = 0
        self.left = 0

    def next(self) -> tuple[int, bytes] | None:
        """The next piece of output, or None at the end; raises ``TimeoutError`` when the
        socket's timeout passes first (call again to go on)."""
        while True:
            if self.left and self.buffer:
                piece = bytes(self.buffer[: self.left])
                del self.buffer[: len(piece)]
                self.left -= len(piece)
                return self.stream, piece
            if not self.left and len(self.buffer) >= 8:
                self.stream, self.left = self.buffer[0], struct.unpack(">I", self.buffer[4:8])[0]
                del self.buffer[:8]
                continue
            data = self.sock.recv(256 * 1024)
            if not data:
                return None
            self.buffer += data


def raw_socket(sock: Any) -> socket.socket:
    """The socket under docker-py's hijacked exec stream."""
    raw = getattr(sock, "_sock", sock)
    if not isinstance(raw, socket.socket):
        raise Failed("the engine's exec stream is not a socket here (unsupported transport)")
    return raw


def feed(sock: socket.socket | Controls, data: bytes) -> None:
    """Write ``data`` as stdin, then end it (a thread of its own for an exec's stdin: a
    command that writes before it reads must not wait on us)."""
    try:
        if isinstance(sock, Controls):
            sock.write(data)
            sock.close_stdin()
        else:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    finally:
        if isinstance(sock, Controls):
            sock.close()
