"""Inference: everything between weights and detections, one path for every command.

  loading.py     load_predictor: the backend chosen by the file (.pt eager, .onnx ONNX Runtime
                 or, asked for, OpenVINO)
  overrides.py   the test-time settings a command may change, one list and one rule
  predictor.py   the eager (PyTorch) predictor of a checkpoint
  exported.py    the predictor of an exported .onnx, on ONNX Runtime or OpenVINO
  categories.py  labels 1..K -> the dataset's category ids and names; detections as JSON
  sources.py     files, folders, globs and @lists -> the image and video files to predict, lazily
  skipping.py    the skip-and-name policy: what a run skipped, why, and its exit code
  writer.py      the output folder: annotated files, predictions.json(l), skipped.txt
  runner.py      predict_sources: every source through a predictor into the output folder
  records.py     one image file -> one JSON Lines record (decode; predict a batch)
  jsonl.py       a streamed run's folder: shards, the manifest a rerun resumes from, the COCO merge
  ray_predict.py `detector predict --ray`: records.py on a Ray Data actor pool, into jsonl.py
  slicing.py     sliced prediction: tiles of a large image, merged (merging.py)
  tta.py         test-time augmentation: mirrored and resized views, merged (merging.py)

eval, analyze, predict, serve and export all load through `load_predictor` (or, for export,
the eager predictor it builds) and apply test-time settings through overrides.py.
"""
from detector.inference.loading import load_predictor

__all__ = ["load_predictor"]
