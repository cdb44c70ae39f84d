"""A checkpoint carrying pickled code is refused with a clear message and its code never runs:
when loaded directly, by --resume and by predict."""
import pickle

import cv2
import numpy as np
import pytest

from detector.cli import main as cli
from detector.config import save_config
from detector.engine.checkpoint import load_checkpoint
from detector.errors import CheckpointError

from test_trainer import tiny_config


class RunsCode:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def write_evil(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        pickle.dump({"model": RunsCode(), "epoch": 1}, handle)


def test_pickled_code_is_refused_everywhere_a_checkpoint_is_read(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "run" / "weights" / "last.pt"
    write_evil(evil)

    with pytest.raises(CheckpointError, match=r"last.pt: cannot be read as a checkpoint \(tensors and plain data only\)"):
        load_checkpoint(evil)

    save_config(tiny_config(tmp_path, "run", "data.val=null"), tmp_path / "config.yaml")
    assert cli(["train", str(tmp_path / "config.yaml"), "--resume"]) == 2
    cv2.imwrite(str(tmp_path / "photo.jpg"), np.full((32, 32, 3), 127, np.uint8))
    assert cli(["predict", "--weights", str(evil), str(tmp_path / "photo.jpg")]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert [line.split(":")[0] for line in errors] == ["detector train", "detector predict"]
    assert all("cannot be read as a checkpoint" in line for line in errors), errors
    assert not (tmp_path / "PWNED").exists()
