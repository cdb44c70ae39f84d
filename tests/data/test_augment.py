import cv2
import numpy as np
import pytest
import torch

from detector.config import AugmentConfig
from detector.data import DetectionDataset, ImageRecord
from detector.data.augment import Augmentation, build_augmentation
from detector.data.records import CategoryMap
from detector.errors import ConfigError

OFF = dict(hflip=0.0)


def white_box_image(width=100, height=80, box=(10, 20, 30, 60)):
    image = np.zeros((height, width, 3), np.uint8)
    x1, y1, x2, y2 = box
    image[y1:y2, x1:x2] = 255
    return image


def extent(image):
    ys, xs = np.nonzero(image[..., 0] > 127)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def test_flip_moves_the_box_to_its_mirror_place():
    augment = Augmentation(AugmentConfig(hflip=1.0), seed=0)
    image = white_box_image()
    out, boxes, labels = augment(image, np.array([[10, 20, 30, 60]]), np.array([3]))
    np.testing.assert_array_equal(boxes, [[70, 20, 90, 60]])  # x1' = W - x2 = 100 - 30, x2' = 100 - 10
    np.testing.assert_array_equal(out, image[:, ::-1])
    assert labels.tolist() == [3] and boxes.dtype == np.float32


@pytest.mark.parametrize("seed", range(5))
def test_random_flip_keeps_boxes_on_the_pixels(seed):
    augment = Augmentation(AugmentConfig(hflip=0.5), seed=seed)
    box = (13, 21, 47, 66)
    out, boxes, _ = augment(white_box_image(box=box), np.array([box]), np.array([1]))
    assert out.shape[:2] == (80, 100)  # no rescale: the model resizes (model.transform.train_min_sizes)
    np.testing.assert_allclose(boxes[0], extent(out), atol=0)


def test_photometric_jitter_changes_pixels_not_boxes():
    augment = Augmentation(AugmentConfig(**OFF, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1), seed=1)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (50, 60, 3), dtype=np.uint8)
    out, boxes, _ = augment(image, np.array([[1, 2, 30, 40]]), np.array([1]))
    assert out.shape == image.shape and not np.array_equal(out, image)
    np.testing.assert_array_equal(boxes, [[1, 2, 30, 40]])


def test_tiny_boxes_dropped_with_their_labels_and_empty_targets_pass():
    augment = Augmentation(AugmentConfig(hflip=1.0), seed=0)
    # a 0.5 x 0.5 box = 0.25 px^2: below the 1 px^2 minimum, dropped with its label
    _, boxes, labels = augment(white_box_image(), np.array([[10, 20, 30, 60], [50, 50, 50.5, 50.5]]), np.array([1, 2]))
    np.testing.assert_allclose(boxes, [[70, 20, 90, 60]])
    assert labels.tolist() == [1]
    _, boxes, labels = augment(white_box_image(), np.zeros((0, 4)), np.zeros(0))
    assert boxes.shape == (0, 4) and labels.shape == (0,)


def test_same_seed_same_draws_and_reseed_restarts_them():
    config = AugmentConfig(hflip=0.5, brightness=0.3)
    image, box = white_box_image(), np.array([[10, 20, 30, 60]])
    a, b = Augmentation(config, seed=3), Augmentation(config, seed=3)
    first = [a(image, box, np.array([1]))[1] for _ in range(4)]
    assert all(np.array_equal(x, b(image, box, np.array([1]))[1]) for x in first)
    assert len({tuple(x[0]) for x in first}) > 1  # the draws vary from call to call
    a.reseed(3)
    assert np.array_equal(a(image, box, np.array([1]))[1], first[0])


def test_validation_and_all_off_build_no_augmentation():
    assert build_augmentation(AugmentConfig(hflip=1.0), train=False) is None
    assert build_augmentation(None, train=True) is None
    assert build_augmentation(AugmentConfig(**OFF), train=True) is None
    assert isinstance(build_augmentation(AugmentConfig(), train=True), Augmentation)  # default: hflip 0.5


@pytest.mark.parametrize("bad, key", [(dict(hflip=1.5), "hflip"), (dict(brightness=-0.1), "brightness"),
                                      (dict(hue=0.7), "hue")])
def test_bad_augment_config_names_the_key(bad, key):
    with pytest.raises(ConfigError, match=f"data.augment.{key}"):
        build_augmentation(AugmentConfig(**bad), train=True)


def test_dataset_applies_the_flip_to_image_and_target_together(tmp_path):
    path = tmp_path / "a.png"
    cv2.imwrite(str(path), white_box_image())
    record = ImageRecord(1, path, 100, 80, [[10, 20, 30, 60]], [1], [False])
    dataset = DetectionDataset([record], CategoryMap((1,), ("box",)), transform=Augmentation(AugmentConfig(hflip=1.0)))
    tensor, target = dataset[0]
    torch.testing.assert_close(target["boxes"], torch.tensor([[70.0, 20, 90, 60]]))
    assert extent(tensor.permute(1, 2, 0).numpy() * 255).tolist() == [70, 20, 90, 60]
