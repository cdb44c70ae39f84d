import re

import cv2
import numpy as np
import pytest
import torch
from data_helpers import real_json, write_coco, write_image

from detector.config import DatasetConfig
from detector.data import DetectionDataset, ImageRecord, load_dataset, read_image
from detector.data.records import CategoryMap, image_size
from detector.errors import DataError

CMAP = CategoryMap((1, 2), ("a", "b"))


def test_item_is_rgb_0_to_1_with_crowd_left_out(tmp_path):
    path = tmp_path / "red.png"
    image = np.zeros((40, 60, 3), np.uint8)
    image[:, :, 2] = 255  # red in OpenCV's BGR
    cv2.imwrite(str(path), image)
    record = ImageRecord(7, path, 60, 40, [[1, 2, 10, 20], [5, 5, 30, 30], [0, 0, 60, 40]], [2, 1, 1],
                         [False, True, False])
    dataset = DetectionDataset([record], CMAP)
    tensor, target = dataset[0]
    assert tensor.shape == (3, 40, 60) and tensor.dtype == torch.float32
    assert tensor[0].min() == 1.0 and tensor[1:].max() == 0.0  # RGB: red is channel 0
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    torch.testing.assert_close(target["boxes"], torch.tensor([[1.0, 2, 10, 20], [0, 0, 60, 40]]))
    assert target["labels"].tolist() == [2, 1] and target["image_id"] == 0  # the record index


def test_negative_image_gives_empty_target(tmp_path):
    write_image(tmp_path / "n.png", 30, 20)
    _, target = DetectionDataset([ImageRecord("n", tmp_path / "n.png", 30, 20)], CMAP)[0]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)


def test_aspect_ratios_come_from_the_records_without_reading_files(tmp_path):
    records = [ImageRecord(i, tmp_path / "does-not-exist.jpg", w, h) for i, (w, h) in enumerate([(640, 480), (300, 600)])]
    assert DetectionDataset(records, CMAP).aspect_ratios() == [640 / 480, 0.5]


def test_unreadable_or_mis_sized_image_raises_naming_the_file(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(DataError, match=re.escape(f"{bad}: cannot read the image (not an image: no image decoder recognizes its content)")):
        DetectionDataset([ImageRecord(1, bad, 10, 10)], CMAP)[0]
    with pytest.raises(DataError, match="file not found"):
        read_image(tmp_path / "gone.jpg")
    write_image(tmp_path / "a.png", 30, 20)
    with pytest.raises(DataError, match="a.png: image is 30x20 but its record \\(image id 1\\) says 20x30"):
        DetectionDataset([ImageRecord(1, tmp_path / "a.png", 20, 30)], CMAP)[0]


def test_grayscale_rgba_palette_and_16_bit_become_rgb_uint8(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((4, 5), 100, np.uint8)).save(tmp_path / "gray.png")
    Image.fromarray(np.full((4, 5, 4), [10, 20, 30, 0], np.uint8), "RGBA").save(tmp_path / "rgba.png")
    palette = Image.new("P", (5, 4), 0)
    palette.putpalette([200, 40, 10] + [0] * 765)
    palette.save(tmp_path / "palette.png")
    cv2.imwrite(str(tmp_path / "deep.png"), np.array([[0, 32768, 65535]] * 2, np.uint16))
    expected = {"gray.png": [100, 100, 100], "rgba.png": [10, 20, 30], "palette.png": [200, 40, 10]}
    for name, rgb in expected.items():
        image = read_image(tmp_path / name)
        assert image.shape == (4, 5, 3) and image.dtype == np.uint8, name
        assert image[0, 0].tolist() == rgb, name
    deep = read_image(tmp_path / "deep.png")
    assert deep.dtype == np.uint8 and deep[0, :, 0].tolist() == [0, 128, 255]


# Stored pixels -> displayed pixels for an EXIF orientation; we store the inverse of the display.
STORE_FOR_DISPLAY = {
    2: lambda a: a[:, ::-1],  # mirrored horizontally
    3: lambda a: cv2.rotate(a, cv2.ROTATE_180),
    6: lambda a: cv2.rotate(a, cv2.ROTATE_90_COUNTERCLOCKWISE),  # displayed rotated 90 clockwise
    8: lambda a: cv2.rotate(a, cv2.ROTATE_90_CLOCKWISE),
}


@pytest.mark.parametrize("orientation", sorted(STORE_FOR_DISPLAY))
def test_exif_orientation_is_applied_so_boxes_stay_on_the_object(tmp_path, orientation):
    """A photo annotated as displayed (120x60, red block at [10, 5, 40, 25]) but stored rotated
    with an EXIF orientation tag: the size check and the decoded pixels both follow the EXIF."""
    from PIL import Image

    shown = np.full((60, 120, 3), 40, np.uint8)
    shown[5:25, 10:40] = (220, 30, 30)  # RGB red
    stored = np.ascontiguousarray(STORE_FOR_DISPLAY[orientation](shown))
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(tmp_path / "photo.jpg", exif=exif.tobytes(), quality=95)
    assert image_size(tmp_path / "photo.jpg") == (120, 60)

    annotations = write_coco(tmp_path / "ann.json", [{"id": 1, "file_name": "photo.jpg", "width": 120, "height": 60}],
                             [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 5, 30, 20]}],
                             [{"id": 1, "name": "block"}])
    dataset = load_dataset(DatasetConfig(format="coco", annotations=str(annotations)))
    assert dataset.report.problems == []
    tensor, target = dataset[0]
    assert tensor.shape == (3, 60, 120)
    red = (tensor[0] > 0.6) & (tensor[1] < 0.4)
    ys, xs = torch.nonzero(red, as_tuple=True)
    found = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
    torch.testing.assert_close(found, target["boxes"][0], atol=1.0, rtol=0)
    torch.testing.assert_close(target["boxes"][0], torch.tensor([10.0, 5, 40, 25]))


def test_real_photos_decode_at_the_annotated_sizes():
    """Real raccoon photos (one of them grayscale) decode to 3 channels at their record's size."""
    dataset = load_dataset(DatasetConfig(format="coco", annotations=str(real_json("raccoon/coco_sample.json"))))
    assert len(dataset) == 5 and dataset.report.problems == []
    for index in range(len(dataset)):
        tensor, target = dataset[index]
        record = dataset.records[index]
        assert tensor.shape == (3, record.height, record.width)
        assert (target["boxes"][:, 2] <= record.width).all() and (target["boxes"][:, 3] <= record.height).all()
