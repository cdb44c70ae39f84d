"""One exit-status contract for every command (docs/reliability.md "Exit codes", detector/exit_status.py):
0 done, 1 done with some inputs skipped and named, 2 a usage/config/input/checkpoint/path error
told in one line, 3 an internal error told in one line that names a file holding the traceback.
Each command is checked with a config error, an injected bug, a config nested 500 deep and an
`--out` that is a file; `train --nproc 2` maps its processes' failures onto the same codes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import detector
from detector import build_model, load_config
from detector.cli import main
from detector.config import config_to_dict, save_config
from detector.data import load_dataset
from detector.engine.checkpoint import save_checkpoint

REPO = Path(__file__).resolve().parents[1]
TINY = ["model.backbone.pretrained=false", "model.transform.min_size=64", "model.transform.max_size=96"]
SYNTHETIC = "{format: synthetic, root: %s, num_images: 2, seed: 1, split: %s}"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny untrained checkpoint, an image, a valid config with synthetic data, a config with
    an unknown key, a config nested 500 levels deep, and a file where a folder is expected."""
    root = tmp_path_factory.mktemp("exit_codes")
    synthetic = root / "synthetic"
    config = load_config(None, TINY + [f"data.train={SYNTHETIC % (synthetic, 'train')}",
                                       f"data.val={SYNTHETIC % (synthetic, 'val')}", "data.workers=0",
                                       "train.epochs=1", "train.batch_size=2", f"output={root / 'run'}"])
    save_config(config, root / "good.yaml")
    categories = load_dataset(config.data.val).category_map  # the synthetic set's, so that eval runs
    model_config = load_config(None, TINY + [f"model.num_classes={len(categories)}"])
    save_checkpoint({"model": build_model(model_config).state_dict(), "config": config_to_dict(model_config),
                     "categories": categories.to_dict()}, root / "good.pt")
    cv2.imwrite(str(root / "ok.png"), np.random.default_rng(0).integers(0, 255, (48, 64, 3), np.uint8))
    (root / "bad.yaml").write_text("_base_: good.yaml\nmodel:\n  backbone:\n    nmae: resnet50\n")
    (root / "deep.yaml").write_text("model: " + "[" * 500 + "]" * 500 + "\n")
    (root / "a_file").write_text("a file, not a folder")
    return root


def run(argv, capsys):
    """(exit status, the lines on stderr) of `detector ARGV` in this process."""
    try:
        status = main([str(a) for a in argv])
    except SystemExit as stop:  # argparse's usage errors
        status = stop.code
    return status, capsys.readouterr().err.strip().splitlines()


def one_line_error(status, err, command, *contains):
    assert status == 2 and len(err) == 1, (status, err)
    assert err[0].startswith(f"detector {command}: ") and "Traceback" not in err[0], err
    for text in contains:
        assert text in err[0], err


# ------------------------------------------------------------------ 2: a config error, one line

CONFIG_ERRORS = {  # command: (argv, a text the line must hold)
    "train": (["train", "{root}/bad.yaml"], "model.backbone.nmae; did you mean model.backbone.name?"),
    "eval": (["eval", "{root}/bad.yaml", "--weights", "{root}/good.pt"], "model.backbone.nmae"),
    "predict": (["predict", "--weights", "{root}/good.pt", "{root}/ok.png", "--out", "{root}/p",
                 "--set", "model.roi_heads.nms_method=nope"], "model.roi_heads.nms_method must be"),
    "export": (["export", "--weights", "{root}/good.pt", "--out", "{root}/x.onnx", "--set",
                "model.roi_heads.nms_method=nope"], "model.roi_heads.nms_method must be"),
    "data": (["data", "{root}/bad.yaml", "--out", "{root}/d"], "model.backbone.nmae"),
    "analyze": (["analyze", "{root}/bad.yaml", "--weights", "{root}/good.pt", "--out", "{root}/a"], "model.backbone.nmae"),
    "model": (["model", "{root}/bad.yaml"], "model.backbone.nmae"),
    "datasets": (["datasets", "get", "no-such-set"], "unknown data set 'no-such-set'"),
}


@pytest.mark.parametrize("command", CONFIG_ERRORS)
def test_a_config_error_is_one_line_and_exit_2(command, files, capsys):
    argv, text = CONFIG_ERRORS[command]
    status, err = run([a.format(root=files) for a in argv], capsys)
    one_line_error(status, err, command, text)


def test_serve_with_a_config_error_exits_2_before_it_listens(files):
    # A subprocess with a timeout: a server that started anyway would never return.
    done = subprocess.run([sys.executable, "-m", "detector.cli", "serve", "--weights", str(files / "good.pt"),
                           "--port", "0", "--set", "model.roi_heads.nms_method=nope"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    err = done.stderr.strip().splitlines()
    one_line_error(done.returncode, err, "serve", "model.roi_heads.nms_method must be")


# ------------------------------------------------------------------ 3: a bug, one line + a traceback file

def bug(*args, **kwargs):
    raise ZeroDivisionError("injected bug")


INTERNAL_ERRORS = {  # command: (argv, (module, name) of a function it calls, patched to raise)
    "train": (["train", "{root}/good.yaml"], ("detector.engine.trainer", "Trainer")),
    "eval": (["eval", "{root}/good.yaml", "--weights", "{root}/good.pt"], ("detector", "load_config")),
    "predict": (["predict", "--weights", "{root}/good.pt", "{root}/ok.png", "--out", "{root}/p"],
                ("detector.inference", "load_predictor")),
    "export": (["export", "--weights", "{root}/good.pt", "--out", "{root}/x.onnx"], ("detector.export.onnx", "export_onnx")),
    "serve": (["serve", "--weights", "{root}/good.pt"], ("detector.serve", "run_server")),
    "data": (["data", "{root}/good.yaml", "--out", "{root}/d"], ("detector.analysis.data_report", "write_data_report")),
    "analyze": (["analyze", "--gt", "{root}/gt.json", "--predictions", "{root}/p.json", "--out", "{root}/a"],
                ("detector.analysis.analyze", "analyze_files")),
    "model": (["model", "{root}/good.yaml"], ("detector", "build_model")),
    "datasets": (["datasets"], ("detector.data.datasets", "status")),
}


@pytest.mark.parametrize("command", INTERNAL_ERRORS)
def test_a_bug_is_one_line_naming_the_traceback_file_and_exit_3(command, files, tmp_path, capsys, monkeypatch):
    import importlib
    import tempfile

    argv, (module, name) = INTERNAL_ERRORS[command]
    monkeypatch.setattr(importlib.import_module(module), name, bug)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the traceback file goes
    status, err = run([a.format(root=files) for a in argv], capsys)
    assert status == 3 and len(err) == 1, (status, err)
    assert err[0].startswith(f"detector {command}: internal error") and "ZeroDivisionError: injected bug" in err[0], err
    (written,) = tmp_path.glob(f"detector-{command}-*-traceback.txt")
    assert err[0].endswith(f"the traceback is in {written}")
    text = written.read_text()
    assert "Traceback (most recent call last)" in text and 'raise ZeroDivisionError("injected bug")' in text
    assert "exit_status.py" in text and f"detector {detector.__version__}, torch {torch.__version__}" in text


def test_a_bug_with_a_multi_line_message_stays_one_line(tmp_path, capsys, monkeypatch):
    import tempfile

    from detector import exit_status

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    status = exit_status.run("model", lambda: (_ for _ in ()).throw(RuntimeError("first line\nsecond line")))
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 3 and len(err) == 1 and "RuntimeError: first line ...;" in err[0]
    (written,) = tmp_path.glob("detector-model-*-traceback.txt")
    assert "second line" in written.read_text()


def test_an_interrupt_exits_130(capsys):
    from detector import exit_status

    def interrupted():
        raise KeyboardInterrupt

    assert exit_status.run("train", interrupted) == 130
    assert capsys.readouterr().err.strip() == "detector train: interrupted"


# ------------------------------------------------------------------ 2: a config nested 500 deep

@pytest.mark.parametrize("argv", [["train", "{root}/deep.yaml"], ["eval", "{root}/deep.yaml", "--weights", "{root}/good.pt"],
                                  ["data", "{root}/deep.yaml"], ["model", "{root}/deep.yaml"],
                                  ["analyze", "{root}/deep.yaml", "--weights", "{root}/good.pt"]],
                         ids=lambda argv: argv[0])
def test_a_config_nested_500_deep_is_one_line_naming_the_file_and_exit_2(argv, files, capsys):
    status, err = run([a.format(root=files) for a in argv], capsys)
    one_line_error(status, err, argv[0], f"{files / 'deep.yaml'}: nested too deeply")


def test_an_override_nested_500_deep_is_a_config_error(capsys):
    status, err = run(["model", "model.anchors.sizes=" + "[" * 500 + "]" * 500], capsys)
    one_line_error(status, err, "model", "override model.anchors.sizes: the value is nested too deeply")


# ------------------------------------------------------------------ 2: --out that cannot be written

@pytest.mark.parametrize("command", ["predict", "eval", "data", "analyze"])
@pytest.mark.parametrize("where", ["a file", "below a file"])
def test_an_out_that_is_a_file_is_one_line_naming_it_and_exit_2(command, where, files, capsys):
    out = files / "a_file" if where == "a file" else files / "a_file" / "sub"
    if command == "analyze":  # analyze's --gt/--predictions form: two tiny COCO files
        gt = {"images": [{"id": 1, "file_name": "ok.png", "width": 64, "height": 48}],
              "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [5, 5, 20, 20], "area": 400, "iscrowd": 0}],
              "categories": [{"id": 3, "name": "cat"}]}
        (files / "gt.json").write_text(json.dumps(gt))
        (files / "dets.json").write_text(json.dumps([{"image_id": 1, "category_id": 3, "bbox": [5, 5, 20, 20], "score": 0.9}]))
    argv = {"predict": ["predict", "--weights", files / "good.pt", files / "ok.png"],
            "eval": ["eval", files / "good.yaml", "--weights", files / "good.pt", "data.train=null"],
            "data": ["data", files / "good.yaml", "data.val=null"],
            "analyze": ["analyze", "--gt", files / "gt.json", "--predictions", files / "dets.json", "--images", files]}
    status, err = run(argv[command] + ["--out", out], capsys)
    one_line_error(status, err, command, f"{files / 'a_file'}")
    assert err[0].endswith(("is a file, not a folder", "a part of this path is a file, not a folder")), err
    assert (files / "a_file").read_text() == "a file, not a folder"  # untouched


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_out_folder_is_one_line_naming_it_and_exit_2(files, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        status, err = run(["predict", "--weights", files / "good.pt", files / "ok.png", "--out", locked / "out"], capsys)
    finally:
        locked.chmod(0o700)
    one_line_error(status, err, "predict", str(locked / "out"), "permission denied")


def test_describe_os_error_names_the_path_and_why(tmp_path):
    from detector import exit_status

    describe = exit_status.describe_os_error
    assert describe(FileExistsError(17, "File exists", str(tmp_path))) == f"{tmp_path}: file exists"
    (tmp_path / "f").write_text("")
    assert describe(FileExistsError(17, "File exists", str(tmp_path / "f"))) == f"{tmp_path / 'f'}: is a file, not a folder"
    assert describe(PermissionError(13, "Permission denied", "/x", None, "/y")) == "/x -> /y: permission denied"
    assert describe(OSError(98, "Address already in use")) == "[Errno 98] Address already in use"


# ------------------------------------------------------------------ train --nproc: the same codes

def test_nproc_with_a_config_error_exits_2_before_launching(files, capsys, monkeypatch):
    launched = []
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setattr(subprocess, "run",  # torchrun's status when a process fails
                        lambda command, **kwargs: launched.append(command) or subprocess.CompletedProcess(command, 1))
    status, err = run(["train", files / "bad.yaml", "--nproc", "2"], capsys)
    one_line_error(status, err, "train", "model.backbone.nmae")
    assert launched == []
    status, err = run(["train", files / "good.yaml", "--nproc", "2", "data.train=null"], capsys)
    one_line_error(status, err, "train", "data.train: no training data configured")


def write_statuses(folder: Path, *statuses):
    for rank, (status, when) in enumerate(statuses):
        (folder / f"rank{rank}").write_text(f"{status} {when!r}\n")


@pytest.mark.parametrize("torchrun, statuses, expected", [
    (0, [(0, 1.0), (0, 2.0)], 0),
    (0, [(0, 1.0), (1, 2.0)], 1),  # one process skipped images: done, some skipped
    (1, [(2, 1.0), (3, 2.0)], 2),  # the first failure is the cause; the other lost its peer
    (1, [(3, 1.0), (2, 2.0)], 3),
    (1, [(0, 1.0)], 3),  # one process died without a word (killed, out of memory)
    (1, [(130, 1.0)], 130),
], ids=["done", "skipped", "config-then-lost", "bug-then-config", "silent-death", "interrupted"])
def test_worker_statuses_map_onto_the_contract(torchrun, statuses, expected, tmp_path, capsys):
    from detector import exit_status

    write_statuses(tmp_path, *statuses)
    assert exit_status.from_workers(torchrun, tmp_path, 2) == expected
    err = capsys.readouterr().err
    assert (expected in (0, 1)) == (err == "")


def test_a_worker_reports_its_status_and_leaves_1_as_0_for_torchrun(tmp_path, monkeypatch):
    from detector import exit_status

    monkeypatch.setenv(exit_status.WORKER_STATUS_DIR, str(tmp_path))
    monkeypatch.setenv("RANK", "1")
    assert exit_status.run("train", lambda: 1) == 0  # torchrun would stop the others on a 1
    assert (tmp_path / "rank1").read_text().split()[0] == "1"
    assert exit_status.run("train", lambda: 2) == 2
    assert (tmp_path / "rank1").read_text().split()[0] == "2"


def test_a_process_that_fails_after_another_one_failed_writes_no_second_traceback(tmp_path, monkeypatch, capsys):
    """Its error is most often the lost connection to the process that failed first (whose own
    line and traceback file say why), so it only says that it stopped after it."""
    from detector import exit_status

    monkeypatch.setenv(exit_status.WORKER_STATUS_DIR, str(tmp_path / "statuses"))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # TMPDIR read afresh
    (tmp_path / "statuses").mkdir()
    (tmp_path / "statuses" / "rank1").write_text("3 1.0\n")
    monkeypatch.setenv("RANK", "0")

    def lost_peer():
        raise RuntimeError("Connection closed by peer")

    assert exit_status.run("train", lost_peer) == 3
    assert capsys.readouterr().err.strip() == "detector train: stopped after process 1 failed (RuntimeError)"
    assert not list(tmp_path.glob("detector-train-*-traceback.txt"))
    (tmp_path / "statuses" / "rank1").write_text("1 1.0\n")  # it only skipped inputs: this error is our own
    assert exit_status.run("train", lost_peer) == 3
    assert len(list(tmp_path.glob("detector-train-*-traceback.txt"))) == 1


def launch(files, tmp_path, *argv, env=None):
    return subprocess.run([sys.executable, "-m", "detector.cli", "train", str(files / "good.yaml"),
                           f"output={tmp_path / 'run'}", "--nproc", "2", *argv],
                          env={**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path), **(env or {})},
                          capture_output=True, text=True, cwd=REPO, timeout=600)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_nproc_2_a_checkpoint_error_in_the_processes_exits_2(files, tmp_path):
    # Not checked before launching: each process fails on --resume and exits 2; torchrun says 1.
    done = launch(files, tmp_path, "--resume", str(tmp_path / "missing.pt"))
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"detector train: checkpoint not found: {tmp_path / 'missing.pt'}" in done.stderr
    assert "failed first, status 2" in done.stderr.strip().splitlines()[-1]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_nproc_2_a_bug_in_one_process_exits_3_with_its_traceback_file(files, tmp_path):
    # sitecustomize (on PYTHONPATH) breaks rank 1's Trainer.fit: a bug in one process only.
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('RANK') == '1':\n"
        "    import detector.engine.trainer\n"
        "    def fit(self):\n"
        "        raise ZeroDivisionError('injected into rank 1')\n"
        "    detector.engine.trainer.Trainer.fit = fit\n")
    python_path = os.pathsep.join([str(hook), str(REPO), os.environ.get("PYTHONPATH", "")])
    done = launch(files, tmp_path, env={"PYTHONPATH": python_path})
    assert done.returncode == 3, done.stderr[-3000:]
    assert "ZeroDivisionError: injected into rank 1" in done.stderr
    assert "process 1 of 2 failed first, status 3" in done.stderr
    (written,) = tmp_path.glob("detector-train-*-traceback.txt")
    assert "injected into rank 1" in written.read_text()


# ------------------------------------------------------------------ 1: done, some inputs skipped and named

def test_train_that_skipped_an_image_exits_1_and_says_where_it_is_named(tmp_path, capsys):
    config = load_config(None, TINY + [f"data.train={SYNTHETIC % (tmp_path / 'synthetic', 'train')}", "data.val=null",
                                       "data.workers=0", "train.epochs=1", "train.batch_size=2", f"output={tmp_path / 'run'}"])
    broken = load_dataset(config.data.train).records[0].path  # draws the synthetic images
    broken.write_bytes(b"")
    save_config(config, tmp_path / "config.yaml")
    status, err = run(["train", tmp_path / "config.yaml"], capsys)
    assert status == 1 and err[-1] == f"1 image(s) skipped, each named in {tmp_path / 'run' / 'train.log'}", err
    assert f"{broken}" in (tmp_path / "run" / "train.log").read_text()
