"""A relay between two serial lines (pty ends made by socat) that can silence devices:
a request addressed to a silenced device id is dropped, as a dead device on an RS-485 bus
never answers; and spoil answers: a device's answers reach the client with a broken CRC
(noise on the line), or under another device's id with a good CRC (two devices set to one
address, a misconfigured one answering). Everything else passes both ways. A thread of its
own; `stop()` joins it."""

from __future__ import annotations

import os
import select
import threading
import tty

from tests.rtuframes import spoil_answers


class SerialRelay:
    def __init__(self, client_side: str, server_side: str) -> None:
        self._client = _open_raw(client_side)
        self._server = _open_raw(server_side)
        #: Device ids whose requests are dropped.
        self.silent: set[int] = set()
        #: Requests dropped so far.
        self.dropped = 0
        #: Device ids whose answers get a broken CRC.
        self.bad_crc: set[int] = set()
        #: Device id -> the id its answers are rewritten to (with a good CRC).
        self.wrong_id: dict[int, int] = {}
        #: Answers spoiled so far.
        self.spoiled = 0
        self._answers = b""  # an answer may come from the device in more than one chunk
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="serial-relay", daemon=True)

    def start(self) -> SerialRelay:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        os.close(self._client)
        os.close(self._server)

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._client, self._server], [], [], 0.05)
            for fd in ready:
                data = os.read(fd, 4096)
                if fd == self._server:
                    os.write(self._client, self._answer(data))
                elif data and data[0] in self.silent:
                    # A client writes a request in one go, so a chunk starts with its
                    # device id (the first byte of an RTU frame).
                    self.dropped += 1
                else:
                    os.write(self._server, data)

    def _answer(self, data: bytes) -> bytes:
        """What reaches the client of the device's `data`: whole answers, spoiled as set."""
        if not (self.bad_crc or self.wrong_id):
            return data
        out, self._answers, spoiled = spoil_answers(
            self._answers + data, bad_crc=self.bad_crc, wrong_id=self.wrong_id
        )
        self.spoiled += spoiled
        return out


def _open_raw(path: str) -> int:
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    tty.setraw(fd)
    return fd
