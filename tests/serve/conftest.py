"""The serve tests' fixtures: one small real checkpoint and its eager predictor."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from serve_helpers import make_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("serve") / "small.pt")


@pytest.fixture(scope="session")
def predictor(checkpoint):
    from detector.inference import load_predictor

    return load_predictor(checkpoint, device="cpu")
