"""A `.onnx` whose metadata was edited by hand is refused when it is loaded, as a checkpoint
error naming the file and the key (exit 2), never a crash at the first image (exit 3)."""
import json

import onnx
import pytest

from detector.cli import main as cli
from detector.errors import CheckpointError
from detector.inference.exported import OnnxPredictor


def with_metadata(source, target, **changes):
    model = onnx.load(str(source))
    for entry in model.metadata_props:
        if entry.key in changes:
            entry.value = changes[entry.key]
    onnx.save(model, str(target))
    return target


@pytest.mark.parametrize("changes, message", [
    ({"category_ids": '"abc"'}, "category_ids must be a list of integers"),
    ({"category_names": "null"}, "category_names a list of strings"),
    ({"category_ids": "[1, 2]", "category_names": '["a", "b"]'}, "predicts 4 classes but its metadata maps 2"),
    ({"category_ids": "[1, 2]"}, "2 ids but 4 names"),
    ({"category_ids": "[1, 1, 2, 3]"}, "more than once"),
    ({"min_size": '"big"'}, "'min_size' must be a number"),
    ({"score_thresh": "{"}, "'score_thresh' is not JSON"),
])
def test_malformed_metadata_is_a_checkpoint_error_naming_the_key(lite0, tmp_path, capsys, changes, message):
    broken = with_metadata(lite0[1], tmp_path / "broken.onnx", **changes)
    with pytest.raises(CheckpointError, match=message):
        OnnxPredictor(broken)
    assert cli(["predict", str(tmp_path), "--weights", str(broken), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "broken.onnx" in error[0] and message.split()[0].strip("'") in error[0]


def test_the_written_metadata_reads_back(lite0):
    predictor = OnnxPredictor(lite0[1])
    assert predictor.category_ids == [1, 2, 3, 4] and predictor.min_size == 256
    assert json.loads(predictor.metadata["config"])["model"]["num_classes"] == 4
