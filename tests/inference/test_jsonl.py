"""The shard store of `detector predict --ray` (inference/jsonl.py) at each moment a run can
die: before a shard's rename, between the rename and its manifest block, half-way through
writing that block. Whatever the moment, a rerun knows every image done exactly once. And the
merge: one COCO file whose image ids follow the sorted paths, whatever order shards came in.
(The store under a real Ray run, killed with SIGKILL: tests/inference/test_ray_predict.py.)"""
import json

import pytest

from detector.errors import DetectorError
from detector.inference.jsonl import ShardStore, merge_to_coco

SETTINGS = {"weights": "model.pt", "overrides": [], "score_thresh": None}


def record(file: str, score: float = 0.5) -> dict:
    return {"file": file, "width": 40, "height": 30,
            "detections": [{"bbox_xyxy": [1.0, 2.0, 11.5, 22.25], "score": score, "category_id": 7, "name": "dog"}]}


def add(store: ShardStore, file: str, reason: str | None = None) -> None:
    line = json.dumps({"file": file, "skipped": reason} if reason else record(file))
    store.add(file, reason, line)


def reopened(folder) -> ShardStore:
    store = ShardStore(folder, shard_size=2)
    store.open(SETTINGS)
    return store


def shard_files(folder) -> list[str]:
    return [json.loads(line)["file"] for shard in sorted((folder / "shards").glob("part-*.jsonl"))
            for line in shard.read_text().splitlines()]


def test_full_shards_are_written_as_they_fill_and_a_rerun_knows_them(tmp_path):
    store = reopened(tmp_path)
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        add(store, name)
    assert shard_files(tmp_path) == ["a.jpg", "b.jpg"]  # c.jpg waits for its shard to fill
    add(store, "bad.jpg", "cannot read the image (empty file)")
    store.finish()
    again = reopened(tmp_path)
    assert again.done == {"a.jpg", "b.jpg", "c.jpg", "bad.jpg"} and again.predicted == 3
    assert (tmp_path / "skipped.txt").read_text() == "bad.jpg: cannot read the image (empty file)\n"
    assert again.next_shard == 3


def test_a_shard_renamed_before_its_manifest_block_is_read_into_the_manifest(tmp_path):
    store = reopened(tmp_path)
    add(store, "a.jpg"), add(store, "b.jpg")
    manifest = (tmp_path / "manifest.jsonl").read_text()
    add(store, "c.jpg"), add(store, "d.jpg")
    (tmp_path / "manifest.jsonl").write_text(manifest)  # died after the rename of shard 2, before its block
    store.close()  # what the process's end does to its lock
    again = reopened(tmp_path)
    assert again.done == {"a.jpg", "b.jpg", "c.jpg", "d.jpg"}
    again.close()
    assert reopened(tmp_path).done == again.done  # the repaired manifest holds both shards
    assert (tmp_path / "manifest.jsonl").read_text().count('{"shard"') == 2


def test_a_manifest_block_cut_half_way_and_a_leftover_temporary_shard(tmp_path):
    store = reopened(tmp_path)
    add(store, "a.jpg"), add(store, "b.jpg"), add(store, "c.jpg"), add(store, "d.jpg")
    text = (tmp_path / "manifest.jsonl").read_text()
    cut = text.index('["d.jpg"]') + 4
    (tmp_path / "manifest.jsonl").write_text(text[:cut])  # the second block stops inside a line
    (tmp_path / "shards" / ".part-000003.jsonl.x1y2.tmp").write_text('{"file": "e.jpg"')  # a shard being written
    store.close()
    again = reopened(tmp_path)
    assert again.done == {"a.jpg", "b.jpg", "c.jpg", "d.jpg"} and again.next_shard == 3
    assert not list((tmp_path / "shards").glob(".*.tmp"))
    assert [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()] == [
        ["a.jpg"], ["b.jpg"], {"shard": "part-000001.jsonl"}, ["c.jpg"], ["d.jpg"], {"shard": "part-000002.jsonl"}]


def test_a_second_run_on_the_same_folder_at_once_is_refused(tmp_path):
    first = reopened(tmp_path)
    with pytest.raises(DetectorError, match=f"{tmp_path}: another `detector predict` is writing to this folder"):
        reopened(tmp_path)
    first.finish()
    reopened(tmp_path).close()  # free again once the first has finished


def test_a_folder_of_another_run_is_refused_by_name(tmp_path):
    reopened(tmp_path).close()
    store = ShardStore(tmp_path)
    with pytest.raises(DetectorError, match=r"run.json: this folder holds predictions made with other settings "
                                            r"\(overrides, weights differ\); give another --out, or the same settings to resume"):
        store.open({"weights": "other.pt", "overrides": ["model.roi_heads.nms_thresh=0.6"], "score_thresh": None})


def test_merge_numbers_images_by_sorted_path_and_converts_boxes_to_coco(tmp_path):
    store = reopened(tmp_path)
    for name in ("c.jpg", "a.jpg", "bad.jpg", "b.jpg"):
        add(store, name, "not an image" if name == "bad.jpg" else None)
    store.finish()
    merged = json.loads(merge_to_coco(tmp_path, [(7, "dog"), (9, "cat")]).read_text())
    assert [(image["id"], image["file_name"]) for image in merged["images"]] == [(1, "a.jpg"), (2, "b.jpg"), (3, "c.jpg")]
    assert merged["annotations"][0] == {"id": 1, "image_id": 1, "category_id": 7, "bbox": [1.0, 2.0, 10.5, 20.25],
                                        "score": 0.5, "area": 212.62, "iscrowd": 0}
    assert [a["image_id"] for a in merged["annotations"]] == [1, 2, 3]
    assert merged["categories"] == [{"id": 7, "name": "dog"}, {"id": 9, "name": "cat"}]

    from pycocotools.coco import COCO  # a COCO tool reads it as a data set and as results

    coco = COCO(str(tmp_path / "predictions.json"))
    assert len(coco.loadRes(merged["annotations"]).getAnnIds()) == 3


def test_merge_refuses_an_image_found_twice(tmp_path):
    store = reopened(tmp_path)
    add(store, "a.jpg"), add(store, "b.jpg"), add(store, "a.jpg")
    store.finish()
    with pytest.raises(DetectorError, match=r"a.jpg: predicted twice, in part-000001.jsonl and part-000002.jsonl"):
        merge_to_coco(tmp_path, [(7, "dog")])
