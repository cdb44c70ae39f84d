"""Export a checkpoint to one ONNX file: `python tools/export.py --weights W [--out F.onnx] [--opset N]`
(the same as `detector export ...`)."""
import sys

from detector.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
