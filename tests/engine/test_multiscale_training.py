"""Scale jitter that reaches the model (issue 22): `model.transform.train_min_sizes` draws each
training batch's short side; test time keeps `min_size`. The old `data.augment.scale` rescaled
images that the model then resized back, so it is refused by name."""
import pytest
import torch

from detector import ConfigError, load_config
from detector.config import config_from_dict, config_to_dict
from detector.engine.trainer import Trainer
from detector.modeling.transform import DetectionTransform

from test_trainer import tiny_config

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def transform(train_min_sizes=(96, 128, 160)):
    return DetectionTransform(128, 400, MEAN, STD, size_divisible=1, train_min_sizes=train_min_sizes)


def short_sides(image_list):
    return [min(size) for size in image_list.image_sizes]


def test_training_batches_get_one_drawn_size_each_and_eval_gets_min_size():
    model = transform().train()
    images = [torch.rand(3, 200, 300), torch.rand(3, 250, 180)]
    torch.manual_seed(0)
    drawn = []
    for _ in range(30):
        sides = short_sides(model(images)[0])
        assert len(set(sides)) == 1  # one size for the whole batch
        drawn.append(sides[0])
    assert set(drawn) == {96, 128, 160}
    torch.manual_seed(0)
    assert [short_sides(model(images)[0])[0] for _ in range(30)] == drawn  # the seed decides the draws

    model.eval()
    assert {short_sides(model(images)[0])[0] for _ in range(10)} == {128}


def test_max_size_still_caps_a_drawn_size():
    model = DetectionTransform(128, 200, MEAN, STD, size_divisible=1, train_min_sizes=(160,)).train()
    image_list, targets = model([torch.rand(3, 100, 400)], [{"boxes": torch.tensor([[0.0, 0.0, 400.0, 100.0]])}])
    assert image_list.image_sizes == [(50, 200)]  # 160 would make the long side 640 > 200
    torch.testing.assert_close(targets[0]["boxes"], torch.tensor([[0.0, 0.0, 200.0, 50.0]]))


def test_the_sizes_the_model_receives_vary_across_training_iterations(tmp_path):
    """Fails before issue 22: the key did not exist, and data.augment.scale, the only scale
    setting, was undone by the model's resize, so every batch reached the backbone at 128 px."""
    config = tiny_config(tmp_path, "run", "data.val=null", "train.max_iters=6",
                         "model.transform.train_min_sizes=[96, 128, 160]")
    trainer = Trainer(config)
    seen = []
    trainer.model.backbone.register_forward_pre_hook(lambda module, args: seen.append(min(args[0].shape[-2:])))
    trainer.fit()
    assert len(seen) == 6 and len(set(seen)) >= 2, seen
    assert set(seen) <= {96, 128, 160}  # padded to size_divisible 32: these sizes are multiples already


def test_the_old_scale_setting_is_refused_naming_what_to_use(tmp_path):
    with pytest.raises(ConfigError, match=r"data.augment.scale was removed, .*model.transform.train_min_sizes") as error:
        load_config(None, ["data.augment.scale=[0.8, 1.2]"])
    assert "\n" not in str(error.value)


def test_a_saved_config_holding_the_old_do_nothing_default_still_loads():
    saved = config_to_dict(load_config(None))
    saved["data"]["augment"]["scale"] = [1.0, 1.0]  # what every checkpoint before issue 22 holds
    assert config_from_dict(saved) == load_config(None)
