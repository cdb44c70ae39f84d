"""The ROI head against torchvision's RoIHeads with the same weights, and its level mapping."""
from collections import OrderedDict

import torch
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.roi_heads import RoIHeads as TorchvisionRoIHeads
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.poolers import LevelMapper

from detector import ops
from detector.modeling.roi_heads import BoxPredictor, ROIHeads, TwoFCHead
from detector.modeling.roi_pooler import RoIPooler, assign_levels


def make_pair(num_classes: int = 3):
    torch.manual_seed(0)
    ours = ROIHeads(RoIPooler(["0", "1"], [8, 16], 7, 2), TwoFCHead(8 * 49, 64), BoxPredictor(64, num_classes), batch_size_per_image=64)
    theirs = TorchvisionRoIHeads(
        MultiScaleRoIAlign(["0", "1"], 7, 2), TwoMLPHead(8 * 49, 64), FastRCNNPredictor(64, num_classes + 1),
        0.5, 0.5, 64, 0.25, None, 0.05, 0.5, 100,
    )
    torch.nn.init.normal_(ours.box_predictor.cls_score.weight, std=1.0)  # confident enough to pass 0.05
    torch.nn.init.normal_(ours.box_predictor.bbox_pred.weight, std=0.1)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def inputs():
    torch.manual_seed(1)
    features = OrderedDict([("0", torch.randn(2, 8, 32, 40)), ("1", torch.randn(2, 8, 16, 20))])
    sizes = [(256, 320), (240, 300)]
    xy = torch.rand(2, 80, 2) * 200
    proposals = [torch.cat([p, p + 10 + torch.rand(80, 2) * 100], dim=1) for p in xy]
    targets = [
        {"boxes": torch.tensor([[20.0, 30.0, 120.0, 150.0], [150.0, 40.0, 290.0, 200.0]]), "labels": torch.tensor([1, 3])},
        {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    return features, proposals, sizes, targets


def test_level_mapping_equals_torchvision():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 112, 112], [0, 0, 224, 224], [0, 0, 447, 447], [0, 0, 2000, 900]], dtype=torch.float32)
    assert assign_levels(boxes, 2, 5).tolist() == [0, 1, 2, 2, 3]  # 224 px boxes -> level 4 (index 2)
    assert torch.equal(assign_levels(boxes, 2, 5), LevelMapper(2, 5)([boxes]))


def test_detections_equal_torchvision_in_eval():
    ours, theirs = make_pair()
    features, proposals, sizes, _ = inputs()
    ours.eval(), theirs.eval()
    a, _ = ours(features, proposals, sizes)
    b, _ = theirs(features, proposals, sizes)
    assert sum(len(d["boxes"]) for d in a) > 10
    for x, y in zip(a, b):
        assert torch.equal(x["labels"], y["labels"])
        assert torch.equal(x["boxes"], y["boxes"]) and torch.equal(x["scores"], y["scores"])
        assert (x["labels"] >= 1).all() and (x["scores"] > 0.05).all()


def test_losses_equal_torchvision_in_training():
    ours, theirs = make_pair()
    features, proposals, sizes, targets = inputs()
    torch.manual_seed(4)
    _, a = ours(features, [p.clone() for p in proposals], sizes, targets)
    torch.manual_seed(4)
    _, b = theirs(features, [p.clone() for p in proposals], sizes, targets)
    assert set(a) == {"loss_classifier", "loss_box_reg"}
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=1e-6), key
    assert a["loss_box_reg"] > 0  # GT boxes are appended to the proposals, so there are positives
    assert ours.last_sampled_counts["roi_fg"] <= 0.25 * 64


def test_soft_nms_keeps_the_top_detections_and_lowers_the_overlapping_ones():
    hard, _ = make_pair()
    soft, _ = make_pair()
    soft.nms_method = "gaussian"
    features, proposals, sizes, _ = inputs()
    hard.eval(), soft.eval()
    a, _ = hard(features, proposals, sizes)
    b, _ = soft(features, proposals, sizes)
    for x, y in zip(a, b):
        for label in x["labels"].unique():
            first_hard, first_soft = (torch.nonzero(d["labels"] == label)[0, 0] for d in (x, y))
            assert torch.equal(x["boxes"][first_hard], y["boxes"][first_soft])  # a class's best box is untouched
            assert x["scores"][first_hard] == y["scores"][first_soft]
        same_class = y["labels"][:, None] == y["labels"][None, :]
        overlap = ops.box_iou(y["boxes"], y["boxes"]).triu(diagonal=1) * same_class
        assert overlap.max() > hard.nms_thresh  # overlapping boxes stay, with lower scores; NMS deletes them
        assert torch.equal(y["scores"], y["scores"].sort(descending=True).values)
        assert y["scores"].min() >= soft.soft_nms_min_score and len(y["boxes"]) <= soft.detections_per_img
