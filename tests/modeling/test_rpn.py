"""The RPN against hand-worked labels and against torchvision's RPN with the same weights."""
from collections import OrderedDict

import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TorchvisionAnchorGenerator
from torchvision.models.detection.image_list import ImageList as TorchvisionImageList
from torchvision.models.detection.rpn import RegionProposalNetwork as TorchvisionRPN
from torchvision.models.detection.rpn import RPNHead as TorchvisionRPNHead

from detector.modeling.anchors import AnchorGenerator
from detector.modeling.rpn import RegionProposalNetwork, RPNHead
from detector.modeling.transform import ImageList


def make_pair(conv_depth: int = 1, pre_nms: int = 300, post_nms: int = 100):
    torch.manual_seed(0)
    sizes, ratios = [[32], [64]], [[0.5, 1.0, 2.0]] * 2
    top_n = dict(pre_nms_top_n={"training": pre_nms, "testing": pre_nms}, post_nms_top_n={"training": post_nms, "testing": post_nms})
    ours = RegionProposalNetwork(AnchorGenerator(sizes, ratios), RPNHead(16, 3, conv_depth), **top_n)
    theirs = TorchvisionRPN(
        TorchvisionAnchorGenerator(((32,), (64,)), ((0.5, 1.0, 2.0),) * 2),
        TorchvisionRPNHead(16, 3, conv_depth=conv_depth),
        0.7, 0.3, 256, 0.5, nms_thresh=0.7, **top_n,
    )
    theirs.head.load_state_dict(ours.head.state_dict())  # same parameter names, loads as is
    for module in (ours, theirs):  # a head that prefers some anchors, so top-n and NMS have work to do
        torch.nn.init.normal_(module.head.cls_logits.weight, std=0.0)
    torch.manual_seed(1)
    torch.nn.init.normal_(ours.head.cls_logits.weight, std=0.5)
    theirs.head.cls_logits.weight.data.copy_(ours.head.cls_logits.weight.data)
    return ours, theirs


def inputs():
    torch.manual_seed(2)
    features = OrderedDict([("0", torch.randn(2, 16, 16, 20)), ("1", torch.randn(2, 16, 8, 10))])
    sizes = [(128, 160), (120, 150)]
    targets = [
        {"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0], [80.0, 30.0, 150.0, 110.0]]), "labels": torch.tensor([1, 1])},
        {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64)},  # a negative image
    ]
    return features, sizes, targets


def test_anchor_labels_follow_the_iou_rules():
    rpn = RegionProposalNetwork(AnchorGenerator([[10]], [[1.0]]), RPNHead(4, 1))
    anchors = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # IoU 1.0 with the GT: object
            [0.0, 0.0, 10.0, 6.5],  # IoU 0.65: between the thresholds, ignored
            [0.0, 0.0, 10.0, 2.0],  # IoU 0.2: background
            [50.0, 50.0, 60.0, 60.0],  # best anchor of the second GT, IoU 0.25 only: still an object
            [90.0, 90.0, 99.0, 99.0],  # touches nothing: background
        ]
    )
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 70.0, 70.0]])
    labels, regression_targets = rpn.label_anchors(anchors, [{"boxes": gt}])
    assert labels[0].tolist() == [1.0, -1.0, 0.0, 1.0, 0.0]
    assert torch.allclose(regression_targets[0][0], torch.zeros(4))  # anchor == GT: nothing to regress
    assert torch.allclose(regression_targets[0][3], torch.tensor([0.5, 0.5, 0.6931472, 0.6931472]))


def test_proposals_equal_torchvision_in_eval():
    ours, theirs = make_pair()
    features, sizes, _ = inputs()
    ours.eval(), theirs.eval()
    batch = torch.zeros(2, 3, 128, 160)
    a, _ = ours(ImageList(batch, sizes), features)
    b, _ = theirs(TorchvisionImageList(batch, sizes), features)
    assert [len(x) for x in a] == [len(x) for x in b] == [100, 100]
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_losses_equal_torchvision_in_training_with_a_negative_image():
    ours, theirs = make_pair(conv_depth=2)
    features, sizes, targets = inputs()
    batch = torch.zeros(2, 3, 128, 160)
    torch.manual_seed(3)
    a_boxes, a_losses = ours(ImageList(batch, sizes), features, targets)
    torch.manual_seed(3)
    b_boxes, b_losses = theirs(TorchvisionImageList(batch, sizes), features, targets)
    assert set(a_losses) == {"loss_objectness", "loss_rpn_box_reg"}
    for key in a_losses:
        assert torch.allclose(a_losses[key], b_losses[key], rtol=1e-6, atol=1e-7), key
    for x, y in zip(a_boxes, b_boxes):
        assert torch.equal(x, y)
    # 2 GT boxes in image 0 give a handful of objects; the negative image gives 256 backgrounds.
    assert 0 < ours.last_sampled_counts["rpn_fg"] < 128
    assert ours.last_sampled_counts["rpn_fg"] + ours.last_sampled_counts["rpn_bg"] == 256
    a_losses["loss_objectness"].backward()
    assert ours.head.cls_logits.weight.grad.abs().sum() > 0
