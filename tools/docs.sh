#!/usr/bin/env bash
# Builds the documentation site into site/ (or the folder given as --site-dir DIR), strictly: a
# broken link or anchor, a page missing from the nav, a docstring mkdocstrings cannot render or a
# generated reference page that differs from the code all fail the build. Extra arguments go to
# `mkdocs build`. `.venv/bin/mkdocs serve` shows the same site while you edit.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_env.sh
# The dev extra carries the docs packages; an older .venv gets the docs extra on its own.
if ! .venv/bin/python -c "import mkdocs, material, mkdocstrings, mkdocstrings_handlers.python" 2>/dev/null; then
  echo "installing the docs extra ..."
  .venv/bin/python -m pip install -q -e ".[docs]"
fi
# The CLI and config references are committed pages: stale ones fail here, with the command that fixes them.
OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" .venv/bin/python tools/docs_reference.py --check
NO_MKDOCS_2_WARNING=1 exec .venv/bin/python -m mkdocs build --strict "$@"
