"""Detect objects in images and folders: `python tools/infer.py [--config C] [--weights W] SOURCE...`
(the same as `detector predict ...`)."""
import sys

from detector.cli import main

if __name__ == "__main__":
    sys.exit(main(["predict", *sys.argv[1:]]))
