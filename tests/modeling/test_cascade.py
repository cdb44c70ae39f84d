"""Cascade R-CNN stages (model.roi_heads.cascade_ious): what each stage pools, how it is labelled
and weighted in training, and how inference combines the stages; plain Faster R-CNN unchanged."""
import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from detector import ConfigError, build_model, load_config
from detector.modeling.box_coder import BoxCoder

SMALL = ["model.backbone.pretrained=false", "model.num_classes=3", "model.transform.min_size=128",
         "model.transform.max_size=160"]
CASCADE = SMALL + ["model.roi_heads.cascade_ious=[0.6,0.7]"]


def cascade_model(seed=0):
    torch.manual_seed(seed)
    model = build_model(load_config(None, CASCADE))
    for predictor in [model.roi_heads.box_predictor] + [stage.box_predictor for stage in model.roi_heads.refinements]:
        torch.nn.init.normal_(predictor.cls_score.weight, std=0.05)
        torch.nn.init.normal_(predictor.bbox_pred.weight, std=0.05)
    return model


def images_and_targets():
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 120, 150, generator=generator), torch.rand(3, 140, 110, generator=generator)]
    targets = [{"boxes": torch.tensor([[10.0, 20, 70, 90], [80, 10, 140, 60]]), "labels": torch.tensor([1, 3])},
               {"boxes": torch.tensor([[5.0, 5, 100, 120]]), "labels": torch.tensor([2])}]
    return images, targets


def test_plain_faster_rcnn_has_no_refinement_stage():
    model = build_model(load_config(None, SMALL))
    assert len(model.roi_heads.refinements) == 0
    assert not any(key.startswith("roi_heads.refinements") for key in model.state_dict())


def test_stages_code_boxes_with_growing_weights_and_their_own_heads():
    roi_heads = cascade_model().roi_heads
    assert [stage.iou_thresh for stage in roi_heads.refinements] == [0.6, 0.7]
    assert [stage.box_coder.weights for stage in roi_heads.refinements] == [(20, 20, 10, 10), (30, 30, 15, 15)]
    heads = [roi_heads.box_head] + [stage.box_head for stage in roi_heads.refinements]
    assert len({id(head.fc6.weight) for head in heads}) == 3


def test_training_returns_every_stages_losses_and_trains_every_head():
    model = cascade_model().train()
    images, targets = images_and_targets()
    losses = model(images, targets)
    for name in ("loss_classifier", "loss_box_reg"):
        assert {name, f"{name}_stage1", f"{name}_stage2"} <= losses.keys()
    assert all(torch.isfinite(loss) for loss in losses.values())
    sum(losses.values()).backward()
    for stage in model.roi_heads.refinements:
        assert stage.box_head.fc6.weight.grad.abs().sum() > 0
        assert stage.box_predictor.bbox_pred.weight.grad.abs().sum() > 0


def test_each_stage_trains_on_the_previous_stages_boxes_at_its_own_iou():
    """The proposals stage k labels are stage k-1's sampled boxes, decoded with the deltas of
    their true class (background: the most likely class), clipped; the losses of stage k are
    weighted 0.5^k, and its labels come from its own IoU threshold."""
    model = cascade_model().train()
    roi_heads = model.roi_heads
    images, targets = images_and_targets()
    calls, outputs = [], []
    original = roi_heads.label_and_sample_proposals

    def spy(proposals, targets, *args, **kwargs):
        result = original(proposals, targets, *args, **kwargs)
        calls.append(([p.detach().clone() for p in proposals], args, result, targets))
        return result
    roi_heads.label_and_sample_proposals = spy
    hooks = [module.register_forward_hook(lambda m, i, o: outputs.append([t.detach() for t in o]))
             for module in [roi_heads.box_predictor, *roi_heads.refinements]]
    sizes = []
    hooks.append(roi_heads.register_forward_pre_hook(lambda m, args: sizes.append(args[2])))
    torch.manual_seed(1)
    losses = model(images, targets)
    for hook in hooks:
        hook.remove()
    assert [args[:2] for _, args, _, _ in calls] == [(0.5, 0.5), (0.6, 0.6), (0.7, 0.7)]
    image_sizes = sizes[0]  # the resized images' (height, width)
    assert image_sizes[1] == (160, 125)  # 140 x 110 resized; stage-1 boxes reaching past x = 125 get clipped
    for stage in (1, 2):
        sampled, labels, _ = calls[stage - 1][2]
        logits, deltas = outputs[stage - 1]
        labels = torch.cat(labels)
        classes = torch.where(labels > 0, labels, logits[:, 1:].argmax(1) + 1)
        coder = roi_heads.box_coder if stage == 1 else roi_heads.refinements[0].box_coder
        expected = coder.decode(deltas, torch.cat(sampled))[torch.arange(len(classes)), classes]
        expected = torch.cat([boxes.clamp(min=0).minimum(torch.tensor([w, h, w, h], dtype=boxes.dtype))
                              for boxes, (h, w) in zip(expected.split([len(s) for s in sampled]), image_sizes)])
        assert torch.allclose(torch.cat(calls[stage][0]), expected, atol=1e-4)
        # Stage k's labels: object exactly where the sampled box overlaps a GT box at its IoU.
        threshold = (0.6, 0.7)[stage - 1]
        for boxes, labels, target in zip(calls[stage][2][0], calls[stage][2][1], calls[stage][3]):
            best_iou = box_iou(boxes, target["boxes"]).max(1).values  # the resized GT boxes
            assert torch.equal(labels > 0, best_iou >= threshold)
    assert losses["loss_classifier_stage1"].item() == pytest.approx(
        0.5 * F.cross_entropy(outputs[1][0], torch.cat(calls[1][2][1])).item(), rel=1e-5)
    assert losses["loss_classifier_stage2"].item() == pytest.approx(
        0.25 * F.cross_entropy(outputs[2][0], torch.cat(calls[2][2][1])).item(), rel=1e-5)


@torch.no_grad()
def test_inference_averages_the_stages_scores_and_keeps_the_last_stages_boxes():
    roi_heads = cascade_model().eval().roi_heads
    features = {"0": torch.randn(1, roi_heads.box_head.fc6.in_features // 49, 8, 10)}
    proposals = torch.tensor([[10.0, 10, 60, 70], [30, 20, 150, 100], [0, 0, 40, 30]])
    clip = lambda boxes: boxes.clamp(min=0, max=128)  # noqa: E731
    pooled_boxes = []

    def pool(boxes):
        pooled_boxes.append(boxes)
        return roi_heads.box_roi_pool(features, [boxes])
    scores, boxes = roi_heads.classify_and_refine(pool, proposals, clip)
    # By hand: each stage pools the previous stage's box of its most likely object class.
    expected_scores, stage_boxes = [], proposals
    coders = [roi_heads.box_coder] + [stage.box_coder for stage in roi_heads.refinements]
    heads = [lambda x: roi_heads.box_predictor(roi_heads.box_head(x)), *roi_heads.refinements]
    for index, (head, coder) in enumerate(zip(heads, coders)):
        assert torch.equal(pooled_boxes[index], stage_boxes)
        logits, deltas = head(roi_heads.box_roi_pool(features, [stage_boxes]))
        probabilities = logits.softmax(-1)
        expected_scores.append(probabilities)
        decoded = clip(coder.decode(deltas, stage_boxes))
        stage_boxes = decoded[torch.arange(3), probabilities[:, 1:].argmax(1) + 1]
    assert torch.allclose(scores, torch.stack(expected_scores).mean(0), atol=1e-6)
    assert torch.allclose(boxes, decoded, atol=1e-5)
    assert not torch.allclose(pooled_boxes[1], pooled_boxes[2], atol=1e-3)  # the stages really move the boxes


def test_a_cascade_model_detects_on_a_real_photo_like_any_model():
    from skimage import data
    model = cascade_model().eval()
    image = torch.from_numpy(data.astronaut()).permute(2, 0, 1).float() / 255
    with torch.no_grad():
        detections = model([image])[0]
    assert detections["boxes"].shape[1] == 4 and len(detections["boxes"]) == len(detections["scores"])
    assert (detections["boxes"][:, 2:] <= torch.tensor([512, 512])).all()


@pytest.mark.parametrize("value", ["[1.0]", "[0.6,0]", "[-0.2]"])
def test_a_bad_cascade_iou_is_one_line_naming_the_key(value):
    with pytest.raises(ConfigError, match=r"model\.roi_heads\.cascade_ious"):
        load_config(None, SMALL + [f"model.roi_heads.cascade_ious={value}"])


def test_box_coder_weights_are_what_the_stage_decodes_with():
    coder = BoxCoder((20, 20, 10, 10))
    reference = torch.tensor([[0.0, 0, 10, 20]])
    assert torch.allclose(coder.decode(torch.tensor([[20.0, 0, 0, 0]]), reference)[0, 0], torch.tensor([10.0, 0, 20, 20]))
