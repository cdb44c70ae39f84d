"""The one check every image passes before a decoder allocates its pixels: `detector serve` on
each upload, `read_image` (predict, training batches) and the readers' `image_size` (load time)
all call `read_image_header`.

A decompression bomb is a small file that declares a huge image (an 875 KB PNG of 30000x30000
px decodes to 2.7 GB). Its size is in the header, so it is refused from there: the header is
read by PIL through a reader that stops after HEADER_READ_LIMIT bytes, and its width x height
is compared with the limit before any decoder runs. PIL's own bomb error (above about 179
Mpx) is the same refusal, never a fall-through to another decoder.

A file PIL cannot parse but OpenCV can (OpenEXR, Radiance HDR, ...) has no header check; local
files may still be such formats (`allow_unchecked_formats`), uploads may not.
"""
from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from detector.data.truncated import truncation
from detector.errors import ImageFileError, ImageTooLargeError

HEADER_READ_LIMIT = 16 * 2**20  # JPEG APP segments are <= 64 KiB each, ICC profiles a few MB: room to spare
LOCAL_MAX_PIXELS = 178_956_970  # PIL's own decompression-bomb limit (2 x Image.MAX_IMAGE_PIXELS), for local files
# Formats PIL reads the header of: a file starting so that PIL cannot parse is refused, never
# handed to OpenCV unchecked.
PIL_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM", b"II*\x00", b"MM\x00*")
BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")


class BoundedReader(io.RawIOBase):
    """A read-only binary stream over `file` that refuses to read past `limit` bytes: an
    ImageFileError naming `name` (PIL lets it through; it only swallows its parse errors)."""

    def __init__(self, file, limit: int, name: str) -> None:
        self.file, self.limit, self.name = file, limit, name

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.file.seek(offset, whence)

    def tell(self) -> int:
        return self.file.tell()

    def readinto(self, buffer) -> int:
        allowed = max(self.limit - self.file.tell(), 0)
        data = self.file.read(min(len(buffer), allowed))
        if len(buffer) > allowed and self.file.read(1):  # a read past the limit, in a file that goes on
            raise ImageFileError(self.name, f"not an image: no image header within its first {self.limit:,} bytes")
        buffer[:len(data)] = data
        return len(data)


@dataclass(frozen=True)
class ImageHeader:
    """Width and height as stored (before any EXIF rotation); `format` is PIL's name for it
    (JPEG, PNG, ...), None for a file only OpenCV reads (its size is then 0 x 0: unchecked)."""

    width: int
    height: int
    format: str | None


def read_image_header(source: str | Path | bytes, name: str | None = None, max_pixels: int = LOCAL_MAX_PIXELS,
                      *, allow_unchecked_formats: bool = True) -> ImageHeader:
    """The header of an image file (`source` a path) or upload (`source` its bytes), checked:
    raises ImageTooLargeError above `max_pixels`, ImageFileError naming `name` (default: the
    path) for a missing, empty, unreadable, non-image or truncated file. Nothing is decoded."""
    from PIL import Image  # a dependency of torchvision

    import cv2

    name = name or str(source if not isinstance(source, bytes) else "upload")
    if isinstance(source, bytes):
        if not source:
            raise ImageFileError(name, "empty file")
        file = io.BytesIO(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise ImageFileError(name, "file not found")
        if path.stat().st_size == 0:
            raise ImageFileError(name, "empty file")
        try:
            file = open(path, "rb")
        except PermissionError:
            raise ImageFileError(name, "permission denied") from None
    with file:
        try:
            with warnings.catch_warnings():  # the pixel limit is ours; PIL's warning below its error is noise
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(BoundedReader(file, HEADER_READ_LIMIT, name)) as image:
                    width, height, image_format = *image.size, image.format
        except Image.DecompressionBombError as error:
            found = BOMB_PIXELS.search(str(error))
            pixels = f"{int(found.group(1)):,} pixels" if found else "more pixels than PIL decodes"
            limit = min(max_pixels, 2 * Image.MAX_IMAGE_PIXELS)  # PIL refuses above its own, whatever ours
            raise ImageTooLargeError(name, f"{pixels}, more than the limit of {limit} (a decompression bomb?)") from None
        except ImageFileError:
            raise
        except Exception:  # noqa: BLE001 - PIL does not know the format (or the header is broken)
            file.seek(0)
            head = file.read(16)  # a JPEG PIL cannot parse is broken, not exotic
            broken = head.startswith(PIL_SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")
            if allow_unchecked_formats and not broken and not isinstance(source, bytes) \
                    and cv2.haveImageReader(str(source)):
                return ImageHeader(0, 0, None)
            if broken:
                raise ImageFileError(name, "not a readable image: its header is damaged") from None
            known = "" if allow_unchecked_formats else " (JPEG, PNG, WebP, BMP, TIFF, GIF are read)"
            raise ImageFileError(name, f"not an image: no image decoder recognizes its content{known}") from None
        if width * height > max_pixels:
            raise ImageTooLargeError(name, f"{width}x{height} pixels, more than the limit of {max_pixels}")
        cut = truncation(file, image_format)
    if cut:
        raise ImageFileError(name, cut)
    return ImageHeader(int(width), int(height), image_format)
