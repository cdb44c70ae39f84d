"""An image that breaks after the load-time check (mid-run) is skipped and named, in a worker
process or not; with data.policy=strict it stops the run naming the file."""
import pytest

from detector.config import save_config
from detector.errors import DataError
from detector.engine.trainer import Trainer

from test_trainer import tiny_config


def break_first_training_image(trainer):
    path = trainer.train_set.records[0].path
    path.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg any more")
    return path


@pytest.mark.parametrize("workers", [0, 1])
def test_an_image_that_fails_to_decode_mid_run_is_skipped_and_reported(tmp_path, workers):
    trainer = Trainer(tiny_config(tmp_path, "run", f"data.workers={workers}", "train.epochs=1",
                                  "train.eval_every=1"))
    broken = break_first_training_image(trainer)
    trainer.fit()
    assert trainer.iteration == 3  # ceil(6 / 2): the accounting holds with a shorter batch
    listing = (tmp_path / "run" / "skipped_images.txt").read_text()
    assert f"{broken} (image id" in listing and "cannot read the image" in listing
    assert "WARNING: iteration" in (tmp_path / "run" / "train.log").read_text()


def test_a_batch_with_no_readable_image_still_counts_as_an_iteration(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, "run", "train.epochs=1", "data.val=null"))
    for record in trainer.train_set.records:
        record.path.write_bytes(b"")
    trainer.fit()
    assert trainer.iteration == 3 and trainer.scheduler.last_epoch == 3
    assert len((tmp_path / "run" / "skipped_images.txt").read_text().splitlines()) == 6


def test_an_unreadable_val_image_is_left_out_of_the_metrics_and_named(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, "run", "train.epochs=1", "train.eval_every=1"))
    broken = trainer.val_set.records[0].path
    broken.write_bytes(b"garbage")
    metrics = trainer.fit()
    assert len(metrics["skipped_images"]) == 1 and str(broken) in metrics["skipped_images"][0]
    assert "left out of the metrics" in (tmp_path / "run" / "train.log").read_text()


def test_strict_policy_stops_on_the_unreadable_image(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, "run", "data.policy=strict", "train.epochs=1"))
    broken = break_first_training_image(trainer)
    with pytest.raises(DataError, match=f"{broken}: cannot read the image"):
        trainer.fit()


def test_eval_names_each_skipped_val_image_and_says_the_count_at_the_end(tmp_path, capsys):
    from detector import build_model
    from detector.cli import main as cli
    from detector.config import config_to_dict
    from detector.data import load_dataset
    from detector.engine.checkpoint import save_checkpoint

    config = tiny_config(tmp_path, "run", "model.backbone.pretrained=false")  # val: 2 synthetic images
    val = load_dataset(config.data.val)  # draws them
    config.model.num_classes = len(val.category_map)
    save_checkpoint({"model": build_model(config).state_dict(), "config": config_to_dict(config),
                     "categories": val.category_map.to_dict()}, tmp_path / "untrained.pt")
    save_config(config, tmp_path / "eval.yaml")
    cut = val.records[0].path
    cut.write_bytes(cut.read_bytes()[:cut.stat().st_size // 2])
    code = cli(["eval", str(tmp_path / "eval.yaml"), "--weights", str(tmp_path / "untrained.pt"),
                "--out", str(tmp_path / "ev")])
    captured = capsys.readouterr()
    assert code == 1
    assert f"{cut}: truncated: the JPEG data stops before its end-of-image marker" in captured.err
    assert captured.out.strip().splitlines()[-1] == "val images: 1 scored, 1 skipped (named above)"
