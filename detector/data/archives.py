"""Unpack a downloaded archive without trusting it: every member lands inside the target
folder (no '..', no absolute name), symbolic links are refused, and the number of members,
the bytes they expand to and each member's compression ratio are capped (a zip bomb: 200 MB of
zeros fits in 200 KB). Checked from the archive's directory before a byte is written, and the
bytes actually written are counted too, since a member's declared size can lie."""
from __future__ import annotations

import stat
import zipfile
from pathlib import Path

from detector.data.paths import contained_path
from detector.errors import DatasetError

MAX_COMPRESSION_RATIO = 100  # photos and text compress far less; zeros compress about 1000:1
RATIO_CHECKED_ABOVE = 2**20  # small members (a CSV of repeated lines) may compress well
BLOCK = 2**20


def extract_zip(archive: Path, target: Path, origin: str, max_bytes: int, max_members: int) -> None:
    """Extract `archive` (downloaded from `origin`, named in errors) into `target`, or raise a
    DatasetError naming the member at fault; the caller removes a partial `target`."""
    try:
        with zipfile.ZipFile(archive) as zipped:
            members = zipped.infolist()
            check_directory(members, origin, max_bytes, max_members)
            target.mkdir(parents=True, exist_ok=True)
            for member in members:
                destination = contained_path(target, member.filename, f"{origin}: archive member {member.filename!r}")
                if member.is_dir():
                    destination.mkdir(parents=True, exist_ok=True)
                    continue
                destination.parent.mkdir(parents=True, exist_ok=True)
                copy_member(zipped, member, destination, origin)
    except zipfile.BadZipFile as error:
        raise DatasetError(f"{origin}: not a valid zip archive ({error})") from None


def check_directory(members: list[zipfile.ZipInfo], origin: str, max_bytes: int, max_members: int) -> None:
    if len(members) > max_members:
        raise DatasetError(f"{origin}: the archive holds {len(members):,} members, more than the limit of "
                           f"{max_members:,}; refused")
    total = sum(member.file_size for member in members)
    if total > max_bytes:
        raise DatasetError(f"{origin}: the archive expands to {total:,} bytes, more than the limit of {max_bytes:,} "
                           "(a zip bomb?); refused")
    for member in members:
        if stat.S_ISLNK(member.external_attr >> 16):
            raise DatasetError(f"{origin}: archive member {member.filename!r} is a symbolic link; refused")
        if member.file_size > RATIO_CHECKED_ABOVE and member.file_size > MAX_COMPRESSION_RATIO * max(member.compress_size, 1):
            raise DatasetError(f"{origin}: archive member {member.filename!r} expands {member.compress_size:,} bytes "
                               f"to {member.file_size:,}, more than {MAX_COMPRESSION_RATIO}:1 (a zip bomb?); refused")


def copy_member(zipped: zipfile.ZipFile, member: zipfile.ZipInfo, destination: Path, origin: str) -> None:
    written = 0
    if destination.exists() or destination.is_symlink():
        raise DatasetError(f"{origin}: archive member {member.filename!r} appears twice; refused")
    with zipped.open(member) as source, open(destination, "xb") as out:  # "x": never through an existing link
        while block := source.read(BLOCK):
            written += len(block)
            if written > member.file_size:
                raise DatasetError(f"{origin}: archive member {member.filename!r} holds more than the "
                                   f"{member.file_size:,} bytes it declares; refused")
            out.write(block)
