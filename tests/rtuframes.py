"""RTU answers as a fault relay sees them: cut a byte stream into whole frames, and spoil a
frame the way a bus does (a CRC broken by noise, or a valid frame under another device's
id). Used by the serial relay and the TCP fault proxy; pure, no I/O."""

from __future__ import annotations

from collections.abc import Collection, Mapping

#: Answers of a fixed length by function code (writes echo address and count or value).
_FIXED = {5: 8, 6: 8, 15: 8, 16: 8}


def crc(body: bytes) -> bytes:
    """Modbus CRC-16 of `body`, low byte first as on the wire."""
    value = 0xFFFF
    for byte in body:
        value ^= byte
        for _ in range(8):
            value = (value >> 1) ^ 0xA001 if value & 1 else value >> 1
    return value.to_bytes(2, "little")


def answer_length(buffer: bytes) -> int | None:
    """Bytes of the answer at the start of `buffer`; None while too little has come to
    tell, 0 for a function this reader does not know (the rest passes as it is)."""
    if len(buffer) < 2:
        return None
    function = buffer[1]
    if function & 0x80:
        return 5  # id, function, exception code, CRC
    if function in (1, 2, 3, 4):
        return 5 + buffer[2] if len(buffer) >= 3 else None
    return _FIXED.get(function, 0)


def split_answers(buffer: bytes) -> tuple[list[bytes], bytes]:
    """The whole answers at the start of `buffer` and the incomplete rest; bytes of an
    unknown function go out as one chunk, untouched."""
    frames: list[bytes] = []
    while buffer:
        length = answer_length(buffer)
        if length is None or len(buffer) < length:
            break
        if length == 0:
            length = len(buffer)
        frames.append(buffer[:length])
        buffer = buffer[length:]
    return frames, buffer


def spoil(frame: bytes, *, bad_crc: Collection[int], wrong_id: Mapping[int, int]) -> bytes:
    """`frame` with its CRC broken if its device id is in `bad_crc`, or re-addressed to
    `wrong_id[id]` with a good CRC (a well-formed answer from the wrong device)."""
    device = frame[0]
    if device in bad_crc:
        return frame[:-1] + bytes([frame[-1] ^ 0xFF])
    if device in wrong_id:
        body = bytes([wrong_id[device]]) + frame[1:-2]
        return body + crc(body)
    return frame


def spoil_answers(
    buffer: bytes, *, bad_crc: Collection[int], wrong_id: Mapping[int, int]
) -> tuple[bytes, bytes, int]:
    """The whole answers of `buffer` as `spoil` leaves them, the incomplete rest, and how
    many of them it spoiled."""
    frames, rest = split_answers(buffer)
    spoiled = [spoil(f, bad_crc=bad_crc, wrong_id=wrong_id) for f in frames]
    changed = sum(s != f for s, f in zip(spoiled, frames, strict=True))
    return b"".join(spoiled), rest, changed
