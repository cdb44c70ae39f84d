"""The scripts of tools/ as modules, for the tests of those scripts (tools/ is not a package).
Importable from every test folder: pytest puts tests/, the root conftest's folder, on sys.path."""
from __future__ import annotations

import importlib.util
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def load_tool(name: str):
    """tools/<name>.py, executed as a module of that name."""
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
