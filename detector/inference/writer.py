"""The output folder of a prediction run: the annotated image or video of each source, and
`predictions.json` and `skipped.txt`, rewritten atomically as entries come, so a crash or
Ctrl-C at image 900 of 1000 leaves the first 899 on disk and `predictions.json` is whole JSON
whenever it exists."""
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
        self.entries: list[str] = []  # each entry's JSON, kept so a rewrite does not serialize again
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
        self.entries.append(json.dumps(entry))
        if time.monotonic() >= self.next_write:
            self.write()

    def add_skipped(self, skipped: Skipped) -> None:
        self.skipped.append(skipped)
        self.write()

    def write(self) -> None:
        started = time.monotonic()
        skipped = [json.dumps({"source": s.source, "reason": s.reason}) for s in self.skipped]
        text = f'{{\n "predictions": {_json_list(self.entries)},\n "skipped": {_json_list(skipped)}\n}}\n'
        write_atomically(self.folder / "predictions.json", lambda file: file.write(text.encode()))
        listing = "".join(f"{s}\n" for s in self.skipped)
        write_atomically(self.folder / "skipped.txt", lambda file: file.write(listing.encode()))
        took = time.monotonic() - started
        self.next_write = time.monotonic() + took * (1 - MAX_WRITE_SHARE) / MAX_WRITE_SHARE


def _json_list(items: list[str]) -> str:
    """A JSON list of already serialized items, one per line."""
    return "[\n  " + ",\n  ".join(items) + "\n ]" if items else "[]"
