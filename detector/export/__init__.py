"""Exporting a trained detector: one ONNX file (onnx.py) whose graph traces the model (graph.py).
Running the file, with ONNX Runtime or OpenVINO, is inference's job (detector/inference/)."""
