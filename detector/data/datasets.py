"""The real data sets the recipes train on: where they come from, where they are installed,
and how an installation is checked.

    detector datasets                       # known sets, installed or not, and where
    detector datasets get raccoon           # download the pinned archive, convert, verify, install
    detector datasets get raccoon --from ../shared/data/raccoon   # install from a local copy

Sets are installed under `$DETECTOR_DATA` (default ~/.cache/detector/datasets), one folder per
set, and recipes name their files as `${DETECTOR_DATA}/raccoon/coco_train.json`
(`resolve_data_path`). An installation is built in a temporary folder, verified, then renamed
into place, so a folder with its `installed.json` is always complete, and a refused one leaves
nothing behind.

What is trusted: nothing from the download but the bytes the manifest pins. The archive is
unpacked by archives.py (members inside the folder, no symlinks, size, count and ratio capped),
every file name its CSV or listing gives is resolved and refused if it leaves its folder
(paths.contained_path), and the installed folder must match the set's manifest
(manifests/NAME.sha256, `sha256sum -c` format): exactly those files, each with its SHA-256,
images and annotations alike. The archive's own hash is not pinned: GitHub's zips of a commit
are not byte-stable; the converted files are.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from detector.data.archives import extract_zip
from detector.data.converters import convert_bccd, convert_raccoon
from detector.data.download import download, sha256_of
from detector.data.paths import contained_path
from detector.data.records import image_size
from detector.errors import DataError, DatasetError

DEFAULT_HOME = "~/.cache/detector/datasets"
HOME_VARIABLE = "DETECTOR_DATA"
MANIFEST = "installed.json"
MANIFESTS = Path(__file__).resolve().parent / "manifests"


@dataclass(frozen=True)
class DatasetSource:
    """One known data set: its pinned public source and the checksums of its installed files."""

    name: str
    description: str
    license: str
    url: str  # an archive of a pinned commit of the original repository
    archive_sha256: str | None  # None: not recorded yet (printed at download, not checked)
    annotations: dict[str, str]  # installed annotation file -> SHA-256
    convert: Callable[[Path, Path], None]  # extracted archive folder -> installed layout
    manifest: Path  # every installed file -> SHA-256 (`sha256sum` format), images included
    max_archive_bytes: int = 256 * 2**20  # what the archive may expand to (the real ones are far smaller)
    max_archive_members: int = 10_000

    def files_sha256(self) -> dict[str, str]:
        """The manifest: installed file (relative, '/'-separated) -> SHA-256."""
        files = {}
        for number, line in enumerate(self.manifest.read_text().splitlines(), start=1):
            digest, separator, name = line.partition("  ")
            if not separator or len(digest) != 64:
                raise DatasetError(f"{self.manifest}: line {number}: expected 'SHA256  FILE', got {line!r}")
            files[name] = digest
        return files


REGISTRY: dict[str, DatasetSource] = {
    source.name: source
    for source in (
        DatasetSource(
            name="raccoon",
            description="raccoons in photos, 1 class; 160 train / 40 val images, 217 boxes",
            license="MIT (Dat Tran)",
            url="https://github.com/datitran/raccoon_dataset/archive/f4d1464a5982e1d40d9dfd0dff2eaaff1451c0c8.zip",
            archive_sha256=None,
            annotations={
                "coco_train.json": "98a11aed6a824d142040155b0bace286f83b18b059e6504f7f99a83d55617963",
                "coco_val.json": "4ce4093d8d8831a6b2f7b3f4617bedc10d0572f4989ca6f2b1229b7d9369bfc2",
            },
            convert=convert_raccoon,
            manifest=MANIFESTS / "raccoon.sha256",
        ),
        DatasetSource(
            name="bccd",
            description="blood-cell microscope images, RBC / WBC / Platelets; 292 trainval / 72 test, 4,886 boxes",
            license="MIT (Shenggan)",
            url="https://github.com/Shenggan/BCCD_Dataset/archive/135df0221baca7b51c18190791522ddeba8fddbf.zip",
            archive_sha256=None,
            annotations={
                "coco_trainval.json": "7922c1b368cc7937d68035bc2b2aa9a2c485cbb5a39d6850d527a9eee19eb03b",
                "coco_test.json": "12104d43b5792c099fb4759784b90401c385b4e0c84d7d1fa01185b20eaba67e",
            },
            convert=convert_bccd,
            manifest=MANIFESTS / "bccd.sha256",
        ),
    )
}


def data_home() -> Path:
    """Where data sets are installed: $DETECTOR_DATA, else ~/.cache/detector/datasets."""
    return Path(os.environ.get(HOME_VARIABLE) or DEFAULT_HOME).expanduser()


def source_of(name: str) -> DatasetSource:
    if name not in REGISTRY:
        raise DatasetError(f"unknown data set {name!r}; known: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def is_installed(name: str, home: Path | None = None) -> bool:
    return ((home or data_home()) / name / MANIFEST).is_file()


def get_command(name: str) -> str:
    return f"detector datasets get {name}"


def resolve_data_path(value: str) -> Path:
    """A data path from a config: `${DETECTOR_DATA}/NAME/...` points into the installed set NAME
    (an error naming the set and the command that gets it when it is not installed); any other
    path is taken as it is (`~` expanded)."""
    prefix = "${" + HOME_VARIABLE + "}"
    if not value.startswith(prefix):
        return Path(value).expanduser()
    relative = value[len(prefix):].lstrip("/")
    name = relative.split("/", 1)[0]
    home = data_home()
    if name in REGISTRY and not is_installed(name, home):
        raise DatasetError(f"{value}: data set {name!r} is not installed in {home / name}; get it with "
                           f"`{get_command(name)}` (or `{get_command(name)} --from LOCAL_COPY`)")
    return home / relative


def verify(source: DatasetSource, folder: Path) -> None:
    """Check an installed (or about to be installed) folder against the set's manifest: exactly
    its files, each with its SHA-256; then every image the annotations name (present, readable,
    at the annotated size). Raises DatasetError listing what is wrong."""
    problems = []
    for name, expected in source.annotations.items():  # first, with the clearest message
        path = folder / name
        if not path.is_file():
            problems.append(f"{name}: missing")
            continue
        got = sha256_of(path)
        if got != expected:
            problems.append(f"{name}: SHA-256 {got} is not the recorded {expected}")
            continue
        for image in json.loads(path.read_text())["images"]:
            problem = _image_problem(folder, image["file_name"], image["width"], image["height"], name)
            if problem:
                problems.append(problem)
    if not (folder / "LICENSE").is_file():
        problems.append("LICENSE: missing")
    if not problems:  # the annotations and images agree: now every byte, against the manifest
        problems = manifest_problems(source, folder)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise DatasetError(f"{source.name}: {len(problems)} problem(s): {shown}")


def manifest_problems(source: DatasetSource, folder: Path) -> list[str]:
    """What differs between `folder` and the manifest, by file name relative to the folder:
    files missing, extra, or with another SHA-256 (installed.json, written after the check,
    is not part of it)."""
    expected = source.files_sha256()
    found = {path.relative_to(folder).as_posix(): path for path in sorted(folder.rglob("*"))
             if (path.is_file() or path.is_symlink()) and path.name != MANIFEST}
    problems = [f"{name}: missing" for name in expected if name not in found]
    problems += [f"{name}: not in the manifest {source.manifest.name}" for name in found if name not in expected]
    for name, path in found.items():
        if name in expected:
            got = "a symbolic link" if path.is_symlink() else sha256_of(path)
            if got != expected[name]:
                problems.append(f"{name}: SHA-256 {got} is not the recorded {expected[name]} ({source.manifest.name})")
    return problems


def _image_problem(folder: Path, file_name: str, width: int, height: int, annotations: str) -> str | None:
    try:
        path = contained_path(folder, file_name, f"{folder / annotations}")
    except DatasetError as error:
        return str(error)
    if not path.is_file():
        return f"{path}: missing"
    try:
        size = image_size(path)
    except DataError as error:  # names the file and what is wrong with it
        return str(error)
    if tuple(size) != (width, height):
        return f"{path}: {size[0]}x{size[1]}, annotated {width}x{height}"
    return None


def get_dataset(name: str, local: str | Path | None = None, *, force: bool = False, url: str | None = None,
                home: Path | None = None, log: Callable[[str], None] = print) -> Path:
    """Install data set `name` into `home` (default `data_home()`) from a local copy in the
    installed layout (`local`), else by downloading its archive (`url` overrides the registry's,
    e.g. a mirror); verify it; return its folder. An installed set is kept unless `force`."""
    source = source_of(name)
    home = Path(home) if home is not None else data_home()
    target = home / name
    if is_installed(name, home) and not force:
        log(f"{name} is already installed in {target} (--force reinstalls it)")
        return target
    home.mkdir(parents=True, exist_ok=True)
    for stale in home.glob(f".{name}.*.partial"):  # left by an install that was killed
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial", dir=home))
    try:
        if local is not None:
            origin = _copy_local(source, Path(local).expanduser(), staging)
            archive_sha256 = None
        else:
            origin, archive_sha256 = _download_and_convert(source, url or source.url, staging, log)
        verify(source, staging)
        manifest = {"name": name, "from": origin, "archive_sha256": archive_sha256,
                    "archive_sha256_checked": archive_sha256 is not None and source.archive_sha256 is not None,
                    "annotations_sha256": source.annotations,
                    "files_sha256_verified": f"{len(source.files_sha256())} files, {source.manifest.name}"}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
        staging.chmod(0o755)  # mkdtemp made it private
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"installed {name} in {target} (every file's SHA-256 verified against {source.manifest.name})")
    return target


def _copy_local(source: DatasetSource, local: Path, staging: Path) -> str:
    """Copy the annotation files, LICENSE and the images the annotations name (nothing else)."""
    if not local.is_dir():
        raise DatasetError(f"--from {local}: no such folder")
    for name, expected in source.annotations.items():
        path = local / name
        if not path.is_file():
            raise DatasetError(f"--from {local}: {name} not found; expected the COCO layout of {source.name} "
                               f"({', '.join(source.annotations)}, LICENSE, the images)")
        got = sha256_of(path)
        if got != expected:
            raise DatasetError(f"{path}: SHA-256 {got} is not the recorded {expected}: not the {source.name} "
                               "annotations this package knows (a modified or other copy)")
        shutil.copyfile(path, staging / name)
        for image in json.loads(path.read_text())["images"]:
            where = f"{path}: image {image['file_name']!r}"
            image_path = contained_path(local, image["file_name"], where, follow_links=False)
            if not image_path.is_file():
                raise DatasetError(f"--from {local}: {image['file_name']} (named in {name}) not found")
            copy = contained_path(staging, image["file_name"], where)
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(image_path, copy)
    if not (local / "LICENSE").is_file():
        raise DatasetError(f"--from {local}: LICENSE not found (the data set's licence travels with it)")
    shutil.copyfile(local / "LICENSE", staging / "LICENSE")
    return str(local.resolve())


def _download_and_convert(source: DatasetSource, url: str, staging: Path, log) -> tuple[str, str]:
    archive = staging / "archive.zip"
    log(f"downloading {url}")
    got = download(url, archive, source.archive_sha256)
    checked = "matches the recorded checksum" if source.archive_sha256 else "no checksum recorded for it yet"
    log(f"archive SHA-256 {got} ({checked})")
    extracted = staging / "archive"
    extract_zip(archive, extracted, url, source.max_archive_bytes, source.max_archive_members)
    archive.unlink()
    tops = [p for p in extracted.iterdir()]
    root = tops[0] if len(tops) == 1 and tops[0].is_dir() else extracted  # GitHub: one <repo>-<commit>/ folder
    source.convert(root, staging)
    shutil.rmtree(extracted)
    return url, got


def status() -> list[dict]:
    """Every known data set: name, folder, installed or not, description, source URL."""
    home = data_home()
    return [{"name": name, "folder": str(home / name), "installed": is_installed(name, home),
             "description": source.description, "license": source.license, "url": source.url}
            for name, source in REGISTRY.items()]
