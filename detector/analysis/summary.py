"""What `detector data` and `detector analyze` print: short tables made from their JSON reports."""
from __future__ import annotations

from pathlib import Path

from detector.analysis.errors import ERROR_TYPES, ap_name
from detector.analysis.plots import ERROR_NAMES


def _share(value) -> str:
    return "   n/a" if value is None else f"{value:6.1%}"


def format_fit_row(name: str, row: dict, fg: float, bg: float) -> str:
    return (f"  {name:<14} {row['boxes']:>6}  {_share(row[f'iou>={fg:g}'])} {_share(row[f'{bg:g}<=iou<{fg:g}'])} "
            f"{_share(row[f'iou<{bg:g}'])}")


def format_data_report(report: dict, out_dir) -> str:
    lines = []
    for split in ("train", "val"):
        if split not in report:
            continue
        stats = report[split]
        sizes = stats["coco_sizes"]["model_pixels"]
        lines.append(f"{split}: {stats['images']} images ({stats['images_without_boxes']} without boxes), "
                     f"{stats['boxes']} boxes (+{stats['ignored_boxes']} crowd/difficult); after the resize: "
                     f"{sizes['small']} small, {sizes['medium']} medium, {sizes['large']} large")
        for name, row in stats["per_class"].items():
            lines.append(f"  {name:<20} {row['boxes']:>6} boxes in {row['images']:>5} images")
        if "view" in stats:
            lines.append(f"  ({split} as {stats['view']})")
    lines += format_small_objects(report)
    fit = report["anchor_fit"]
    fg, bg = fit["rpn_thresholds"]["fg_iou"], fit["rpn_thresholds"]["bg_iou"]
    header = f"  {'':<14} {'boxes':>6}  {f'>={fg:g}':>6} {f'{bg:g}-{fg:g}':>6} {f'<{bg:g}':>6}"
    sections = [("config", fit["anchors"], fit)]
    if "suggested" in fit:
        sections.append(("suggested", fit["suggested"], fit["suggested"]))
    for title, anchors, section in sections:
        lines.append(f"anchor fit of the {title} anchors, sizes {anchors['sizes']} ratios {anchors['aspect_ratios']} "
                     "(share of boxes by their best anchor IoU):")
        lines.append(header)
        lines.append(format_fit_row("all", section["overall"], fg, bg))
        for name, row in section["per_class"].items():
            lines.append(format_fit_row(name, row, fg, bg))
        for name, row in section["per_size"].items():
            lines.append(format_fit_row(f"({name})", row, fg, bg))
    if "suggested" in fit:
        lines.append(f"to train with the suggested anchors, add: {fit['suggested']['override']}")
    lines.append(f"wrote data_report.json, labels.png, anchor_fit.png, train_batch*.jpg to {out_dir}")
    return "\n".join(lines)


def format_small_objects(report: dict) -> list[str]:
    """The small-object lines of `detector data`: the share under 16 px and, past 20%, the tiles."""
    from detector.analysis.data_report import SMALL_PIXELS

    under = report["train"].get(f"under_{SMALL_PIXELS}px_model_pixels", {})
    if not under.get("share"):
        return []
    lines = [f"small objects: {under['share']:.0%} of the training boxes ({under['boxes']}) are under {SMALL_PIXELS} px "
             "at the model's resolution"]
    tiles = (report.get("small_objects") or {}).get("recommendation")
    if tiles:
        lines.append(f"  train on tiles and predict sliced: {tiles['size']} px tiles, overlap {tiles['overlap']:g} bring "
                     f"the median small box from {tiles['median_small_box_original_pixels']:.0f} px to "
                     f"{tiles['median_small_box_in_tile_pixels']:.0f} px (the largest common box, "
                     f"{tiles['largest_common_box_original_pixels']:.0f} px, fits in the overlap); add:")
        lines.append(f"  {tiles['override']}")
    return lines


def format_analysis(result: dict, out_dir) -> str:
    name = ap_name(result["iou_thresholds"]["foreground"])  # AP50, or AP75 with --iou 0.75
    ap = "n/a" if result[name] is None else f"{result[name]:.4f}"
    lines = [f"{name} {ap}; errors (TIDE: fg IoU {result['iou_thresholds']['foreground']:g}, "
             f"bg IoU {result['iou_thresholds']['background']:g}) and the {name} each would gain if fixed:"]
    for error_type in ERROR_TYPES:
        entry = result["errors"][error_type]
        gain = "n/a" if entry["d" + name] is None else f"{entry['d' + name]:+.4f}"
        lines.append(f"  {error_type:<5} {ERROR_NAMES[error_type]:<15} {entry['count']:>7}  d{name} {gain}")
    point = result["operating_point"]
    lines.append(f"at score >= {point['score_threshold']:.3f} (best mean F1 {point['mean_f1']:.3f} at "
                 f"{point['best_f1_threshold']:.3f}):")
    for name, row in point["per_class"].items():
        lines.append(f"  {name:<20} P {row['precision']:.3f}  R {row['recall']:.3f}  F1 {row['f1']:.3f}  "
                     f"({row['tp']} TP, {row['fp']} FP, {row['num_gt']} boxes)")
    worst = result["images_by_errors"][:3]
    if worst:
        lines.append("most errors: " + ", ".join(f"{Path(w['file_name']).name} ({w['fp']} FP, {w['fn']} missed)" for w in worst))
    missing = result.get("unreadable_images", [])
    if missing:
        lines.append(f"WARNING: {len(missing)} of the images with the most errors not found (first: {missing[0]}): "
                     "left out of the gallery; give --images DIR, the folder their file names are relative to")
    lines.append(f"wrote {', '.join(Path(f).name for f in result['files'])} to {out_dir}")
    return "\n".join(lines)
