"""A dependency-free TensorBoard scalar writer.

flax.metrics.tensorboard needs TensorFlow, so the few bytes TensorBoard reads are written here:
TFRecord framing (length, masked crc32c, payload, masked crc32c) around hand-encoded `Event`
protos carrying `Summary.Value.simple_value` scalars.
"""
from __future__ import annotations

import socket
import struct
import time

import google_crc32c

from megadoc import fs


def _masked_crc(data: bytes) -> bytes:
    crc = google_crc32c.value(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def _record(payload: bytes) -> bytes:
    header = struct.pack("<Q", len(payload))
    return header + _masked_crc(header) + payload + _masked_crc(payload)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field_bytes(number: int, data: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _event(wall_time: float, step: int, *, file_version: str = "", summary: bytes = b"") -> bytes:
    out = _varint(1 << 3 | 1) + struct.pack("<d", wall_time) + _varint(2 << 3 | 0) + _varint(step)
    if file_version:
        out += _field_bytes(3, file_version.encode())
    if summary:
        out += _field_bytes(5, summary)
    return out


def scalar_event(tag: str, value: float, step: int, wall_time: float) -> bytes:
    value_msg = _field_bytes(1, tag.encode()) + _varint(2 << 3 | 5) + struct.pack("<f", value)
    return _record(_event(wall_time, step, summary=_field_bytes(1, value_msg)))


class EventWriter:
    """Buffers scalar events; `flush` appends them to one events file in `logdir`."""

    def __init__(self, logdir: str):
        fs.makedirs(logdir)
        now = time.time()
        self.path = fs.join(logdir, f"events.out.tfevents.{int(now)}.{socket.gethostname()}")
        self._pending = _record(_event(now, 0, file_version="brain.Event:2"))

    def scalar(self, tag: str, value: float, step: int) -> None:
        self._pending += scalar_event(tag, float(value), int(step), time.time())

    def flush(self) -> None:
        if not self._pending:
            return
        fs.append_bytes(self.path, self._pending)
        self._pending = b""
