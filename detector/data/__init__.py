"""Datasets: COCO / VOC / YOLO readers -> one record type, augmentation, loader, demo set.

    dataset = load_dataset(config.data.train, augment=config.data.augment)
    print(dataset.summary())
    val = load_dataset(config.data.val, dataset.category_map)
    loader = build_loader(dataset, 4, train=True, workers=2, seed=0, group_aspect_ratio=True)
"""
from detector.data.coco import read_coco
from detector.data.dataset import DetectionDataset, load_dataset, read_image, read_records
from detector.data.loader import DetectionLoader, GroupedBatchSampler, build_loader, collate_detection
from detector.data.records import CategoryMap, DatasetReport, ImageRecord, Problem
from detector.data.synthetic import make_synthetic_dataset
from detector.data.voc import read_voc
from detector.data.yolo import read_yolo

__all__ = [
    "CategoryMap",
    "DatasetReport",
    "DetectionDataset",
    "DetectionLoader",
    "GroupedBatchSampler",
    "ImageRecord",
    "Problem",
    "build_loader",
    "collate_detection",
    "load_dataset",
    "make_synthetic_dataset",
    "read_coco",
    "read_image",
    "read_records",
    "read_voc",
    "read_yolo",
]
