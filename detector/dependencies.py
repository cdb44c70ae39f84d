"""Optional dependencies: `require` imports one, or says in one line which pip extra installs it."""
from __future__ import annotations

import importlib

from detector.errors import MissingDependencyError


def require(module: str, extra: str, purpose: str):
    """`import module`, or a MissingDependencyError naming the pip extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(f"{purpose} needs the Python package '{module}': "
                                     f'pip install "detector[{extra}]"') from None
