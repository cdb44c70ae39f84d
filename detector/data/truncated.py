"""Is a JPEG or PNG file cut short? Found at load time, without decoding the pixels.

A truncated JPEG has a valid header, and OpenCV decodes it with a warning, grey below the cut:
the model would train on half an image with boxes over grey. A truncated PNG fails to decode
mid-epoch. Both are cheap to find from the file's structure: a complete file ends with its
end marker (one small read at the end); only files that do not (truncated, or carrying data
after the image) are walked marker by marker. Other formats are not checked.
"""
from __future__ import annotations

import re
from contextlib import nullcontext
from pathlib import Path
from typing import BinaryIO

PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the IEND chunk: length 0, type, CRC
JPEG_END = b"\xff\xd9"
# In JPEG entropy-coded data 0xFF is followed by 0x00 (stuffing) or a restart marker D0-D7;
# any other byte after 0xFF is the next marker (0xFF itself is fill before a marker).
NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def truncation(source: Path | BinaryIO, image_format: str | None) -> str | None:
    """Why `source` (a path, or an open binary file: an upload) is cut short, or None.
    `image_format` is PIL's name for it (JPEG, MPO, PNG)."""
    with open(source, "rb") if isinstance(source, (str, Path)) else nullcontext(source) as file:
        file.seek(0, 2)
        size = file.tell()
        file.seek(max(size - 16, 0))
        tail = file.read()
        if image_format in ("JPEG", "MPO"):
            if tail.rstrip(b"\x00\r\n ").endswith(JPEG_END):
                return None
            file.seek(0)
            complete = _jpeg_complete(file.read())
            return None if complete else "truncated: the JPEG data stops before its end-of-image marker"
        if image_format == "PNG":
            if tail.endswith(PNG_END) or _png_complete(file, size):
                return None
            return "truncated: the PNG stops before its IEND chunk"
    return None


def _jpeg_complete(data: bytes) -> bool:
    """Walk the markers of the first image: segments, then entropy-coded scans, up to EOI."""
    position = 2  # after SOI
    while position < len(data):
        if data[position] != 0xFF:  # stray bytes before a marker: skip them, as libjpeg does
            position = data.find(b"\xff", position)
            if position < 0:
                return False
            continue
        while position < len(data) and data[position] == 0xFF:  # fill bytes
            position += 1
        if position >= len(data):
            return False
        marker = data[position]
        if marker == 0xD9:
            return True
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            position += 1
            continue
        if position + 3 > len(data):
            return False
        position += 1 + int.from_bytes(data[position + 1:position + 3], "big")
        if marker == 0xDA:  # start of scan: entropy-coded data up to the next marker
            found = NEXT_MARKER.search(data, position)
            if found is None:
                return False
            position = found.start()
    return False


def _png_complete(file, size: int) -> bool:
    """Walk the chunks (length, type, data, CRC) up to IEND, reading only their headers."""
    position = 8  # after the signature
    while position + 8 <= size:
        file.seek(position)
        header = file.read(8)
        length, kind = int.from_bytes(header[:4], "big"), header[4:]
        if kind == b"IEND":
            return True
        position += 12 + length
    return False
