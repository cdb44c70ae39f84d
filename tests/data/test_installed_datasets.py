"""The complete real data sets, once installed (`detector datasets get raccoon`, `... bccd`):
they verify and load with their known counts. Marked `real_data` and deselected by default
(they need the full photos, which no clone carries); run them with `pytest -m real_data`.
The reader code itself is tested on committed real files in test_coco_reader.py."""
import pytest

from detector.config import DatasetConfig
from detector.data import datasets, load_dataset

pytestmark = pytest.mark.real_data

SPLITS = {  # name -> [(annotation file, images, boxes per class)]
    "raccoon": [("coco_train.json", 160, {"raccoon": 173}), ("coco_val.json", 40, {"raccoon": 44})],
    "bccd": [("coco_trainval.json", 292, {"RBC": 3348, "WBC": 301, "Platelets": 292}),
             ("coco_test.json", 72, {"RBC": 805, "WBC": 71, "Platelets": 69})],
}


@pytest.mark.parametrize("name", list(SPLITS))
def test_installed_data_set_verifies_and_loads_with_its_known_counts(name):
    folder = datasets.data_home() / name
    if not datasets.is_installed(name):
        pytest.fail(f"{name} is not installed in {folder}: run `detector datasets get {name}` first")
    datasets.verify(datasets.REGISTRY[name], folder)
    category_map = None
    for annotations, images, per_class in SPLITS[name]:
        dataset = load_dataset(DatasetConfig(format="coco", annotations=str(folder / annotations)), category_map)
        category_map = dataset.category_map
        assert len(dataset) == images and dataset.report.per_class == per_class
        assert dataset.report.data_lost == []
