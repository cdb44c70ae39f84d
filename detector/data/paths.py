"""File names read from annotation files must stay inside the dataset's folder.

A dataset downloaded from elsewhere is untrusted input: a COCO `file_name` such as
`../../home/me/private.jpg`, a VOC split entry `../../etc/x`, or a symlink planted in the
archive would otherwise make training read (and draw into the run folder) files outside the
dataset. A relative name is therefore resolved ('..' and symlinks) and must land inside the
folder the reader looks in, itself resolved, so a dataset folder that is a symlink still
works. Absolute names are the user's explicit choice and are accepted as they are.
"""
from __future__ import annotations

import os
from pathlib import Path


def escapes_root(name: str | Path, root: Path) -> str | None:
    """None when `root / name` stays inside `root`; else why not, naming both (a message
    for the report). An absolute `name` is always accepted."""
    if Path(name).is_absolute():
        return None
    try:
        real_root = Path(os.path.realpath(root))
        real = Path(os.path.realpath(root / name))
    except (OSError, ValueError):  # e.g. a NUL byte: the file check that follows reports it
        return None
    if real.is_relative_to(real_root):
        return None
    return f"{str(name)!r} escapes the dataset root {root} (it resolves to {real}); skipped"


def contained_path(root: Path, name: str, where: str, follow_links: bool = True) -> Path:
    """`root / name` for a file an installer is about to read or write, refused with a
    DatasetError naming `where` (the archive member, or the CSV line that named it) when `name`
    is absolute, holds a NUL, or resolves ('..', symlinks already on disk) outside `root`.
    Stricter than `escapes_root`: an installer never follows a name out of its folder.
    `follow_links=False` checks the name alone (a user's own copy may link its images elsewhere)."""
    from detector.errors import DatasetError

    if "\x00" in name or Path(name).is_absolute() or not name.strip():
        raise DatasetError(f"{where}: file name {name!r} is not a relative path inside {root}; refused")
    if ".." in Path(name).parts:  # even a '..' that comes back in: the same name is used in two folders
        raise DatasetError(f"{where}: file name {name!r} leaves {root} ('..'); refused, nothing was written outside")
    resolve = os.path.realpath if follow_links else os.path.abspath
    real_root = Path(resolve(root))
    real = Path(resolve(root / name))
    if not real.is_relative_to(real_root) or real == real_root:
        raise DatasetError(f"{where}: file name {name!r} leaves {root} (it resolves to {real}); refused, nothing "
                           "was written outside")
    return root / name
