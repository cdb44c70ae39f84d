"""How well the RPN's anchors fit the boxes of a data set, and anchors that would fit better.

For every (non-crowd) ground-truth box: its best IoU with the anchors the RPN really uses for
that image, i.e. the config's resize, the padding to `size_divisible`, the backbone's feature
map sizes (found by running the backbone on the meta device: shapes only, no weights, no
arithmetic) and our AnchorGenerator. Boxes then fall in three bins by the RPN's thresholds:
IoU >= fg (0.7: matched as objects by the threshold rule), bg <= IoU < fg (only the "best anchor
of each box" rule makes one of its anchors an object) and IoU < bg (0.3: even its best anchor is
a poor start for the regression).

Suggested anchors keep the config's structure: the same number of sizes per feature map and
one shared set of ratios (height / width) per map. First k-means on the box shapes (width,
height, centred) with 1 - IoU as the distance, with the centres constrained to a sizes x ratios
grid: each box goes to the grid shape of highest IoU, each size becomes the median sqrt(area)
of its boxes and each ratio their median h / w, until nothing moves; sizes go to the maps in
increasing order (small anchors on the fine maps). Shapes alone ignore the stride (a small
anchor rarely sits on a small box's centre), so the result is then refined on the real grid:
one size or ratio at a time is scaled by 0.8 .. 1.25 and kept when the share of boxes at IoU
>= fg minus the share below bg rises, until no step helps. The same search also starts from
the config's anchors, and the better of the two results is suggested.
Their fit is measured exactly like the config's, after rounding (sizes to whole pixels, ratios
to 2 decimals), so the printed fit is what the printed override gives.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field

import numpy as np
import torch

from detector.config import AnchorConfig, Config
from detector.errors import ConfigError
from detector.modeling.anchors import AnchorGenerator
from detector.modeling import geometry
from detector.modeling.faster_rcnn import build_model

SEARCH_BOXES = 3000  # boxes (whole images) the suggestion's search scores each trial on
SEARCH_STEPS = (0.8, 0.9, 1.1, 1.25)  # factors a size or ratio is tried with
SMALL_AREA, MEDIUM_AREA = 32**2, 96**2  # COCO's size classes (here in the model's pixels)


def size_class(area: np.ndarray) -> np.ndarray:
    """COCO's size names of box areas: small < 32^2 <= medium < 96^2 <= large."""
    return np.where(area < SMALL_AREA, "small", np.where(area < MEDIUM_AREA, "medium", "large"))


@dataclass
class ModelGeometry:
    """The resize, padding and feature-map sizes of a config's model, found without weights."""

    config: Config
    _model: torch.nn.Module = field(init=False, repr=False)
    _feature_shapes: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        config = copy.deepcopy(self.config)
        config.model.backbone.pretrained = False  # shapes only: no weights needed
        with torch.random.fork_rng(devices=[]):  # its random init must not move a training run's random stream
            self._model = build_model(config)
        self._model.backbone.to("meta")

    @property
    def fg_iou(self) -> float:
        return self.config.model.rpn.fg_iou_thresh

    @property
    def bg_iou(self) -> float:
        return self.config.model.rpn.bg_iou_thresh

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """The image size the model works on (geometry.resized_size, as the transform)."""
        transform = self._model.transform
        return geometry.resized_size(height, width, transform.min_size, transform.max_size)

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        return geometry.padded_size(height, width, self._model.transform.size_divisible)

    def feature_shapes(self, padded: tuple[int, int]) -> list[tuple[int, int]]:
        """(H, W) of every feature map for one padded batch of this size."""
        if padded not in self._feature_shapes:
            with single_thread():
                features = self._model.backbone(torch.empty(1, 3, *padded, device="meta"))
            maps = features.values() if isinstance(features, dict) else features
            self._feature_shapes[padded] = [tuple(m.shape[-2:]) for m in maps]
        return self._feature_shapes[padded]

    def anchors(self, generator: AnchorGenerator, padded: tuple[int, int]) -> np.ndarray:
        """Every anchor [A, 4] the RPN uses for a padded batch of this size."""
        with single_thread():
            maps = [torch.empty(1, 1, h, w) for h, w in self.feature_shapes(padded)]
            return generator(padded, maps).numpy().astype(np.float64)


@contextlib.contextmanager
def single_thread():
    """torch on one thread for a while: many small tensor ops run far faster without the
    thread pool's hand-offs (and leave the other cores to a training that may be running)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass
class ModelBoxes:
    """Every training box in the model's pixels, grouped by image (padded size, box rows)."""

    boxes: np.ndarray  # [N, 4] xyxy after the resize
    labels: np.ndarray  # [N] in 1..K
    padded_sizes: list[tuple[int, int]]  # padded (H, W) per image: its anchor grid
    image_slices: list[slice]  # rows of each image

    @property
    def widths_heights(self) -> np.ndarray:
        return np.stack([self.boxes[:, 2] - self.boxes[:, 0], self.boxes[:, 3] - self.boxes[:, 1]], 1)


def boxes_in_model_pixels(records, geometry: ModelGeometry) -> ModelBoxes:
    """The non-crowd boxes of `records` (ImageRecords) after the config's resize."""
    boxes, labels, sizes, slices, start = [], [], [], [], 0
    for record in records:
        keep = ~record.iscrowd
        resized = geometry.resized_size(record.height, record.width)
        scale = np.array([resized[1] / record.width, resized[0] / record.height] * 2)  # as transform.resize_boxes
        boxes.append(record.boxes[keep].astype(np.float64).reshape(-1, 4) * scale)
        labels.append(record.labels[keep])
        sizes.append(geometry.padded_size(*resized))
        slices.append(slice(start, start + int(keep.sum())))
        start += int(keep.sum())
    return ModelBoxes(np.concatenate(boxes or [np.zeros((0, 4))]),
                      np.concatenate(labels or [np.zeros(0, np.int64)]), sizes, slices)


def best_anchor_ious(geometry: ModelGeometry, anchors: AnchorConfig, boxes: ModelBoxes) -> np.ndarray:
    """[N] the best IoU of every box with the anchors of its image (same order as boxes.boxes).

    The anchors are our AnchorGenerator's, for the image's padded size. Not every anchor needs
    scoring: for one anchor shape, the overlap along x (and y) only falls as its centre moves
    away from the box's, so its best location is one of the two grid columns (rows) beside the
    box centre. A test checks this against the IoU with every anchor."""
    generator = AnchorGenerator(anchors.sizes, anchors.aspect_ratios)
    rows_by_size: dict[tuple[int, int], list[np.ndarray]] = {}
    for size, rows in zip(boxes.padded_sizes, boxes.image_slices):
        rows_by_size.setdefault(size, []).append(np.arange(rows.start, rows.stop))
    best = np.zeros(len(boxes.boxes))
    for padded, row_lists in rows_by_size.items():
        rows = np.concatenate(row_lists)
        if len(rows):
            best[rows] = _best_iou_on_grid(boxes.boxes[rows], geometry.anchors(generator, padded),
                                           padded, geometry.feature_shapes(padded), generator.num_anchors_per_location())
    return best


def _best_iou_on_grid(boxes: np.ndarray, grid: np.ndarray, padded: tuple[int, int],
                      shapes: list[tuple[int, int]], per_location: list[int]) -> np.ndarray:
    """[N] best IoU of `boxes` with the anchors `grid` (AnchorGenerator order: per map,
    location-major, rows then columns, then the A anchors of a location)."""
    best = np.zeros(len(boxes))
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2  # [N, 2] x, y
    start = 0
    for (grid_h, grid_w), count in zip(shapes, per_location):
        level = grid[start:start + grid_h * grid_w * count].reshape(grid_h, grid_w, count, 4)
        start += grid_h * grid_w * count
        stride = np.array([padded[1] // grid_w, padded[0] // grid_h])  # x, y: as AnchorGenerator
        base_centre = (level[0, 0, :, :2] + level[0, 0, :, 2:]) / 2  # [A, 2] at location (0, 0)
        position = (centre[:, None, :] - base_centre[None]) / stride  # [N, A, 2] in grid cells
        low = np.floor(position).astype(np.int64)
        for dx in (0, 1):
            for dy in (0, 1):
                column = np.clip(low[..., 0] + dx, 0, grid_w - 1)
                row = np.clip(low[..., 1] + dy, 0, grid_h - 1)
                candidates = level[row, column, np.arange(count)[None, :]]  # [N, A, 4]
                best = np.maximum(best, _paired_iou(boxes[:, None, :], candidates).max(axis=1))
    return best


def _paired_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise IoU of broadcast xyxy boxes [..., 4]."""
    inter = (np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
             * np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None))
    union = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1]) + (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]) - inter
    return inter / np.maximum(union, 1e-12)


def fit_shares(best_iou: np.ndarray, fg: float, bg: float) -> dict:
    """The share of boxes in each IoU bin (0 .. 1), their count and the mean best IoU."""
    n = len(best_iou)
    share = (lambda mask: float(mask.sum()) / n) if n else (lambda mask: None)
    return {f"iou>={fg:g}": share(best_iou >= fg), f"{bg:g}<=iou<{fg:g}": share((best_iou >= bg) & (best_iou < fg)),
            f"iou<{bg:g}": share(best_iou < bg), "boxes": n, "mean_best_iou": float(best_iou.mean()) if n else None}


def fit_report(best_iou: np.ndarray, boxes: ModelBoxes, class_names, fg: float, bg: float) -> dict:
    """fit_shares overall, per class and per (model-pixel) COCO size."""
    areas = boxes.widths_heights.prod(axis=1)
    sizes = size_class(areas)
    return {
        "overall": fit_shares(best_iou, fg, bg),
        "per_class": {name: fit_shares(best_iou[boxes.labels == label], fg, bg)
                      for label, name in enumerate(class_names, start=1)},
        "per_size": {name: fit_shares(best_iou[sizes == name], fg, bg) for name in ("small", "medium", "large")},
    }


def shape_iou(widths_heights: np.ndarray, shapes: np.ndarray) -> np.ndarray:
    """[N, M] IoU of boxes and anchor shapes, both (w, h), sharing one centre."""
    inter = np.minimum(widths_heights[:, None, 0], shapes[None, :, 0]) * np.minimum(widths_heights[:, None, 1], shapes[None, :, 1])
    union = widths_heights.prod(1)[:, None] + shapes.prod(1)[None, :] - inter
    return inter / np.maximum(union, 1e-12)


def grid_shapes(sizes: np.ndarray, ratios: np.ndarray) -> np.ndarray:
    """[S * R, 2] anchor (w, h), size-major: w = size / sqrt(ratio), h = size * sqrt(ratio)."""
    root = np.sqrt(ratios)
    return np.stack([(sizes[:, None] / root[None, :]).ravel(), (sizes[:, None] * root[None, :]).ravel()], 1)


def kmeans_grid(widths_heights: np.ndarray, num_sizes: int, num_ratios: int, iterations: int = 100
                ) -> tuple[np.ndarray, np.ndarray]:
    """(sizes ascending, ratios ascending) of the size x ratio grid fitted by k-means with the
    1 - IoU distance (see the module docstring)."""
    scale = np.sqrt(widths_heights.prod(1))
    ratio = widths_heights[:, 1] / widths_heights[:, 0]
    quantiles = lambda values, k: np.quantile(values, (np.arange(k) + 0.5) / k)  # noqa: E731
    sizes, ratios = quantiles(scale, num_sizes), quantiles(ratio, num_ratios)
    assignment = None
    for _ in range(iterations):
        best = shape_iou(widths_heights, grid_shapes(sizes, ratios)).argmax(1)
        if assignment is not None and np.array_equal(best, assignment):
            break
        assignment = best
        size_of, ratio_of = best // num_ratios, best % num_ratios
        sizes = np.array([np.median(scale[size_of == i]) if (size_of == i).any() else sizes[i] for i in range(num_sizes)])
        ratios = np.array([np.median(ratio[ratio_of == j]) if (ratio_of == j).any() else ratios[j]
                           for j in range(num_ratios)])
    return np.sort(sizes), np.sort(ratios)


def suggest_anchors(geometry: ModelGeometry, boxes: ModelBoxes, current: AnchorConfig) -> AnchorConfig:
    """Anchors of the same structure as `current`, fitted to the boxes (see the module docstring)."""
    ratio_counts = {len(r) for r in current.aspect_ratios}
    if len(ratio_counts) != 1:
        raise ConfigError("model.anchors.aspect_ratios: the feature maps have different numbers of ratios; "
                          "the anchor fit needs the same number on every map")
    counts = [len(s) for s in current.sizes]
    sizes, ratios = kmeans_grid(boxes.widths_heights, sum(counts), ratio_counts.pop())
    fitted = _anchor_config(list(sizes), list(ratios), counts)
    sample = _sample_images(boxes, SEARCH_BOXES)
    refined = [refine_on_grid(geometry, sample, start) for start in (fitted, current)]  # two starts: a local search
    return max(refined, key=lambda anchors: _objective(geometry, anchors, sample))


def refine_on_grid(geometry: ModelGeometry, boxes: ModelBoxes, anchors: AnchorConfig, rounds: int = 30) -> AnchorConfig:
    """Coordinate search from `anchors`: scale one size or ratio at a time by a step factor and
    keep what raises, on the real grid, the share of boxes at IoU >= fg minus the share below bg
    (ties: the mean best IoU); until no step helps (a local optimum) or `rounds` passes."""
    counts = [len(s) for s in anchors.sizes]
    sizes = [v for level in anchors.sizes for v in level]
    ratios = list(anchors.aspect_ratios[0])
    best_score = _objective(geometry, anchors, boxes)
    for _ in range(rounds):
        improved = False
        for kind, index in [("size", i) for i in range(len(sizes))] + [("ratio", j) for j in range(len(ratios))]:
            for factor in SEARCH_STEPS:
                trial_sizes, trial_ratios = list(sizes), list(ratios)
                (trial_sizes if kind == "size" else trial_ratios)[index] *= factor
                candidate = _anchor_config(trial_sizes, trial_ratios, counts)
                score = _objective(geometry, candidate, boxes)
                if score > best_score:
                    best_score, improved = score, True
                    sizes = [v for level in candidate.sizes for v in level]
                    ratios = list(candidate.aspect_ratios[0])
        if not improved:
            break
    return _anchor_config(sizes, ratios, counts)


def _objective(geometry: ModelGeometry, anchors: AnchorConfig, boxes: ModelBoxes) -> tuple[float, float]:
    best = best_anchor_ious(geometry, anchors, boxes)
    if not len(best):
        return 0.0, 0.0
    return float((best >= geometry.fg_iou).mean() - (best < geometry.bg_iou).mean()), float(best.mean())


def _anchor_config(sizes: list[float], ratios: list[float], counts: list[int]) -> AnchorConfig:
    """Sizes (rounded to pixels, ascending, dealt to the maps in `counts`) x shared ratios (2 decimals)."""
    sizes = sorted(float(max(1, round(s))) for s in sizes)
    ratios = sorted(float(max(0.01, round(r, 2))) for r in ratios)
    per_map, start = [], 0
    for count in counts:
        per_map.append(sizes[start:start + count])
        start += count
    return AnchorConfig(sizes=per_map, aspect_ratios=[list(ratios) for _ in counts])


def _sample_images(boxes: ModelBoxes, max_boxes: int, seed: int = 0) -> ModelBoxes:
    """Whole images, drawn at random (seeded), until about `max_boxes` boxes: the search's data."""
    if len(boxes.boxes) <= max_boxes:
        return boxes
    order = np.random.default_rng(seed).permutation(len(boxes.image_slices))
    chosen, total = [], 0
    for i in order:
        if total >= max_boxes:
            break
        chosen.append(i)
        total += boxes.image_slices[i].stop - boxes.image_slices[i].start
    rows = [np.arange(boxes.image_slices[i].start, boxes.image_slices[i].stop) for i in chosen]
    slices, start = [], 0
    for r in rows:
        slices.append(slice(start, start + len(r)))
        start += len(r)
    index = np.concatenate(rows)
    return ModelBoxes(boxes.boxes[index], boxes.labels[index], [boxes.padded_sizes[i] for i in chosen], slices)


def anchor_override(anchors: AnchorConfig) -> str:
    """The `key=value` overrides that set these anchors, ready to paste after a config."""
    number = lambda v: f"{v:g}" if v != int(v) else str(int(v))  # noqa: E731
    nested = lambda lists: "[" + ",".join("[" + ",".join(number(v) for v in inner) + "]" for inner in lists) + "]"  # noqa: E731
    return f"model.anchors.sizes={nested(anchors.sizes)} model.anchors.aspect_ratios={nested(anchors.aspect_ratios)}"


@dataclass
class AnchorFit:
    """The config's anchors and the suggested ones, with every box's best IoU under each."""

    current: AnchorConfig
    boxes: ModelBoxes
    best_iou: np.ndarray
    class_names: list[str]
    fg_iou: float
    bg_iou: float
    suggested: AnchorConfig | None = None
    suggested_best_iou: np.ndarray | None = None

    def to_json(self) -> dict:
        """The "anchor_fit" section of data_report.json."""
        report = {"anchors": {"sizes": self.current.sizes, "aspect_ratios": self.current.aspect_ratios},
                  "rpn_thresholds": {"fg_iou": self.fg_iou, "bg_iou": self.bg_iou},
                  **fit_report(self.best_iou, self.boxes, self.class_names, self.fg_iou, self.bg_iou)}
        if self.suggested is not None:
            report["suggested"] = {
                "sizes": self.suggested.sizes, "aspect_ratios": self.suggested.aspect_ratios,
                "override": anchor_override(self.suggested),
                **fit_report(self.suggested_best_iou, self.boxes, self.class_names, self.fg_iou, self.bg_iou)}
        return report


def anchor_fit(config: Config, records, class_names, suggest: bool = True,
               geometry: ModelGeometry | None = None) -> AnchorFit:
    """The fit of the config's anchors to the boxes of `records` and, with `suggest`, of the
    suggested anchors (see the module docstring)."""
    geometry = geometry or ModelGeometry(config)
    boxes = boxes_in_model_pixels(records, geometry)
    current = config.model.anchors
    fit = AnchorFit(current, boxes, best_anchor_ious(geometry, current, boxes), list(class_names),
                    geometry.fg_iou, geometry.bg_iou)
    if suggest and len(boxes.boxes):
        fit.suggested = suggest_anchors(geometry, boxes, current)
        fit.suggested_best_iou = best_anchor_ious(geometry, fit.suggested, boxes)
    return fit
