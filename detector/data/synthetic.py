"""The embedded demo set: shapes drawn with OpenCV on textured backgrounds, as COCO JSON + JPEGs.

Four classes, distinct in shape and in hue band: circle (reds/oranges), square (blues),
triangle (greens), cross (purples/magentas), 20 to 180 px, plain, striped or noisy, on
320-480 px images with muted backgrounds (gradients, noise, blobs, thin lines). Objects may
overlap a little (IoU <= 0.3, at most 40% of a box hidden) and every box is the exact extent of its shape's pixels.
Images hold 1 to 6 objects, and about 1 in 20 has none (a negative).

Scene "large" (small objects on big images, for data.tiles and sliced prediction): 2000 x 1500 px
images, 20 to 40 objects of 10 to 40 px each, the same classes, colours and backgrounds; about a
third of them are centred on a likely tile seam (a multiple of 400 or of 512 px, in x or y), so
that tiles cut them. It is drawn into `root/large-<split>/`, beside the demo's own folders.

`class_weights` (four relative frequencies, circle..cross) makes a class-imbalanced variant, e.g.
[1, 1, 1, 0.05] for crosses 20x rarer than each other class (configs/shapes_imbalanced.yaml, for
repeat-factor sampling); it is drawn into `root/<split>-w<weights>/`, and without it the draws
are exactly the balanced set's.

Everything follows from (seed, split, image index): the same call draws the same pixels, and
train and val (different splits) never share an image. `root/<split>/manifest.json` records
the parameters, and a second call with the same ones reuses the files. The default scene's
files and manifest are those of GENERATOR_VERSION 1, unchanged by the large scene.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import uuid
import zlib
from pathlib import Path

import cv2
import numpy as np

from detector.errors import ConfigError

CLASSES = ("circle", "square", "triangle", "cross")
HUE_BANDS = {"circle": (0, 14), "square": (100, 124), "triangle": (45, 75), "cross": (135, 160)}  # OpenCV hue 0..180
GENERATOR_VERSION = 1
MIN_SIZE, MAX_SIZE = 20, 180
MAX_IOU = 0.3
MAX_COVERED = 0.4  # a new (upper) object hides at most this fraction of an earlier one's box
ANNOTATIONS = "instances.json"
SCENES = ("shapes", "large")  # choices.SYNTHETIC_SCENES
LARGE_WIDTH, LARGE_HEIGHT = 2000, 1500
LARGE_MIN_SIZE, LARGE_MAX_SIZE = 10, 40
LARGE_OBJECTS = (20, 40)  # objects per large image, both included
SEAM_SHARE = 0.33  # of the large scene's objects centred on a seam line
SEAM_STEPS = (400, 512)  # seams of likely tile sizes: every multiple of these, in x and in y


def make_synthetic_dataset(root: str | Path, split: str = "train", num_images: int = 200, seed: int = 0,
                           scene: str = "shapes", class_weights: list[float] | None = None) -> Path:
    """Draw (or reuse) `root/<split>/` (scene "large": `root/large-<split>/`): `images/*.jpg`
    and `instances.json` (COCO, categories 1..4 = circle, square, triangle, cross). Returns the
    JSON's path."""
    if not split or "/" in split or split.startswith("."):
        raise ConfigError(f"synthetic split must be a plain name such as 'train' or 'val', got {split!r}")
    if num_images < 1:
        raise ConfigError(f"synthetic num_images must be >= 1, got {num_images}")
    if scene not in SCENES:
        raise ConfigError(f"synthetic scene must be one of {', '.join(SCENES)}, got {scene!r}")
    weights = _class_probabilities(class_weights)
    folder = split if scene == "shapes" else f"{scene}-{split}"
    if weights is not None:  # its own folder: the balanced set's files stay valid beside it
        folder += "-w" + "_".join(f"{w:g}" for w in class_weights)
    target = Path(root).expanduser() / folder
    manifest = {"generator_version": GENERATOR_VERSION, "split": split, "num_images": int(num_images),
                "seed": int(seed), "classes": list(CLASSES)}
    if scene != "shapes":  # the demo's manifest stays as it was, so its drawn files are reused
        manifest["scene"] = scene
    if weights is not None:
        manifest["class_weights"] = [float(w) for w in class_weights]
    if _is_complete(target, manifest):
        return target / ANNOTATIONS

    # Draw into a private folder, then move it into place: readers never see half a dataset,
    # and two processes drawing at once (DDP ranks, parallel tests) do not mix their files.
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = target.parent / f".{split}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    try:
        draw = functools.partial(draw_large_image if scene == "large" else draw_image, class_probabilities=weights)
        _draw_dataset(scratch, split, num_images, seed, draw)
        (scratch / "manifest.json").write_text(json.dumps(manifest, indent=1))
        if _is_complete(target, manifest):  # another process finished first
            return target / ANNOTATIONS
        if target.exists():
            shutil.rmtree(target)
        try:
            scratch.rename(target)
        except OSError:
            if not _is_complete(target, manifest):
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target / ANNOTATIONS


def _is_complete(folder: Path, manifest: dict) -> bool:
    try:
        if json.loads((folder / "manifest.json").read_text()) != manifest:
            return False
        data = json.loads((folder / ANNOTATIONS).read_text())
    except (OSError, ValueError):
        return False
    return len(data["images"]) == manifest["num_images"] and all(
        (folder / image["file_name"]).is_file() for image in data["images"])


def _draw_dataset(folder: Path, split: str, num_images: int, seed: int, draw=None) -> None:
    draw = draw or draw_image
    (folder / "images").mkdir(parents=True)
    split_code = zlib.crc32(split.encode())
    images, annotations = [], []
    for index in range(num_images):
        rng = np.random.default_rng([seed, split_code, index])
        image, objects = draw(rng)
        file_name = f"images/{index:06d}.jpg"
        ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 92])
        assert ok
        (folder / file_name).write_bytes(encoded.tobytes())
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "width": image.shape[1], "height": image.shape[0]})
        for category_id, (x1, y1, x2, y2), area in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category_id,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": area, "iscrowd": 0})
    data = {
        "info": {"description": f"detector synthetic shapes, split {split}, seed {seed}",
                 "generator_version": GENERATOR_VERSION},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASSES, 1)],
    }
    (folder / ANNOTATIONS).write_text(json.dumps(data))


def _class_probabilities(class_weights: list[float] | None) -> np.ndarray | None:
    if class_weights is None:
        return None
    weights = np.asarray(class_weights, np.float64)
    if weights.shape != (len(CLASSES),) or (weights < 0).any() or weights.sum() <= 0:
        raise ConfigError(f"synthetic class_weights must be {len(CLASSES)} weights >= 0 ({', '.join(CLASSES)}), "
                          f"not all 0, got {class_weights!r}")
    return weights / weights.sum()


def _pick_class(rng: np.random.Generator, probabilities: np.ndarray | None) -> str:
    """A class name: uniform (the balanced set's draw, unchanged) or by `probabilities`."""
    if probabilities is None:
        return CLASSES[int(rng.integers(len(CLASSES)))]
    return CLASSES[int(rng.choice(len(CLASSES), p=probabilities))]


def draw_image(rng: np.random.Generator, objects: bool = True,
               class_probabilities: np.ndarray | None = None) -> tuple[np.ndarray, list[tuple[int, list[int], int]]]:
    """One BGR image and its objects [(category id, [x1, y1, x2, y2] ints, pixel area)].
    `objects=False` gives the same image's bare background (the tests compare the two)."""
    width, height = int(rng.integers(320, 481)), int(rng.integers(320, 481))
    background_rng, rng = rng.spawn(2)
    image = _background(background_rng, width, height)
    if not objects:
        return image, []
    count = 0 if rng.random() < 0.05 else int(rng.integers(1, 7))
    placed: list[list[int]] = []
    drawn = []
    for _ in range(count):
        for _attempt in range(30):
            name = _pick_class(rng, class_probabilities)
            limit = min(MAX_SIZE, int(0.6 * min(width, height)))
            size = int(round(np.exp(rng.uniform(np.log(MIN_SIZE), np.log(limit)))))
            mask = _shape_mask(rng, name, size, width, height)
            ys, xs = np.nonzero(mask)
            box = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
            if all(_iou(box, other) <= MAX_IOU and _covered(other, box) <= MAX_COVERED for other in placed):
                break
        else:
            continue  # no room left for another object
        _paint(rng, image, mask, name)
        placed.append(box)
        drawn.append((CLASSES.index(name) + 1, box, int(len(xs))))
    return image, drawn


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Muted (low saturation) gradient + smooth blobs + noise + thin lines: texture, not objects."""
    low, high = (rng.uniform(40, 210, 3) for _ in range(2))
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    t = (xx * np.cos(angle) + yy * np.sin(angle)) / (width + height) + 0.5
    image = low + (high - low) * t[..., None]
    gray = image.mean(axis=2, keepdims=True)
    image = gray + 0.35 * (image - gray)  # desaturate: objects stay the colourful things
    blobs = cv2.resize(rng.normal(0, 25, (height // 32 + 2, width // 32 + 2)).astype(np.float32), (width, height),
                       interpolation=cv2.INTER_CUBIC)
    image += blobs[..., None] + rng.normal(0, rng.uniform(3, 14), (height, width, 1))
    image = np.clip(image, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(0, 12))):
        shade = float(rng.uniform(30, 220))
        p1 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        p2 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        cv2.line(image, p1, p2, (shade, shade, shade), int(rng.integers(1, 3)), cv2.LINE_AA)
    return image


def draw_large_image(rng: np.random.Generator, objects: bool = True, class_probabilities: np.ndarray | None = None
                     ) -> tuple[np.ndarray, list[tuple[int, list[int], int]]]:
    """One BGR large-scene image (2000 x 1500) and its objects, as `draw_image`: 10-40 px shapes,
    about a third of them centred on a seam line (a multiple of 400 or 512 px)."""
    width, height = LARGE_WIDTH, LARGE_HEIGHT
    background_rng, rng = rng.spawn(2)
    image = _background(background_rng, width, height)
    if not objects:
        return image, []
    placed: list[list[int]] = []
    drawn = []
    for _ in range(int(rng.integers(LARGE_OBJECTS[0], LARGE_OBJECTS[1] + 1))):
        for _attempt in range(30):
            name = _pick_class(rng, class_probabilities)
            size = int(round(np.exp(rng.uniform(np.log(LARGE_MIN_SIZE), np.log(LARGE_MAX_SIZE)))))
            w, h = _shape_extent(rng, name, size, width, height, LARGE_MIN_SIZE)
            x, y = _large_position(rng, w, h, width, height)
            patch = np.zeros((h, w), np.uint8)
            _draw_shape(rng, patch, name, 0, 0, w, h)
            ys, xs = np.nonzero(patch)
            box = [x + int(xs.min()), y + int(ys.min()), x + int(xs.max()) + 1, y + int(ys.max()) + 1]
            if all(_iou(box, other) <= MAX_IOU and _covered(other, box) <= MAX_COVERED for other in placed):
                break
        else:
            continue  # no room left for another object
        _paint(rng, image[y:y + h, x:x + w], patch, name)
        placed.append(box)
        drawn.append((CLASSES.index(name) + 1, box, int(len(xs))))
    return image, drawn


def _large_position(rng: np.random.Generator, w: int, h: int, width: int, height: int) -> tuple[int, int]:
    """Top-left corner of a w x h shape: anywhere, or (SEAM_SHARE) centred on a seam line."""
    x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
    if rng.random() < SEAM_SHARE:
        step = SEAM_STEPS[int(rng.integers(len(SEAM_STEPS)))]
        if rng.random() < 0.5:
            x = int(step * rng.integers(1, (width - w) // step + 1)) - w // 2
        else:
            y = int(step * rng.integers(1, (height - h) // step + 1)) - h // 2
    return min(max(x, 0), width - w), min(max(y, 0), height - h)


def _shape_extent(rng: np.random.Generator, name: str, size: int, width: int, height: int,
                  min_size: int = MIN_SIZE) -> tuple[int, int]:
    """(w, h) of a shape about `size` px across: circles and squares square, the others stretched."""
    w = h = size
    if name in ("triangle", "cross"):
        w, h = (max(min_size, int(size * f)) for f in rng.uniform(0.8, 1.2, 2))
    return min(w, width - 2), min(h, height - 2)


def _shape_mask(rng: np.random.Generator, name: str, size: int, width: int, height: int) -> np.ndarray:
    """A 0/255 mask of one shape about `size` px across, fully inside the image."""
    w, h = _shape_extent(rng, name, size, width, height)
    x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
    mask = np.zeros((height, width), np.uint8)
    _draw_shape(rng, mask, name, x, y, w, h)
    return mask


def _draw_shape(rng: np.random.Generator, mask: np.ndarray, name: str, x: int, y: int, w: int, h: int) -> None:
    """Fill one shape into `mask` (0/255) inside the w x h box at (x, y)."""
    if name == "circle":
        r = (w - 1) // 2
        cv2.circle(mask, (x + r, y + r), r, 255, -1, cv2.LINE_8)
    elif name == "square":
        cv2.rectangle(mask, (x, y), (x + w - 1, y + h - 1), 255, -1)
    elif name == "triangle":
        apex = x + int(rng.uniform(0.25, 0.75) * (w - 1))
        points = np.array([[x, y + h - 1], [x + w - 1, y + h - 1], [apex, y]], np.int32)
        cv2.fillPoly(mask, [points], 255, cv2.LINE_8)
    else:  # cross: a plus sign
        tw, th = max(4, int(w * rng.uniform(0.25, 0.4))), max(4, int(h * rng.uniform(0.25, 0.4)))
        cx, cy = x + (w - tw) // 2, y + (h - th) // 2
        cv2.rectangle(mask, (cx, y), (cx + tw - 1, y + h - 1), 255, -1)
        cv2.rectangle(mask, (x, cy), (x + w - 1, cy + th - 1), 255, -1)


def _paint(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray, name: str) -> None:
    """Fill the shape with a saturated colour of its class's hue band: plain, striped or noisy."""
    hue = rng.uniform(*HUE_BANDS[name])
    colour = _bgr(hue, rng.uniform(160, 255), rng.uniform(170, 255))
    ys, xs = np.nonzero(mask)
    pixels = np.broadcast_to(colour, (len(xs), 3)).astype(np.float32)
    texture = rng.integers(3)
    if texture == 1:  # stripes of a darker shade
        angle, period = rng.uniform(0, np.pi), rng.uniform(6, 16)
        phase = ((xs * np.cos(angle) + ys * np.sin(angle)) / period) % 1.0 < 0.5
        pixels = np.where(phase[:, None], pixels, pixels * rng.uniform(0.45, 0.7))
    elif texture == 2:
        pixels = pixels + rng.normal(0, 22, (len(xs), 1))
    image[ys, xs] = np.clip(pixels + rng.normal(0, 4, pixels.shape), 0, 255).astype(np.uint8)


def _bgr(hue: float, saturation: float, value: float) -> np.ndarray:
    hsv = np.array([[[hue % 180, saturation, value]]], np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


def _iou(a: list[int], b: list[int]) -> float:
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _covered(below: list[int], above: list[int]) -> float:
    """Fraction of box `below` that box `above` covers."""
    iw = max(0, min(below[2], above[2]) - max(below[0], above[0]))
    ih = max(0, min(below[3], above[3]) - max(below[1], above[1]))
    return iw * ih / ((below[2] - below[0]) * (below[3] - below[1]))
