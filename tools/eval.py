"""COCO mAP of a checkpoint: `python tools/eval.py CONFIG --weights W [key=value ...]`
(the same as `detector eval ...`)."""
import sys

from detector.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
