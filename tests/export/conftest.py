"""The exported default model, shared by the export, runtime, CLI and serve tests (one export)."""
import pytest

from detector.export.onnx import export_onnx
from detector.inference.exported import OnnxPredictor
from export_helpers import make_checkpoint


@pytest.fixture(scope="session")
def lite0(tmp_path_factory):
    """(checkpoint, its export made at batch 4, the ONNX Runtime predictor, the eager model)."""
    root = tmp_path_factory.mktemp("lite0")
    checkpoint, model = make_checkpoint(root / "model.pt")
    onnx_path = export_onnx(checkpoint, root / "model.onnx", example_batch=4)
    return checkpoint, onnx_path, OnnxPredictor(onnx_path), model
