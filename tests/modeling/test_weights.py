"""Partial loading for fine-tuning, and weights files that carry code."""
import pickle

import pytest
import torch

from detector import CheckpointError, build_model, load_config, load_matching_weights, read_state_dict


def tiny_config(num_classes: int):
    return load_config(None, [f"model.num_classes={num_classes}", "model.backbone.pretrained=false"])


def test_fine_tuning_keeps_reused_layers_and_reinitialises_the_predictor(tmp_path):
    torch.manual_seed(0)
    source = build_model(tiny_config(20))
    path = tmp_path / "coco_like.pt"
    torch.save({"model": source.state_dict(), "epoch": 3}, path)

    torch.manual_seed(1)
    target = build_model(tiny_config(3))
    fresh_predictor = target.roi_heads.box_predictor.cls_score.weight.clone()
    report = load_matching_weights(target, read_state_dict(path))

    skipped = {key for key, _, _ in report.shape_mismatch}
    assert skipped == {
        "roi_heads.box_predictor.cls_score.weight",
        "roi_heads.box_predictor.cls_score.bias",
        "roi_heads.box_predictor.bbox_pred.weight",
        "roi_heads.box_predictor.bbox_pred.bias",
    }
    assert ("roi_heads.box_predictor.cls_score.weight", (21, 1024), (4, 1024)) in report.shape_mismatch
    assert not report.missing and not report.unexpected
    assert torch.equal(target.rpn.head.conv[0][0].weight, source.rpn.head.conv[0][0].weight)
    assert torch.equal(target.roi_heads.box_head.fc6.weight, source.roi_heads.box_head.fc6.weight)
    assert torch.equal(target.roi_heads.box_predictor.cls_score.weight, fresh_predictor)
    assert "skipped roi_heads.box_predictor.cls_score.weight: file [21, 1024] vs model [4, 1024]" in report.summary()


class _RunsCode:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_a_file_carrying_code_is_refused_and_never_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    with open(path, "wb") as handle:
        pickle.dump({"model": _RunsCode()}, handle)
    with pytest.raises(CheckpointError, match="evil.pt: cannot be read as a weights file"):
        read_state_dict(path)
    assert not (tmp_path / "PWNED").exists()


def test_missing_and_empty_files_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="weights file not found: .*nope.pt"):
        read_state_dict(tmp_path / "nope.pt")
    torch.save({"epoch": 1}, tmp_path / "no_model.pt")
    with pytest.raises(CheckpointError, match="no_model.pt: holds no state dict"):
        read_state_dict(tmp_path / "no_model.pt")
