"""Test-time settings reach the model by one rule in every command: eval, analyze, predict,
serve and export pick the same keys, apply the allowed ones and refuse the others by name."""
import pytest

from detector import build_model, load_config
from detector.cli import main
from detector.config import config_to_dict
from detector.engine.checkpoint import save_checkpoint
from detector.errors import ConfigError
from detector.inference.overrides import TEST_TIME_KEYS, apply_test_time_overrides, select_test_time_overrides

TINY = ["model.backbone.pretrained=false", "model.num_classes=2", "model.transform.min_size=64",
        "model.transform.max_size=96"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("overrides") / "tiny.pt"
    config = load_config(None, TINY)
    save_checkpoint({"model": build_model(config).state_dict(), "config": config_to_dict(config),
                     "categories": {"ids": [3, 7], "names": ["cat", "dog"]}}, path)
    return path


def test_a_command_line_gives_the_model_its_model_keys_and_the_process_keys():
    typed = ["data.workers=0", "model.roi_heads.nms_method=hard", "train.batch_size=2", "train.keep_freed_memory=false",
             "model.num_classes=5", "output=runs/x"]
    assert select_test_time_overrides(typed) == ["model.roi_heads.nms_method=hard", "train.keep_freed_memory=false",
                                          "model.num_classes=5"]  # the last is refused by name when applied


def test_allowed_keys_are_applied_to_a_copy_and_others_refused_by_name():
    saved = {"model": {"roi_heads": {"nms_method": "gaussian"}}, "train": {"keep_freed_memory": True}}
    changed = apply_test_time_overrides(saved, ["model.roi_heads.nms_method=hard", "train.keep_freed_memory=false"],
                                        "w.pt")
    assert changed == {"model": {"roi_heads": {"nms_method": "hard"}}, "train": {"keep_freed_memory": False}}
    assert saved["model"]["roi_heads"]["nms_method"] == "gaussian"  # the checkpoint's own config is left alone
    with pytest.raises(ConfigError, match=r"^model.num_classes: fixed by the checkpoint w.pt .*"
                                          + TEST_TIME_KEYS[0].replace(".", r"\.")):
        apply_test_time_overrides(saved, ["model.num_classes=5"], "w.pt")


def test_serve_takes_set_and_bare_overrides_and_they_reach_the_model(checkpoint, monkeypatch, capsys):
    import uvicorn

    import detector.serve

    served = []
    real_create_app = detector.serve.create_app
    monkeypatch.setattr(detector.serve, "create_app", lambda predictor, *a, **k: served.append(predictor)
                        or real_create_app(predictor, *a, **k))
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: None)
    assert main(["serve", "--weights", str(checkpoint), "--device", "cpu", "--set", "model.roi_heads.score_thresh=0.3",
                 "model.roi_heads.nms_method=linear"]) == 0
    model = served[0].model
    assert model.roi_heads.score_thresh == 0.3 and model.roi_heads.nms_method == "linear"
    capsys.readouterr()
    assert main(["serve", "--weights", str(checkpoint), "--device", "cpu", "--set", "model.num_classes=5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("detector serve: model.num_classes: fixed by the checkpoint"), err
