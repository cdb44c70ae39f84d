"""Sources of a prediction run (inference/sources.py): folders walked lazily in the order a
sorted recursive listing gives, `@lists` of paths read line by line, an unreadable list named
in one line before anything runs."""
import itertools
from pathlib import Path

import pytest

from detector.cli import main
from detector.errors import SourceError
from detector.inference.skipping import Skipped
from detector.inference.sources import find_sources


@pytest.fixture
def tree(tmp_path):
    for name in ("b.jpg", "a.png", "a/x.jpg", "a/z/y.PNG", "a.jpg", "notes.txt", "c/clip.mp4", "empty/"):
        path = tmp_path / "data" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not name.endswith("/"):
            path.write_bytes(b"x")
    return tmp_path / "data"


def test_a_folder_is_walked_in_sorted_path_order_skipping_other_suffixes(tree):
    found = list(find_sources([str(tree)]))
    assert [p.relative_to(tree).as_posix() for p in found] == ["a/x.jpg", "a/z/y.PNG", "a.jpg", "a.png", "b.jpg",
                                                               "c/clip.mp4"]


def test_a_folder_yields_its_first_file_before_listing_the_rest(tree, monkeypatch):
    import os

    listed = []
    real = os.scandir
    monkeypatch.setattr(os, "scandir", lambda path: listed.append(Path(path)) or real(path))
    first = next(iter(find_sources([str(tree)])))
    assert first == tree / "a" / "x.jpg" and listed == [tree, tree / "a"]  # not yet a/z, c, empty


def test_a_list_of_paths_relative_to_itself_with_comments_globs_and_repeats(tree, tmp_path):
    listing = tmp_path / "paths.txt"
    listing.write_text(f"# photos to predict\ndata/b.jpg\n\n{tree / 'a'}\ndata/*.png\ndata/b.jpg\ndata/gone.jpg\n")
    found = list(find_sources([f"@{listing}", str(tree / "a.jpg")]))
    assert found == [tree / "b.jpg", tree / "a" / "x.jpg", tree / "a" / "z" / "y.PNG", tree / "a.png",
                     Skipped(str(tree / "gone.jpg"), "no such file or folder"), tree / "a.jpg"]


def test_the_list_is_read_as_the_run_goes(tmp_path):
    listing = tmp_path / "million.txt"
    listing.write_text("".join(f"img{i}.jpg\n" for i in range(1000)))
    assert list(itertools.islice(find_sources([f"@{listing}"]), 2)) == [
        Skipped(str(tmp_path / "img0.jpg"), "no such file or folder"),
        Skipped(str(tmp_path / "img1.jpg"), "no such file or folder")]


def test_an_unreadable_list_is_one_line_and_exit_2_before_anything_runs(tmp_path, capfd):
    with pytest.raises(SourceError, match=r"missing.txt: cannot read the list of sources \(no such file or directory\)"):
        list(find_sources([f"@{tmp_path / 'missing.txt'}"]))
    out = tmp_path / "out"
    code = main(["predict", f"@{tmp_path}", "--weights", str(tmp_path / "never-loaded.pt"), "--out", str(out)])
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"detector predict: {tmp_path}: cannot read the list of sources (is a folder, not a "
                                 "text file)"]
    assert not out.exists()
