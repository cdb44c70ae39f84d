"""`detector datasets get` against hostile archives, served by a real HTTP server on 127.0.0.1:
a CSV naming a file outside the folder, a zip bomb, a symbolic link, a member named '../x',
too many members, and converted files that differ from the manifest. Each is refused with
exit 2 and one line, and nothing is written anywhere: not in the data home, not beside it."""
from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import stat
import threading
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from data_helpers import REAL_DATA

from detector.cli import main
from detector.data import datasets
from detector.data.converters import convert_raccoon

TOP = "raccoon_dataset-f4d1464a5982e1d40d9dfd0dff2eaaff1451c0c8"
CSV_HEADER = "filename,width,height,class,xmin,ymin,xmax,ymax\n"


def jpeg(width: int, height: int, value: int = 90) -> bytes:
    return cv2.imencode(".jpg", np.full((height, width, 3), value, np.uint8))[1].tobytes()


def raccoon_members(train_name: str = "raccoon-1.jpg", image_value: int = 90) -> dict[str, bytes]:
    """A small archive laid out as raccoon_dataset's: two CSVs, two images, LICENSE."""
    return {
        f"{TOP}/data/train_labels.csv": (CSV_HEADER + f"{train_name},64,48,raccoon,2,3,40,30\n").encode(),
        f"{TOP}/data/test_labels.csv": (CSV_HEADER + "raccoon-2.jpg,64,48,raccoon,5,5,20,20\n").encode(),
        f"{TOP}/images/raccoon-1.jpg": jpeg(64, 48, image_value),
        f"{TOP}/images/raccoon-2.jpg": jpeg(64, 48),
        f"{TOP}/LICENSE": b"MIT",
    }


def zipped(members: dict[str, bytes], links: dict[str, str] = {}) -> bytes:  # noqa: B006 - read only
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
        for name, target in links.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return buffer.getvalue()


@pytest.fixture
def serve_archive():
    """`serve_archive(bytes)` -> the URL of a real HTTP server on 127.0.0.1 that sends it."""
    servers = []

    def start(body: bytes) -> str:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}/archive.zip"

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """The data home inside a folder of its own; everything in that folder is watched."""
    home = tmp_path / "outer" / "home"
    monkeypatch.setenv("DETECTOR_DATA", str(home))
    return tmp_path / "outer"


def every_file(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def point_raccoon_at(monkeypatch, url: str, **changes) -> None:
    source = dataclasses.replace(datasets.REGISTRY["raccoon"], url=url, **changes)
    monkeypatch.setitem(datasets.REGISTRY, "raccoon", source)


def refused(capsys, sandbox: Path) -> str:
    """Run `detector datasets get raccoon`: it must exit 2 with one line and leave nothing."""
    assert main(["datasets", "get", "raccoon"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("detector datasets: "), err
    assert every_file(sandbox) == ["home"]  # the (empty) data home, nothing else, nothing beside it
    return err


def test_a_csv_naming_a_file_outside_the_folder_is_refused(sandbox, serve_archive, monkeypatch, capsys):
    """The issue's probe: a name that, read from images/ of the archive, finds a real image, and,
    written to images/ of the install, lands two folders above it, outside the data home."""
    escaping = f"../../../archive/{TOP}/images/raccoon-1.jpg"
    point_raccoon_at(monkeypatch, serve_archive(zipped(raccoon_members(train_name=escaping))))
    err = refused(capsys, sandbox)  # before, the image was written to outer/archive/... and left there
    assert f"data/train_labels.csv: line 2: file name {escaping!r} leaves" in err and "refused" in err


def test_a_member_leaving_the_archive_folder_or_a_symlink_is_refused(sandbox, serve_archive, monkeypatch, capsys):
    point_raccoon_at(monkeypatch, serve_archive(zipped({**raccoon_members(), "../../escaped.txt": b"x"})))
    assert "archive member '../../escaped.txt': file name '../../escaped.txt' leaves" in refused(capsys, sandbox)
    point_raccoon_at(monkeypatch, serve_archive(zipped(raccoon_members(), links={f"{TOP}/images/raccoon-3.jpg": "/etc/passwd"})))
    assert f"archive member '{TOP}/images/raccoon-3.jpg' is a symbolic link; refused" in refused(capsys, sandbox)


def test_a_zip_bomb_and_too_many_members_are_refused_before_extraction(sandbox, serve_archive, monkeypatch, capsys):
    bomb = zipped({**raccoon_members(), f"{TOP}/data/zeros.bin": bytes(64 * 2**20)})  # 64 MB in about 64 KB
    point_raccoon_at(monkeypatch, serve_archive(bomb))
    err = refused(capsys, sandbox)
    assert f"archive member '{TOP}/data/zeros.bin' expands" in err and "more than 100:1 (a zip bomb?); refused" in err
    point_raccoon_at(monkeypatch, serve_archive(zipped(raccoon_members())), max_archive_bytes=1000)
    assert "the archive expands to" in refused(capsys, sandbox)
    point_raccoon_at(monkeypatch, serve_archive(zipped(raccoon_members())), max_archive_members=3)
    assert "the archive holds 5 members, more than the limit of 3" in refused(capsys, sandbox)


def test_a_converted_file_that_differs_from_the_manifest_is_refused(sandbox, serve_archive, monkeypatch, capsys,
                                                                    tmp_path):
    """The manifest pins every converted byte: an archive whose image differs by a shade is refused."""
    clean = tmp_path / "clean"
    for name, content in raccoon_members().items():
        (clean / name).parent.mkdir(parents=True, exist_ok=True)
        (clean / name).write_bytes(content)
    convert_raccoon(clean / TOP, tmp_path / "converted")
    manifest = tmp_path / "small.sha256"
    manifest.write_text("".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(tmp_path / 'converted').as_posix()}\n"
                                for p in sorted((tmp_path / "converted").rglob("*")) if p.is_file()))
    pinned = {"manifest": manifest, "annotations": {}}  # the small CSVs are not the real annotation files
    point_raccoon_at(monkeypatch, serve_archive(zipped(raccoon_members(image_value=91))), **pinned)
    err = refused(capsys, sandbox)
    assert "raccoon: 1 problem(s): images/raccoon-1.jpg: SHA-256" in err and "(small.sha256)" in err
    point_raccoon_at(monkeypatch, serve_archive(zipped(raccoon_members())), **pinned)
    assert main(["datasets", "get", "raccoon"]) == 0  # the same archive, untouched: installed
    assert "every file's SHA-256 verified against small.sha256" in capsys.readouterr().out


def test_the_recorded_manifests_hold_the_real_files():
    """The manifests agree with the recorded annotation checksums and with the real photos
    committed under tests/data/real (copies of installed files)."""
    for name, source in datasets.REGISTRY.items():
        files = source.files_sha256()
        assert {key: files[key] for key in source.annotations} == source.annotations
        assert "LICENSE" in files and len(files) == {"raccoon": 203, "bccd": 367}[name]
    committed = {"raccoon": REAL_DATA / "raccoon", "bccd": REAL_DATA / "bccd"}
    for name, root in committed.items():
        files = datasets.REGISTRY[name].files_sha256()
        photos = [p for p in root.rglob("*.jpg") if "original" not in p.parts]
        assert photos
        for path in photos:
            assert files[path.relative_to(root).as_posix()] == hashlib.sha256(path.read_bytes()).hexdigest(), path
