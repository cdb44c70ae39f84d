"""The one header check (detector/data/image_header.py) that `detector serve`, `read_image`
(predict, training batches) and the readers' `image_size` share: a decompression bomb is
refused from its header, in milliseconds and without memory, and named like any bad file."""
import resource
import struct
import time

import cv2
import numpy as np
import pytest
from data_helpers import bomb_png, write_image
from dataset_writers import write_dataset

from detector.data import read_image, read_records
from detector.data.image_header import HEADER_READ_LIMIT, read_image_header
from detector.data.records import SKIPPED_IMAGE, image_size
from detector.errors import DataError, ImageFileError, ImageTooLargeError

BOMB_MESSAGE = "225,000,000 pixels, more than the limit of 178956970 (a decompression bomb?)"


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    path.write_bytes(bomb_png(15000))  # 225 Mpx, above PIL's own limit: before, OpenCV then decoded 675 MB
    return path


def test_a_bomb_is_refused_by_every_reader_in_milliseconds_without_memory(bomb):
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for read in (read_image, image_size, read_image_header):
        started = time.perf_counter()
        with pytest.raises(ImageTooLargeError) as refused:
            read(bomb)
        assert time.perf_counter() - started < 0.5
        assert str(refused.value) == f"{bomb}: {BOMB_MESSAGE}"
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024 < 100  # MiB


def test_the_limit_is_checked_on_the_declared_size(tmp_path):
    path = write_image(tmp_path / "a.png", 50, 30)
    assert read_image(path, max_pixels=1500).shape == (30, 50, 3)
    with pytest.raises(ImageTooLargeError, match=r"a.png: 50x30 pixels, more than the limit of 1499$"):
        read_image(path, max_pixels=1499)
    header = read_image_header(path.read_bytes(), "upload.png", 1500)
    assert (header.width, header.height, header.format) == (50, 30, "PNG")


def test_a_training_reader_skips_a_bomb_and_names_it(tmp_path, bomb):
    data = write_dataset("coco", tmp_path, {"a.png": (64, 48), "b.png": (64, 48)}, {"a.png": [("cat", 1, 1, 9, 9)]})
    data.image("a.png").write_bytes(bomb.read_bytes())
    records, _, report = read_records(data.config)
    assert [r.path.name for r in records] == ["b.png"]
    (problem,) = [p for p in report.problems if p.kind == SKIPPED_IMAGE]
    assert problem.message == f"{data.image('a.png')}: {BOMB_MESSAGE}"


def test_the_header_read_is_bounded(tmp_path):
    """A JPEG whose markers never reach a frame header: PIL would read on through all of it."""
    segment = b"\xff\xe1" + struct.pack(">H", 65535) + b"\0" * 65533
    path = tmp_path / "endless.jpg"
    path.write_bytes(b"\xff\xd8" + segment * (HEADER_READ_LIMIT // len(segment) + 2))
    with pytest.raises(ImageFileError, match=r"endless.jpg: not an image: no image header within its first "
                                             r"16,777,216 bytes"):
        read_image_header(path)


def test_a_format_only_opencv_reads_is_read_locally_but_refused_as_an_upload(tmp_path):
    path = tmp_path / "radiance.hdr"
    cv2.imwrite(str(path), np.ones((20, 30, 3), np.float32))
    assert read_image(path).shape == (20, 30, 3)  # no header check: OpenCV's own limit applies
    with pytest.raises(ImageFileError, match=r"radiance.hdr: not an image: no image decoder recognizes its content "
                                             r"\(JPEG, PNG, WebP, BMP, TIFF, GIF are read\)"):
        read_image_header(path.read_bytes(), "radiance.hdr", allow_unchecked_formats=False)
    with pytest.raises(DataError, match=r"cannot read the image header"):
        image_size(path)  # the readers need a header they can read, as before
