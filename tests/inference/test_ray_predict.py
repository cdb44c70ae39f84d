"""`detector predict --ray` for real, on a local Ray runtime (`ray.init(num_cpus=2)`, one per
module): a run over real photos and bad files, killed with SIGKILL half-way in a process of its
own and rerun, loses and repeats no image and ends with the detections and skips local predict
gives; bad input (no Ray, an address that does not answer, options that need --ray) is one
line and exit 2.
The store's crash windows one by one, without Ray: tests/inference/test_jsonl.py."""
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data

from detector.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "export"))  # the export tests' model and parity rule
from export_helpers import make_checkpoint, unmatched  # noqa: E402

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
# Small images keep the module within its time budget; the model is the export tests' Lite0.
SIZE = ["model.transform.min_size=128", "model.transform.max_size=192"]
REASONS = {
    "cut.jpg": "cannot read the image (truncated: the JPEG data stops before its end-of-image marker)",
    "empty.jpg": "cannot read the image (empty file)",
    "notes.jpg": "cannot read the image (not an image: no image decoder recognizes its content)",
    "strip.png": "1x2000 px (height x width) would resize to 0x192 px (short side 128, long side at most 192); every "
                 "side must keep at least 1 px (an aspect ratio of at most about 192:1)",
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A checkpoint, and a folder of real photos with four bad files among them."""
    root = tmp_path_factory.mktemp("ray_predict")
    make_checkpoint(root / "model.pt", SIZE, no_detection_on_black=False)
    photos = root / "photos"
    photos.mkdir()
    for name in PHOTOS:
        cv2.imwrite(str(photos / f"{name}.jpg"), getattr(skimage.data, name)()[:, :, ::-1])
    coffee = (photos / "coffee.jpg").read_bytes()
    (photos / "cut.jpg").write_bytes(coffee[:len(coffee) // 2])
    (photos / "empty.jpg").write_bytes(b"")
    (photos / "notes.jpg").write_text("not an image")
    cv2.imwrite(str(photos / "strip.png"), np.full((1, 2000, 3), 128, np.uint8))
    return root


@pytest.fixture(scope="module")
def cluster():
    """The address of a Ray runtime started in this process for the module."""
    ray = pytest.importorskip("ray", reason="Ray is the optional extra detector[ray]")
    pytest.importorskip("ray.data", reason="Ray Data is part of the optional extra detector[ray]")
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def run(capfd, *arguments):
    """Exit code, the `detector predict:` lines of stderr (Ray adds its own) and stdout."""
    code = main(["predict", *map(str, arguments), "--device", "cpu"])
    captured = capfd.readouterr()
    return code, [line for line in captured.err.splitlines() if line.startswith("detector predict:")], captured.out


def shard_records(out: Path) -> list[dict]:
    return [json.loads(line) for shard in sorted((out / "shards").glob("part-*.jsonl"))
            for line in shard.read_text().splitlines()]


def as_arrays(detections: list[dict]) -> dict:
    return {"boxes": np.array([d["bbox_xyxy"] for d in detections]).reshape(-1, 4),
            "scores": np.array([d["score"] for d in detections]), "labels": np.array([d["category_id"] for d in detections])}


def killed_half_way(arguments: list, out: Path, log: Path) -> dict[str, bytes]:
    """Run `detector predict *arguments` in a process of its own and SIGKILL it (as the OOM
    killer or a lost node would) once two shards are in the manifest; the shards it left."""
    with open(log, "wb") as output:
        process = subprocess.Popen([sys.executable, "-m", "detector.cli", "predict", *map(str, arguments),
                                    "--device", "cpu"], stdout=output, stderr=output, start_new_session=True)
    # Generous: on a 2-core machine loaded by other jobs, 120 s once saw only one shard.
    started, two_shards = time.monotonic(), False
    try:
        while time.monotonic() < started + 400 and process.poll() is None:
            manifest = out / "manifest.jsonl"
            if manifest.is_file() and manifest.read_text().count('{"shard"') >= 2:
                two_shards = True
                break
            time.sleep(0.02)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the driver and anything it started in its session
        process.wait()
    assert process.returncode == -signal.SIGKILL, log.read_text()[-2000:]
    assert two_shards, f"not 2 shards in {time.monotonic() - started:.0f} s: {log.read_text()[-2000:]}"
    return {shard.name: shard.read_bytes() for shard in (out / "shards").glob("part-*.jsonl")}


def test_a_run_killed_half_way_resumes_to_what_local_predict_gives(files, cluster, capfd):
    """Real photos and bad files; batches of 2, a shard per record; kill -9 of the run's own
    process, then the same command with --merge (and 2 workers): each file once, none lost,
    the finished shards untouched, and the detections and skips of local predict."""
    sources = [files / "photos", files / "missing.jpg"]
    out = files / "ray"
    arguments = [*sources, "--weights", files / "model.pt", "--out", out, "--ray", cluster,
                 "--batch-size", 2, "--shard-size", 1]
    total = len(PHOTOS) + len(REASONS) + 1
    before = killed_half_way(arguments, out, files / "killed.log")
    assert 2 <= len(before) < total, f"{len(before)} of {total} sources done when killed: no resume to test"

    code, err, out_text = run(capfd, *arguments, "--merge", "--workers", 2)
    local_code, local_err, _ = run(capfd, *sources, "--weights", files / "model.pt", "--out", files / "local")
    assert code == local_code == 1
    assert f"predicted {len(PHOTOS)} of {total} sources ({len(before)} by an earlier run); 5 skipped" in out_text
    assert set(err) <= set(local_err) == {f"detector predict: skipped {files / 'missing.jpg'}: no such file or folder"} | {
        f"detector predict: skipped {files / 'photos' / name}: {reason}" for name, reason in REASONS.items()}
    assert (out / "skipped.txt").read_text().splitlines() == sorted((files / "local" / "skipped.txt").read_text().splitlines())
    assert all((out / "shards" / name).read_bytes() == data for name, data in before.items())  # kept as they were
    records = shard_records(out)
    assert sorted(r["file"] for r in records) == sorted(  # each once: none lost, none twice
        [str(files / "missing.jpg")] + [str(p) for p in (files / "photos").iterdir()])

    local = {p["file"]: p["detections"] for p in json.loads((files / "local" / "predictions.json").read_text())["predictions"]}
    predicted = {r["file"]: r["detections"] for r in records if "detections" in r}
    assert sorted(predicted) == sorted(local) and sum(len(d) for d in predicted.values()) > 10
    for file, detections in predicted.items():  # batches of 2 on 1 thread vs one by one: parity, not bits
        ours, theirs = as_arrays(detections), as_arrays(local[file])
        assert not unmatched(ours, theirs, min_score=0.051) and not unmatched(theirs, ours, min_score=0.051), file

    merged = json.loads((out / "predictions.json").read_text())
    assert [image["file_name"] for image in merged["images"]] == sorted(local)
    assert [(image["height"], image["width"]) for image in merged["images"]] == [
        cv2.imread(name).shape[:2] for name in sorted(local)]
    assert len(merged["annotations"]) == sum(len(d) for d in predicted.values())
    assert {c["id"] for c in merged["categories"]} == {1, 2, 3, 4}


def test_without_ray_installed_one_line_names_the_extra(files, capfd, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as when it is not installed
    code, err, _ = run(capfd, files / "photos", "--weights", files / "model.pt", "--out", files / "no-ray", "--ray")
    assert code == 2 and err == ["detector predict: detector predict --ray needs the Python package 'ray': "
                                 'pip install "detector[ray]"']
    assert not (files / "no-ray").exists()


def test_an_address_that_does_not_answer_is_one_line_and_exit_2_within_the_timeout(files, capfd, monkeypatch):
    pytest.importorskip("ray.data", reason="Ray is the optional extra detector[ray]")
    from detector.inference import ray_predict

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{probe.getsockname()[1]}"
    code, err, _ = run(capfd, files / "photos", "--weights", files / "model.pt", "--out", files / "nowhere", "--ray", closed)
    assert code == 2 and err == [f"detector predict: --ray {closed}: cannot reach the Ray cluster within 10 s "
                                 "(connection refused)"]
    monkeypatch.setattr(ray_predict, "CONNECT_TIMEOUT_S", 0.5)
    with socket.socket() as silent:  # takes connections and says nothing: ray.init would wait for minutes
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        code, err, _ = run(capfd, files / "photos", "--weights", files / "model.pt", "--out", files / "nowhere",
                           "--ray", address)
    assert code == 2 and err == [f"detector predict: --ray {address}: cannot reach the Ray cluster within 0.5 s "
                                 "(no answer)"]
    assert time.monotonic() - started < 3 and not (files / "nowhere").exists()


@pytest.mark.parametrize("options, message", [
    (["--workers", "2"], "--workers: only with --ray"),
    (["--merge", "--shard-size", "5"], "--shard-size, --merge: only with --ray"),
    (["--ray", "--strict"], "--strict: a --ray run skips and names bad files (skipped.txt); run without --ray to stop "
                            "at the first one"),
    (["--ray", "--workers", "0"], "--workers must be >= 1, got 0"),
])
def test_options_that_need_ray_or_do_not_fit_it_are_one_line(files, capfd, options, message):
    code, err, _ = run(capfd, files / "photos", "--weights", files / "model.pt", "--out", files / "misused", *options)
    assert code == 2 and err == [f"detector predict: {message}"]
    assert not (files / "misused").exists()


def test_weights_that_cannot_load_stop_the_run_in_one_line_before_ray_starts(files, capfd):
    pytest.importorskip("ray.data", reason="Ray is the optional extra detector[ray]")
    code, err, _ = run(capfd, files / "photos", "--weights", files / "missing.pt", "--out", files / "unweighted",
                       "--ray", "--workers", 2)
    assert code == 2 and err == [f"detector predict: checkpoint not found: {files / 'missing.pt'}"]
    assert not (files / "unweighted").exists()
