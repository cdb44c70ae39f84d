"""One image out of a `POST /predict` body, read as it streams in and refused as soon as a limit
is passed: Content-Length is checked before the first byte is read, then every byte is counted,
so a 200 MB body costs a 413 and at most the limit in memory, never a temp file or a buffer of
the rest. (Starlette's form parser spools every part to memory or disk before the endpoint
runs; this reads `request.stream()` through python-multipart's streaming parser instead.)

The form: one part named "file" holding the image (other small fields are ignored). A second
file is a 400, not silently dropped: one image per request, and the server batches concurrent
requests itself (batching.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detector.errors import ImageFileError, ImageTooLargeError, UploadError
from detector.serving.settings import FORM_OVERHEAD_BYTES

MAX_PARTS = 16
MAX_FILENAME_CHARACTERS = 255


@dataclass
class Upload:
    filename: str
    content: bytes


class FormReader:
    """python-multipart callbacks that keep the one file part, within `max_file_bytes`."""

    def __init__(self, max_file_bytes: int) -> None:
        self.max_file_bytes = max_file_bytes
        self.parts = 0
        self.header_field, self.header_value = bytearray(), bytearray()
        self.disposition = b""
        self.is_file = False
        self.upload: Upload | None = None
        self.file_data = bytearray()
        self.ended = False

    def callbacks(self) -> dict:
        return {"on_part_begin": self.part_begin, "on_header_field": self.header_field_data,
                "on_header_value": self.header_value_data, "on_header_end": self.header_end,
                "on_headers_finished": self.headers_finished, "on_part_data": self.part_data,
                "on_part_end": self.part_end, "on_end": self.end}

    def part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise UploadError(400, f"more than {MAX_PARTS} parts in the form: send one image as the multipart field 'file'")
        self.disposition, self.is_file = b"", False

    def header_field_data(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def header_value_data(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def header_end(self) -> None:
        if bytes(self.header_field).lower() == b"content-disposition":
            self.disposition = bytes(self.header_value)
        self.header_field, self.header_value = bytearray(), bytearray()

    def headers_finished(self) -> None:
        from python_multipart.multipart import parse_options_header

        _, options = parse_options_header(self.disposition)
        field, filename = options.get(b"name", b"").decode("utf-8", "replace"), options.get(b"filename")
        if field != "file" and filename is None:
            return  # a small form field: counted against the body limit, otherwise ignored
        if field != "file":
            raise UploadError(400, f"a file in the field {field!r}: send the image as the multipart field 'file'")
        if self.upload is not None:
            raise UploadError(400, "more than one file: /predict takes one image per request "
                                   "(send concurrent requests; the server batches them)")
        self.upload = Upload(checked_filename(filename), b"")
        self.is_file = True

    def part_data(self, data: bytes, start: int, end: int) -> None:
        if not self.is_file:
            return
        self.file_data += data[start:end]
        if len(self.file_data) > self.max_file_bytes:
            raise UploadError(413, f"{self.upload.filename}: more than the limit of {self.max_file_bytes} bytes "
                                   "(refused while streaming)")

    def part_end(self) -> None:
        if self.is_file:
            self.upload.content = bytes(self.file_data)
            self.file_data = bytearray()
            self.is_file = False


    def end(self) -> None:
        self.ended = True


def checked_filename(raw: bytes | None) -> str:
    """The upload's file name as sent, or "upload"; a 400 for control characters (NUL) or a
    name too long to echo back."""
    if not raw:
        return "upload"
    name = raw.decode("utf-8", "replace")
    if any(ord(character) < 32 or ord(character) == 127 for character in name):
        raise UploadError(400, f"the file name {name!r} holds a control character (NUL, newline, ...)")
    if len(name) > MAX_FILENAME_CHARACTERS:
        raise UploadError(400, f"the file name is {len(name)} characters long, more than {MAX_FILENAME_CHARACTERS}")
    return name


async def read_upload(request, max_file_bytes: int) -> Upload:
    """The one image of a multipart/form-data request, streamed: UploadError 413 as soon as a
    limit is passed (Content-Length before reading), 400 for a malformed or empty form."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or not options.get(b"boundary"):
        shown = request.headers.get("content-type", "none")
        raise UploadError(400, f"no file: send the image as the multipart field 'file' (got Content-Type {shown})")
    limit = max_file_bytes + FORM_OVERHEAD_BYTES
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise UploadError(400, f"Content-Length {declared!r} is not a number of bytes")
        if int(declared) > limit:
            raise UploadError(413, f"the body is {int(declared)} bytes (Content-Length), more than the limit of "
                                   f"{max_file_bytes} bytes for the image plus {FORM_OVERHEAD_BYTES} for the form")
    form = FormReader(max_file_bytes)
    try:
        parser = MultipartParser(options[b"boundary"], form.callbacks())
    except Exception as error:  # noqa: BLE001 - a boundary python-multipart refuses (too long)
        raise UploadError(400, f"malformed multipart body: {error}") from None
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise UploadError(413, f"the body passed {limit} bytes (the limit of {max_file_bytes} bytes for the "
                                   f"image plus {FORM_OVERHEAD_BYTES} for the form); refused while streaming")
        try:
            parser.write(chunk)
        except UploadError:
            raise
        except Exception as error:  # noqa: BLE001 - python-multipart's parse errors
            raise UploadError(400, f"malformed multipart body: {error}") from None
    try:
        parser.finalize()
    except Exception as error:  # noqa: BLE001
        raise UploadError(400, f"malformed multipart body: {error}") from None
    if not form.ended:
        raise UploadError(400, "malformed multipart body: it stops before its closing boundary")
    if form.upload is None:
        raise UploadError(400, "no file: send the image as the multipart field 'file'")
    if not form.upload.content:
        raise UploadError(400, f"{form.upload.filename}: empty upload (send the image as the multipart field 'file')")
    return form.upload


def decode_upload(content: bytes, filename: str, max_pixels: int) -> np.ndarray:
    """RGB uint8 [H, W, 3] of an uploaded file: its header checked first (image_header.py: 413
    above `max_pixels`, 415 for a truncated file or one that is not an image in a format PIL
    reads the header of), then decoded by OpenCV as `detector predict` decodes a file."""
    import cv2

    from detector.data.image_header import read_image_header

    if not content:
        raise UploadError(400, f"{filename}: empty upload (send the image as the multipart field 'file')")
    try:
        read_image_header(content, filename, max_pixels, allow_unchecked_formats=False)
    except ImageTooLargeError as error:
        raise UploadError(413, str(error)) from None
    except ImageFileError as error:
        raise UploadError(415, str(error)) from None
    image = cv2.imdecode(np.frombuffer(content, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise UploadError(415, f"{filename}: not a readable image (its decoder failed)")
    if image.shape[0] * image.shape[1] > max_pixels:  # a second guard; the header already said
        raise UploadError(413, f"{filename}: {image.shape[1]}x{image.shape[0]} pixels, more than the limit of {max_pixels}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
