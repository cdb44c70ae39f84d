"""`detector analyze --iou T`: TIDE at a stricter foreground IoU. Boxes right at 0.5 but loose
become loc errors at 0.75, and the AP it reports is pycocotools' AP75."""
from __future__ import annotations

import contextlib
import copy
import io
import json

import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detector.analysis.detections import from_coco
from detector.analysis.errors import error_breakdown
from detector.cli import main
from coco_cases import CocoCase

CAT = 1


def pycocotools_ap75(gt: dict, results: list[dict]) -> float:
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        evaluation = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(results)), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return float(evaluation.stats[2])


def loose_and_tight() -> CocoCase:
    """Three cats of 100 x 100 px: found exactly (IoU 1), tightly (IoU 0.81) and loosely (IoU
    0.6, shifted 25 px), the loose one scoring highest so that it costs AP75."""
    case = CocoCase()
    image = case.image()
    for x in (0, 200, 400):
        case.box(image, [x, 0, x + 100, 100], CAT)
    case.det(image, [400 + 25, 0, 400 + 125, 100], CAT, 0.95)  # IoU 75 * 100 / (2 * 10000 - 7500) = 0.6
    case.det(image, [0, 0, 100, 100], CAT, 0.9)
    case.det(image, [200 + 5, 5, 200 + 95, 95], CAT, 0.8)      # IoU 8100 / 10000 = 0.81
    return case


def test_a_loose_box_is_right_at_05_and_a_loc_error_at_075():
    case = loose_and_tight()
    evalset = from_coco(case.gt, case.results)
    at_50 = error_breakdown(evalset)
    assert at_50.counts["loc"] == 0 and at_50.ap50 == pytest.approx(1.0)
    at_75 = error_breakdown(evalset, fg=0.75)
    assert at_75.counts == {"cls": 0, "loc": 1, "both": 0, "dupe": 0, "bkg": 0, "miss": 0}
    assert at_75.images[0].det_error == ["loc", None, None]
    assert at_75.ap50 == pytest.approx(pycocotools_ap75(case.gt, case.results), abs=1e-9)
    assert at_75.ap50 < 1
    assert at_75.delta_ap50["loc"] == pytest.approx(1 - at_75.ap50)  # fixing the box gives back the AP
    assert at_75.to_json()["loc"] == {"count": 1, "dAP75": at_75.delta_ap50["loc"]}


def test_analyze_iou_option_writes_and_prints_ap75(tmp_path, capsys):
    case = loose_and_tight()
    gt, predictions = tmp_path / "gt.json", tmp_path / "predictions.json"
    gt.write_text(json.dumps(case.gt))
    predictions.write_text(json.dumps(case.results))
    assert main(["analyze", "--gt", str(gt), "--predictions", str(predictions), "--out", str(tmp_path / "a"),
                 "--iou", "0.75"]) == 0
    printed = capsys.readouterr().out
    written = json.loads((tmp_path / "a" / "analysis.json").read_text())
    assert written["iou_thresholds"]["foreground"] == 0.75 and "AP50" not in written
    assert written["AP75"] == pytest.approx(pycocotools_ap75(case.gt, case.results), abs=1e-9)
    assert written["errors"]["loc"]["count"] == 1
    assert printed.startswith(f"AP75 {written['AP75']:.4f}; errors (TIDE: fg IoU 0.75")
    assert main(["analyze", "--gt", str(gt), "--predictions", str(predictions), "--out", str(tmp_path / "b")]) == 0
    default = json.loads((tmp_path / "b" / "analysis.json").read_text())
    assert default["AP50"] == pytest.approx(1.0) and default["errors"]["loc"] == {"count": 0, "dAP50": 0.0}


@pytest.mark.parametrize("iou", ["0.1", "1.5"])
def test_a_foreground_iou_outside_the_range_is_one_line(tmp_path, capsys, iou):
    case = loose_and_tight()
    gt, predictions = tmp_path / "gt.json", tmp_path / "predictions.json"
    gt.write_text(json.dumps(case.gt))
    predictions.write_text(json.dumps(case.results))
    assert main(["analyze", "--gt", str(gt), "--predictions", str(predictions), "--out", str(tmp_path / "a"),
                 "--iou", iou]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--iou {float(iou)}" in err[0], err
