"""Train from a YAML config: `python tools/train.py CONFIG [key=value ...] [--resume]`
(the same as `detector train ...`)."""
import sys

from detector.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
