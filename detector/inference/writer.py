"""The output folder of a prediction run: the annotated image or video of each source, and
`predictions.json` and `skipped.txt`, rewritten atomically as entries come, so a crash or
Ctrl-C at image 900 of 1000 leaves the first 899 on disk and `predictions.json` is whole JSON
whenever it exists.

Entries are not held in memory: each is appended to `predictions.jsonl` (one JSON line per
source, flushed as it comes) and predictions.json is rewritten from that file, streamed, so a
run of a million images needs no more memory than a run of ten."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from detector.engine.checkpoint import write_atomically
from detector.engine.plots import write_image
from detector.inference.skipping import Skipped

# predictions.json grows with every image; past the point where rewriting it would take more
# than this share of the run, it is rewritten less often (always at the end and on Ctrl-C).
MAX_WRITE_SHARE = 0.1


class OutputFolder:
    """The folder of a prediction run: annotated files named after their sources, and
    predictions.json / skipped.txt, rewritten atomically as entries come."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.lines = folder / "predictions.jsonl"  # each entry's JSON, so a rewrite does not serialize again
        folder.mkdir(parents=True, exist_ok=True)
        self.entries = open(self.lines, "w", encoding="utf-8")  # noqa: SIM115 - open for the whole run
        self.skipped: list[Skipped] = []
        self.names: set[str] = set()
        self.next_write = 0.0

    def output_path(self, source: Path, suffix: str) -> Path:
        """`<stem><suffix>`, or `<stem>_2<suffix>`... when another source had that stem."""
        name, number = f"{source.stem}{suffix}", 1
        while name in self.names:
            number += 1
            name = f"{source.stem}_{number}{suffix}"
        self.names.add(name)
        return self.folder / name

    def write_image(self, path: Path, bgr: np.ndarray) -> None:
        write_image(path, bgr)

    def add(self, entry: dict) -> None:
        self.entries.write(json.dumps(entry) + "\n")
        self.entries.flush()
        if time.monotonic() >= self.next_write:
            self.write()

    def add_skipped(self, skipped: Skipped) -> None:
        self.skipped.append(skipped)
        self.write()

    def write(self) -> None:
        started = time.monotonic()
        skipped = [json.dumps({"source": s.source, "reason": s.reason}) for s in self.skipped]
        write_atomically(self.folder / "predictions.json", lambda file: self.write_json(file, skipped))
        listing = "".join(f"{s}\n" for s in self.skipped)
        write_atomically(self.folder / "skipped.txt", lambda file: file.write(listing.encode()))
        took = time.monotonic() - started
        self.next_write = time.monotonic() + took * (1 - MAX_WRITE_SHARE) / MAX_WRITE_SHARE

    def write_json(self, file, skipped: list[str]) -> None:
        """predictions.json: the entries of predictions.jsonl (read line by line) and `skipped`."""
        file.write(b'{\n "predictions": ')
        first = True
        with open(self.lines, "rb") as lines:
            for line in lines:
                file.write(b"[\n  " if first else b",\n  ")
                file.write(line.rstrip(b"\n"))
                first = False
        file.write(b"[]" if first else b"\n ]")
        file.write(f',\n "skipped": {_json_list(skipped)}\n}}\n'.encode())

    def close(self) -> None:
        self.entries.close()


def _json_list(items: list[str]) -> str:
    """A JSON list of already serialized items, one per line."""
    return "[\n  " + ",\n  ".join(items) + "\n ]" if items else "[]"
