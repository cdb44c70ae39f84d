"""The output folder of a streamed prediction run (`detector predict --ray`): JSON Lines shards
written as records come, a manifest of the files done, so a rerun after a crash, a kill -9 or
Ctrl-C predicts only the rest, and the merge of the shards into one COCO predictions.json.

  run.json                 the predictor's settings; a rerun with other settings is refused
  run.lock                 held by the run writing the folder; a second one at once is refused
  shards/part-000001.jsonl one record per line (inference/records.py), each shard written
                           whole or not at all (a temporary file renamed over it)
  manifest.jsonl           the files of each shard, then `{"shard": name}`, appended once the
                           shard is in place; the manifest is what a rerun skips
  skipped.txt              `file: reason` of every skipped source, sorted by file
  predictions.json         with --merge: COCO images, annotations (with scores), categories

A crash between a shard's rename and its manifest block leaves a shard the manifest lacks:
the next run reads that shard into the manifest before listing what is left, so no image is
predicted twice; a crash before the rename loses only the shard's images, which are redone.
"""
from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from detector.engine.checkpoint import write_atomically
from detector.errors import DetectorError

SHARD_SIZE = 1000  # records per shard: at most this many images are redone after a crash


class ShardStore:
    """Appends records to shards of `shard_size`, keeps the manifest, and knows what is done."""

    def __init__(self, folder: str | Path, shard_size: int = SHARD_SIZE) -> None:
        if shard_size < 1:
            raise DetectorError(f"--shard-size must be >= 1, got {shard_size}")
        self.folder = Path(folder)
        self.shards = self.folder / "shards"
        self.manifest = self.folder / "manifest.jsonl"
        self.shard_size = shard_size
        self.done: set[str] = set()  # every file in the manifest, predicted or skipped
        self.skipped: dict[str, str] = {}
        self.pending: list[tuple[str, str | None, str]] = []  # (file, skip reason, JSON line) not yet in a shard
        self.next_shard = 1
        self.manifest_is_torn = False
        self.lock_file = None

    def open(self, settings: dict) -> None:
        """Start or resume the run of `settings` in the folder: refuse another run's folder,
        drop unfinished temporary shards, bring the manifest up to the shards on disk."""
        self.check_settings(settings)
        self.shards.mkdir(parents=True, exist_ok=True)
        self.lock()
        for leftover in self.shards.glob(".*.tmp"):  # a shard being written when the run died
            leftover.unlink()
        covered = self.read_manifest()
        on_disk = sorted(self.shards.glob("part-*.jsonl"))
        self.next_shard = 1 + max((int(p.stem.split("-")[1]) for p in on_disk), default=0)
        missing = [p for p in on_disk if p.name not in covered]
        if missing or self.manifest_is_torn:
            self.repair_manifest(missing)

    def lock(self) -> None:
        """Hold `run.lock` until `close`: two runs writing the same shards would number them
        alike. The kernel lets go of it when the process dies, kill -9 included."""
        self.lock_file = open(self.folder / "run.lock", "a")  # noqa: SIM115 - held until close()
        try:
            fcntl.flock(self.lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.lock_file.close()
            raise DetectorError(f"{self.folder}: another `detector predict` is writing to this folder") from None

    def check_settings(self, settings: dict) -> None:
        path = self.folder / "run.json"
        wanted = json.loads(json.dumps(settings))  # as JSON reads it back: tuples become lists
        if path.is_file():
            try:
                saved = json.loads(path.read_text())
            except ValueError:
                raise DetectorError(f"{path}: not JSON; is {self.folder} the output of "
                                    "`detector predict --ray`?") from None
            if saved != wanted:
                changed = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k)) \
                    if isinstance(saved, dict) else ["all"]
                raise DetectorError(f"{path}: this folder holds predictions made with other settings "
                                    f"({', '.join(changed)} differ); give another --out, or the same settings "
                                    "to resume")
        else:
            write_atomically(path, lambda file: file.write((json.dumps(wanted, indent=1) + "\n").encode()))

    def read_manifest(self) -> set[str]:
        """The shards the manifest covers; their files go to `done`. Entries after the last
        `{"shard"}` line belong to a block cut short by a crash and are ignored."""
        covered: set[str] = set()
        self.manifest_is_torn = False
        if not self.manifest.is_file():
            return covered
        block: list = []
        with open(self.manifest, encoding="utf-8") as file:
            for line in file:
                try:
                    entry = json.loads(line)
                except ValueError:  # a line cut by the crash
                    self.manifest_is_torn = True
                    break
                if isinstance(entry, dict):
                    covered.add(entry["shard"])
                    for done in block:
                        self.mark_done(*done)
                    block = []
                else:
                    block.append(entry)
        self.manifest_is_torn = self.manifest_is_torn or bool(block)
        return covered

    def mark_done(self, file: str, reason: str | None = None) -> None:
        self.done.add(file)
        if reason is not None:
            self.skipped[file] = reason

    def repair_manifest(self, missing: list[Path]) -> None:
        """Rewrite the manifest as its whole blocks, then a block for each shard in `missing`."""
        def write(out) -> None:
            if self.manifest.is_file():
                kept = []
                with open(self.manifest, "rb") as file:
                    for line in file:
                        try:
                            entry = json.loads(line)
                        except ValueError:
                            break
                        kept.append(line)
                        if isinstance(entry, dict):
                            out.write(b"".join(kept))
                            kept = []
            for shard in missing:
                entries = []
                with open(shard, encoding="utf-8") as file:
                    for line in file:
                        record = json.loads(line)
                        entries.append((record["file"], record.get("skipped")))
                for file_name, reason in entries:
                    self.mark_done(file_name, reason)
                out.write(manifest_block(shard.name, entries).encode())

        write_atomically(self.manifest, write)

    def add(self, file: str, reason: str | None, line: str) -> None:
        """Record `line` (a record's JSON) for `file`, skipped for `reason` unless None."""
        self.pending.append((file, reason, line))
        if len(self.pending) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        """Write the pending records as one shard, then its manifest block."""
        if not self.pending:
            return
        name = f"part-{self.next_shard:06d}.jsonl"
        text = "".join(line + "\n" for _, _, line in self.pending)
        write_atomically(self.shards / name, lambda file: file.write(text.encode()))
        self.next_shard += 1
        with open(self.manifest, "a", encoding="utf-8") as file:
            file.write(manifest_block(name, [(f, reason) for f, reason, _ in self.pending]))
            file.flush()
            os.fsync(file.fileno())
        for file_name, reason, _ in self.pending:
            self.mark_done(file_name, reason)
        self.pending = []

    def finish(self) -> None:
        """Flush what is pending, write skipped.txt and let go of the folder."""
        try:
            self.flush()
            listing = "".join(f"{file}: {reason}\n" for file, reason in sorted(self.skipped.items()))
            write_atomically(self.folder / "skipped.txt", lambda out: out.write(listing.encode()))
        finally:
            self.close()

    def close(self) -> None:
        """Let go of the folder's lock (what the end of the process does, however it ends)."""
        if self.lock_file is not None:
            self.lock_file.close()
            self.lock_file = None

    @property
    def predicted(self) -> int:
        return len(self.done) - len(self.skipped)


def manifest_block(shard: str, entries: list[tuple[str, str | None]]) -> str:
    lines = [json.dumps([file] if reason is None else [file, reason]) for file, reason in entries]
    return "".join(line + "\n" for line in lines) + json.dumps({"shard": shard}) + "\n"


def read_records(folder: str | Path):
    """Every record of the shards of `folder`, shard by shard."""
    for shard in sorted((Path(folder) / "shards").glob("part-*.jsonl")):
        with open(shard, encoding="utf-8") as file:
            for line in file:
                yield json.loads(line)


def merge_to_coco(folder: str | Path, categories: list[tuple[int, str]]) -> Path:
    """`folder`/predictions.json: the predicted images of the shards as one COCO file.

    Image ids are 1, 2, ... in the order of the sorted file paths, whatever order the shards
    were written in, so two runs over the same files give the same file. Each annotation is a
    COCO result (image_id, category_id, bbox xywh, score) plus an id and area, so the file is
    both a results file and a COCO data set (`detector analyze --predictions` reads it)."""
    folder = Path(folder)
    shards = sorted((folder / "shards").glob("part-*.jsonl"))
    index = []  # (file, shard number, byte offset): what sorting needs, not the records
    for number, shard in enumerate(shards):
        with open(shard, "rb") as file:
            offset = 0
            for line in file:
                record = json.loads(line)
                if "skipped" not in record:
                    index.append((record["file"], number, offset))
                offset += len(line)
    index.sort()
    for before, after in zip(index, index[1:]):
        if before[0] == after[0]:
            raise DetectorError(f"{before[0]}: predicted twice, in {shards[before[1]].name} and "
                                f"{shards[after[1]].name}")

    def write(out) -> None:
        with ShardReader(shards) as reader:
            out.write(b'{"images": [')
            for image_id, (_, number, offset) in enumerate(index, 1):
                record = reader.read(number, offset)
                image = {"id": image_id, "file_name": record["file"], "width": record["width"],
                         "height": record["height"]}
                out.write((", " if image_id > 1 else "").encode() + json.dumps(image).encode())
            out.write(b'],\n "annotations": [')
            annotation_id = 0
            for image_id, (_, number, offset) in enumerate(index, 1):
                for detection in reader.read(number, offset)["detections"]:
                    annotation_id += 1
                    x1, y1, x2, y2 = detection["bbox_xyxy"]
                    width, height = round(x2 - x1, 2), round(y2 - y1, 2)
                    annotation = {"id": annotation_id, "image_id": image_id, "category_id": detection["category_id"],
                                  "bbox": [x1, y1, width, height], "score": detection["score"],
                                  "area": round(width * height, 2), "iscrowd": 0}
                    out.write((",\n  " if annotation_id > 1 else "\n  ").encode() + json.dumps(annotation).encode())
            coco_categories = [{"id": int(cat_id), "name": name} for cat_id, name in categories]
            out.write(f'],\n "categories": {json.dumps(coco_categories)}}}\n'.encode())

    path = folder / "predictions.json"
    write_atomically(path, write)
    return path


class ShardReader:
    """Records read by (shard number, byte offset), with at most `MAX_OPEN` shards open."""

    MAX_OPEN = 64

    def __init__(self, shards: list[Path]) -> None:
        self.shards, self.open_files = shards, {}

    def read(self, number: int, offset: int) -> dict:
        if number not in self.open_files:
            if len(self.open_files) >= self.MAX_OPEN:
                self.close()
            self.open_files[number] = open(self.shards[number], "rb")  # noqa: SIM115 - closed by close()
        file = self.open_files[number]
        file.seek(offset)
        return json.loads(file.readline())

    def close(self) -> None:
        for file in self.open_files.values():
            file.close()
        self.open_files = {}

    def __enter__(self) -> "ShardReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
