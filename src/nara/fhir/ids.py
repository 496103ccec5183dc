"""Resource ids: validation of client ids and generation of server ids."""

from __future__ import annotations

import os
import re
import time

ID_RE = re.compile(r"[A-Za-z0-9\-\.]{1,64}")


def is_valid_id(value: str) -> bool:
    return bool(ID_RE.fullmatch(value))


def new_id() -> str:
    """A time-ordered UUID (version 7 layout): new rows land at the right edge of the id index."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80 | rand
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
