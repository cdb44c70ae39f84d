"""Matching that runs out of memory: retried after emptying the cache, then on the CPU, with a
warning naming the image and the box counts; the result equals a normal match."""
import pytest
import torch

from detector import ops
from detector.ops import fallback
from detector.ops.fallback import MatchMemoryWarning, match_with_fallback


def boxes(n, seed):
    xy = torch.rand(n, 2, generator=torch.Generator().manual_seed(seed)) * 100
    return torch.cat([xy, xy + 5 + torch.rand(n, 2, generator=torch.Generator().manual_seed(seed + 1)) * 50], 1)


@pytest.fixture
def flaky_match(monkeypatch):
    """ops.match raising OutOfMemoryError for the first `fail` calls, and always for tensors
    that are not on the CPU (standing in for a full GPU); records the devices it was called on."""
    real, calls = ops.match, []

    def flaky(gt_boxes, anchors, *args, **kwargs):
        calls.append(anchors.device.type)
        if len(calls) <= flaky.fail or anchors.device.type != "cpu":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return real(gt_boxes, anchors, *args, **kwargs)

    flaky.fail, flaky.calls = 0, calls
    monkeypatch.setattr(fallback.ops, "match", flaky)
    return flaky


def test_second_try_after_emptying_the_cache(flaky_match):
    gt, anchors = boxes(7, 0), boxes(300, 2)
    flaky_match.fail = 1
    with pytest.warns(MatchMemoryWarning, match=r"image a.jpg: matching 7 ground-truth boxes x 300 boxes ran out of memory; "
                                                 r"it worked after emptying the CUDA cache"):
        matched = match_with_fallback(gt, anchors, 0.7, 0.3, True, image="a.jpg")
    assert torch.equal(matched, ops.match(gt, anchors, 0.7, 0.3, True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device to fall back from")
def test_falls_back_to_the_cpu_and_returns_on_the_input_device(flaky_match):
    gt, anchors = boxes(5, 3).cuda(), boxes(200, 4).cuda()  # flaky_match: CUDA is "full"
    with pytest.warns(MatchMemoryWarning, match=r"image 3: matching 5 ground-truth boxes x 200 boxes ran out of cuda:0 "
                                                 r"memory twice; matched on the CPU instead"):
        matched = match_with_fallback(gt, anchors, 0.7, 0.3, False, image=3)
    assert flaky_match.calls == ["cuda", "cuda", "cpu"] and matched.is_cuda
    assert torch.equal(matched.cpu(), ops.match(boxes(5, 3), boxes(200, 4), 0.7, 0.3, False))


def test_the_cpu_running_out_is_raised(flaky_match):
    flaky_match.fail = 2
    with pytest.raises(torch.OutOfMemoryError):
        match_with_fallback(boxes(3, 5), boxes(10, 6), 0.7, 0.3, True)


def test_the_model_names_the_image_file_when_matching_runs_out(flaky_match):
    from detector import build_model, load_config

    model = build_model(load_config(None, ["model.backbone.pretrained=false", "model.transform.min_size=128",
                                           "model.transform.max_size=128", "model.num_classes=2"])).train()
    target = {"boxes": torch.tensor([[10.0, 10.0, 60.0, 70.0]]), "labels": torch.tensor([1]), "file": "dogs/rex.jpg"}
    flaky_match.fail = 1  # the RPN's match fails once
    with pytest.warns(MatchMemoryWarning, match=r"image dogs/rex.jpg: matching 1 ground-truth boxes x \d+ boxes"):
        losses = model([torch.rand(3, 128, 128)], [target])
    assert all(torch.isfinite(v) for v in losses.values())
