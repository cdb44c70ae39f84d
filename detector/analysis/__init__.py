"""Know your data and your model: dataset report, anchor fit, batch previews, error analysis.

    from detector.analysis import load_coco_files, error_breakdown
    evalset = load_coco_files("runs/x/eval/ground_truth.json", "runs/x/eval/predictions.json")
    breakdown = error_breakdown(evalset)          # TIDE types: counts and oracle dAP50
"""
from detector.analysis.detections import EvalSet, ImageBoxes, from_coco, load_coco_files
from detector.analysis.errors import ERROR_TYPES, ErrorBreakdown, classify_image, error_breakdown

__all__ = [
    "ERROR_TYPES",
    "ErrorBreakdown",
    "EvalSet",
    "ImageBoxes",
    "classify_image",
    "error_breakdown",
    "from_coco",
    "load_coco_files",
]
