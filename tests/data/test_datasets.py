"""`detector datasets`: install from a local copy or a download, verified, atomically; recipes
find the installed data; a missing set is an error naming the command that gets it.

The download path runs against a real HTTP server on 127.0.0.1 serving an archive laid out
as the raccoon_dataset repository: its real label CSVs (tests/data/real/raccoon/original) and
plain images at the sizes they give. The converted annotation files must have the SHA-256
recorded in the registry for the real data set; the stand-in images get a manifest of their
own (`pin_manifest`), as the real photos are not in the clone. Hostile archives:
test_dataset_install_safety.py."""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import http.server
import json
import threading
import zipfile
from pathlib import Path

import pytest
from data_helpers import REAL_DATA, write_blank_images, write_image

from detector.cli import main
from detector.config import load_config
from detector.config_checks import check_data_paths
from detector.data import datasets
from detector.data.converters import convert_bccd, convert_raccoon
from detector.data.download import sha256_of
from detector.errors import ConfigError, DatasetError, DownloadError

REPO = Path(__file__).resolve().parents[2]
RACCOON = REAL_DATA / "raccoon"


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("DETECTOR_DATA", str(home))
    return home


@pytest.fixture(scope="module")
def raccoon_copy(tmp_path_factory) -> Path:
    """A local copy in the installed layout: the real annotation files and LICENSE, plain images."""
    folder = tmp_path_factory.mktemp("raccoon_copy")
    for name in ("coco_train.json", "coco_val.json", "LICENSE"):
        (folder / name).write_bytes((RACCOON / name).read_bytes())
        if name.endswith(".json"):
            write_blank_images(folder / name, folder)
    return folder


def pin_manifest(monkeypatch, folder: Path, manifest: Path) -> None:
    """Record the files of `folder` (the expected installed layout, stand-in images included)
    as raccoon's manifest in the registry, for this test."""
    lines = [f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.relative_to(folder).as_posix()}"
             for path in sorted(folder.rglob("*")) if path.is_file() and path.name != "installed.json"]
    manifest.write_text("\n".join(lines) + "\n")
    monkeypatch.setitem(datasets.REGISTRY, "raccoon", dataclasses.replace(datasets.REGISTRY["raccoon"], manifest=manifest))


@pytest.fixture
def copy_manifest(monkeypatch, raccoon_copy, tmp_path):
    pin_manifest(monkeypatch, raccoon_copy, tmp_path / "raccoon.sha256")


def leftovers(home: Path) -> list[str]:
    return sorted(p.name for p in home.iterdir()) if home.exists() else []


def test_the_committed_real_annotations_are_the_registered_ones():
    for name, expected in datasets.REGISTRY["raccoon"].annotations.items():
        assert sha256_of(RACCOON / name) == expected


def test_get_from_a_local_copy_installs_and_the_recipe_finds_it(home, raccoon_copy, copy_manifest):
    config = load_config(str(REPO / "configs" / "raccoon.yaml"))
    with pytest.raises(ConfigError, match=r"data.train.annotations: .*data set 'raccoon' is not installed in "
                                          r".*home/raccoon; get it with `detector datasets get raccoon`"):
        check_data_paths(config.data)

    (home / ".raccoon.x1y2.partial" / "images").mkdir(parents=True)  # what a killed install leaves
    folder = datasets.get_dataset("raccoon", raccoon_copy, log=lambda line: None)
    assert folder == home / "raccoon" and datasets.is_installed("raccoon")
    assert leftovers(home) == ["raccoon"]  # no staging folder left, neither this one's nor the killed one's
    assert sorted(p.name for p in folder.iterdir()) == ["LICENSE", "coco_train.json", "coco_val.json", "images", "installed.json"]
    assert len(list((folder / "images").iterdir())) == 200
    manifest = json.loads((folder / "installed.json").read_text())
    assert manifest["from"] == str(raccoon_copy) and manifest["archive_sha256"] is None
    check_data_paths(config.data)  # the recipe's paths now resolve
    assert datasets.resolve_data_path(config.data.train.annotations) == folder / "coco_train.json"


def test_a_modified_local_copy_is_refused_and_nothing_is_installed(home, raccoon_copy, tmp_path):
    modified = tmp_path / "modified"
    modified.mkdir()
    for name in ("coco_val.json", "LICENSE"):
        (modified / name).write_bytes((raccoon_copy / name).read_bytes())
    data = json.loads((raccoon_copy / "coco_train.json").read_text())
    data["annotations"][0]["bbox"][0] += 1.0  # one box moved by a pixel
    (modified / "coco_train.json").write_text(json.dumps(data))
    expected = datasets.REGISTRY["raccoon"].annotations["coco_train.json"]
    with pytest.raises(DatasetError, match=rf"modified/coco_train.json: SHA-256 [0-9a-f]{{64}} is not the recorded {expected}"):
        datasets.get_dataset("raccoon", modified, log=lambda line: None)
    assert leftovers(home) == []


def test_a_missing_or_mis_sized_image_is_named(home, raccoon_copy, copy_manifest, tmp_path):
    broken = tmp_path / "broken"
    for path in raccoon_copy.rglob("*"):
        if path.is_file():
            (broken / path.relative_to(raccoon_copy)).parent.mkdir(parents=True, exist_ok=True)
            (broken / path.relative_to(raccoon_copy)).write_bytes(path.read_bytes())
    (broken / "images" / "raccoon-1.jpg").unlink()
    with pytest.raises(DatasetError, match=r"images/raccoon-1.jpg \(named in coco_train.json\) not found"):
        datasets.get_dataset("raccoon", broken, log=lambda line: None)
    write_image(broken / "images" / "raccoon-1.jpg", 100, 80)  # the JSON says 512x328
    with pytest.raises(DatasetError, match=r"raccoon-1.jpg: 100x80, annotated 512x328"):
        datasets.get_dataset("raccoon", broken, log=lambda line: None)
    assert leftovers(home) == []


# ---------------------------------------------------------------- the download path


@pytest.fixture(scope="module")
def raccoon_archive(tmp_path_factory) -> bytes:
    """A zip laid out as GitHub's archive of raccoon_dataset: one top folder holding
    data/{train,test}_labels.csv (the real ones), images/ (plain, at the CSV's sizes), LICENSE."""
    folder = tmp_path_factory.mktemp("archive")
    top = folder / "raccoon_dataset-f4d1464a5982e1d40d9dfd0dff2eaaff1451c0c8"
    sizes = {}
    for name in ("train_labels.csv", "test_labels.csv"):
        text = (RACCOON / "original" / name).read_text()
        (top / "data").mkdir(parents=True, exist_ok=True)
        (top / "data" / name).write_text(text)
        for row in csv.DictReader(text.splitlines()):
            sizes[row["filename"]] = (int(row["width"]), int(row["height"]))
    for name, (width, height) in sizes.items():
        write_image(top / "images" / name, width, height)
    (top / "LICENSE").write_bytes((RACCOON / "LICENSE").read_bytes())
    archive = folder / "archive.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted(top.rglob("*")):
            zipped.write(path, path.relative_to(folder))
    return archive.read_bytes()


@pytest.fixture
def server(raccoon_archive):
    """An HTTP server on 127.0.0.1: /archive.zip whole, /cut.zip announcing every byte but
    sending half, anything else 404."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path not in ("/archive.zip", "/cut.zip"):
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(raccoon_archive)))
            self.end_headers()
            body = raccoon_archive if self.path == "/archive.zip" else raccoon_archive[: len(raccoon_archive) // 2]
            self.wfile.write(body)
            self.close_connection = True

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def with_archive_sha256(monkeypatch, sha256: str | None):
    source = dataclasses.replace(datasets.REGISTRY["raccoon"], archive_sha256=sha256)
    monkeypatch.setitem(datasets.REGISTRY, "raccoon", source)


def test_download_converts_the_real_labels_to_the_recorded_annotations(home, server, raccoon_archive, monkeypatch,
                                                                      tmp_path):
    archive_sha256 = hashlib.sha256(raccoon_archive).hexdigest()
    with_archive_sha256(monkeypatch, archive_sha256)
    # the manifest of the stand-in images: this archive converted once, on the side
    (tmp_path / "archive.zip").write_bytes(raccoon_archive)
    with zipfile.ZipFile(tmp_path / "archive.zip") as zipped:
        zipped.extractall(tmp_path / "extracted")
    (top,) = (tmp_path / "extracted").iterdir()
    convert_raccoon(top, tmp_path / "converted")
    pin_manifest(monkeypatch, tmp_path / "converted", tmp_path / "raccoon.sha256")
    lines = []
    folder = datasets.get_dataset("raccoon", url=f"{server}/archive.zip", log=lines.append)
    # verify() inside get_dataset checked the recorded annotation checksums and every image size
    for name, expected in datasets.REGISTRY["raccoon"].annotations.items():
        assert sha256_of(folder / name) == expected
    assert (folder / "LICENSE").read_bytes() == (RACCOON / "LICENSE").read_bytes()
    manifest = json.loads((folder / "installed.json").read_text())
    assert manifest["archive_sha256"] == archive_sha256 and manifest["archive_sha256_checked"] is True
    assert f"archive SHA-256 {archive_sha256} (matches the recorded checksum)" in lines
    assert leftovers(home) == ["raccoon"]  # neither the archive nor the extracted folder is left


def test_a_corrupt_download_is_refused_and_not_kept(home, server, monkeypatch):
    with_archive_sha256(monkeypatch, "0" * 64)
    with pytest.raises(DownloadError, match=r"archive.zip: SHA-256 of the [\d,]+ bytes downloaded is [0-9a-f]{64}, "
                                            r"not the recorded 0{64}; .* was not kept"):
        datasets.get_dataset("raccoon", url=f"{server}/archive.zip", log=lambda line: None)
    assert leftovers(home) == []


def test_a_partial_download_or_an_http_error_is_refused_and_not_kept(home, server, raccoon_archive, monkeypatch):
    with_archive_sha256(monkeypatch, None)
    with pytest.raises(DownloadError, match=rf"cut.zip: download stopped after [\d,]+ of {len(raccoon_archive):,} bytes"):
        datasets.get_dataset("raccoon", url=f"{server}/cut.zip", log=lambda line: None)
    assert leftovers(home) == []
    with pytest.raises(DownloadError, match=r"missing.zip: HTTP 404"):
        datasets.get_dataset("raccoon", url=f"{server}/missing.zip", log=lambda line: None)
    assert leftovers(home) == []


def test_bccd_conversion_of_a_real_annotation_file(tmp_path):
    """BloodImage_00171.xml (BCCD_Dataset at the pinned commit) converts to the boxes of the
    installed bccd coco_test.json: 640x480 scaled by 0.8, [x, y, w, h] rounded to 2 decimals."""
    root = tmp_path / "BCCD_Dataset" / "BCCD"
    (root / "Annotations").mkdir(parents=True)
    (root / "Annotations" / "BloodImage_00171.xml").write_text((REAL_DATA / "bccd" / "original" / "BloodImage_00171.xml").read_text())
    write_image(root / "JPEGImages" / "BloodImage_00171.jpg", 640, 480)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("")
    (root / "ImageSets" / "Main" / "test.txt").write_text("BloodImage_00171\n")
    (root.parent / "LICENSE").write_text("MIT")
    out = tmp_path / "out"
    convert_bccd(root.parent, out)
    data = json.loads((out / "coco_test.json").read_text())
    assert data["images"] == [{"id": 1, "file_name": "BCCD/JPEGImages/BloodImage_00171.jpg", "width": 512, "height": 384}]
    # the 13 RBC boxes of BloodImage_00171 in the installed coco_test.json, in order
    assert [a["bbox"] for a in data["annotations"]] == [
        [12.8, 156.0, 82.4, 86.4], [60.0, 240.0, 102.4, 89.6], [412.8, 86.4, 88.0, 84.0], [298.4, 84.0, 76.8, 96.0],
        [136.8, 164.0, 100.0, 87.2], [306.4, 248.0, 76.8, 96.0], [223.2, 249.6, 79.2, 104.0], [357.6, 0.8, 84.0, 72.0],
        [160.0, 328.8, 70.4, 55.2], [284.0, 0.8, 79.2, 66.4], [6.4, 0.8, 92.0, 51.2], [464.0, 185.6, 48.0, 79.2],
        [0.8, 306.4, 65.6, 77.6]]
    assert {a["category_id"] for a in data["annotations"]} == {1}
    assert (out / "BCCD" / "JPEGImages" / "BloodImage_00171.jpg").is_file()


# ---------------------------------------------------------------- the command


def test_the_command_lists_installs_and_names_errors_in_one_line(home, raccoon_copy, copy_manifest, capsys):
    assert main(["datasets"]) == 0
    listing = capsys.readouterr().out
    assert f"data sets in {home}" in listing
    assert "raccoon    not installed (detector datasets get raccoon)" in listing
    assert "bccd       not installed (detector datasets get bccd)" in listing
    assert "https://github.com/datitran/raccoon_dataset/archive/f4d1464a5982e1d40d9dfd0dff2eaaff1451c0c8.zip" in listing

    assert main(["datasets", "get", "raccoon", "--from", str(raccoon_copy)]) == 0
    assert f"installed raccoon in {home / 'raccoon'}" in capsys.readouterr().out
    assert main(["datasets", "get", "raccoon", "--from", str(raccoon_copy)]) == 0
    assert "raccoon is already installed" in capsys.readouterr().out
    assert main(["datasets"]) == 0
    assert "raccoon    installed" in capsys.readouterr().out

    assert main(["datasets", "get", "coco"]) == 2
    assert capsys.readouterr().err == "detector datasets: unknown data set 'coco'; known: raccoon, bccd\n"
