"""Detect objects in images, folders, globs and videos: `python tools/infer.py --weights W SOURCE...`
(the same as `detector predict ...`)."""
import sys

from detector.cli import main

if __name__ == "__main__":
    sys.exit(main(["predict", *sys.argv[1:]]))
