"""The `detector` command line. Thin: it parses arguments, then calls the package.

  detector model [CONFIG] [key=value ...]      what the config builds: backbone, maps, anchors, parameters
  detector predict [--config C] [--weights W] SOURCE... [--out DIR] [--score-thresh T]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="detector", description="Faster R-CNN you can train, trust and read.")
    commands = parser.add_subparsers(dest="command", required=True)

    model = commands.add_parser("model", help="describe the model a config builds")
    model.add_argument("config", nargs="?", help="YAML config (default: the built-in defaults)")
    model.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. model.backbone.fpn=true")

    predict = commands.add_parser("predict", help="detect objects in images and folders")
    predict.add_argument("sources", nargs="+", help="image files or folders")
    predict.add_argument("--config", help="YAML config of the model (default: the built-in defaults)")
    predict.add_argument("--weights", help="weights file (a state dict, or a checkpoint holding one under 'model')")
    predict.add_argument("--out", default="runs/predict", help="folder for annotated images and detections.json")
    predict.add_argument("--score-thresh", type=float, default=None, help="keep detections scoring at least this")
    predict.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")

    args = parser.parse_args(argv)
    from detector.errors import DetectorError

    try:
        if args.command == "model":
            return describe_model(args.config, args.overrides)
        return predict_images(args)
    except (DetectorError, FileNotFoundError) as error:
        print(f"detector {args.command}: {error}", file=sys.stderr)
        return 2


def describe_model(config_path: str | None, overrides: list[str]) -> int:
    from detector import build_model, load_config

    config = load_config(config_path, overrides)
    model = build_model(config)
    params = list(model.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    backbone = config.model.backbone
    print(f"backbone        {backbone.name}{' + FPN' if backbone.fpn else ''} (pretrained: {backbone.pretrained})")
    print(f"normalization   mean {fmt(model.transform.image_mean)} std {fmt(model.transform.image_std)}")
    print(f"resize          short side {model.transform.min_size}, long side <= {model.transform.max_size}")
    print(f"feature maps    {model.backbone.featmap_names}, strides {list(model.backbone.strides)}, "
          f"{model.backbone.out_channels} channels")
    print(f"anchors         {model.rpn.anchor_generator.num_anchors_per_location()[0]} per location: "
          f"sizes {config.model.anchors.sizes} x ratios {config.model.anchors.aspect_ratios}")
    print(f"classes         {model.num_classes} + background")
    print(f"parameters      {sum(p.numel() for p in params):,} ({trainable:,} trainable)")
    return 0


def fmt(values) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"


def find_images(sources: list[str]) -> list[Path]:
    images = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {path}")
            images += found
        elif path.is_file():
            images.append(path)
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    return images


def read_image_rgb(path: Path):
    import cv2
    import torch

    from detector.errors import DetectorError

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)  # applies the EXIF orientation
    if image is None:
        raise DetectorError(f"{path}: not a readable image")
    return torch.from_numpy(cv2.cvtColor(image, cv2.COLOR_BGR2RGB)).permute(2, 0, 1).float() / 255


def predict_images(args) -> int:
    import cv2
    import torch

    from detector import build_model, load_config, load_matching_weights, read_state_dict

    overrides = list(args.set)
    if args.score_thresh is not None:
        overrides.append(f"model.roi_heads.score_thresh={args.score_thresh}")
    config = load_config(args.config, overrides)
    model = build_model(config).eval()
    if args.weights:
        report = load_matching_weights(model, read_state_dict(args.weights))
        print(f"weights {args.weights}: {report.summary()}")
    else:
        print("no --weights: the detection heads are untrained, so boxes are meaningless until you train")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for path in find_images(args.sources):
        image = read_image_rgb(path)
        with torch.no_grad():
            detection = model([image])[0]
        boxes, scores, labels = detection["boxes"].tolist(), detection["scores"].tolist(), detection["labels"].tolist()
        results.append({"image": str(path), "boxes": boxes, "scores": scores, "labels": labels})
        canvas = cv2.cvtColor((image.permute(1, 2, 0).numpy() * 255).astype("uint8"), cv2.COLOR_RGB2BGR)
        for (x1, y1, x2, y2), score, label in zip(boxes, scores, labels):
            cv2.rectangle(canvas, (int(x1), int(y1)), (int(x2), int(y2)), (0, 200, 0), 2)
            cv2.putText(canvas, f"{label}: {score:.2f}", (int(x1), max(int(y1) - 4, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 200, 0), 1)
        cv2.imwrite(str(out / f"{path.stem}.jpg"), canvas)
        print(f"{path}: {len(boxes)} detections" + (f", best score {max(scores):.3f}" if scores else ""))
    (out / "detections.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {len(results)} annotated images and detections.json to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
