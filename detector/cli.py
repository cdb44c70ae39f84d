"""The `detector` command line. Thin: it parses arguments, then calls the package.

  detector train CONFIG [key=value ...] [--resume [CHECKPOINT]] [--nproc N]
  detector eval CONFIG --weights W [key=value ...]
  detector predict --weights W SOURCE... [--out DIR] [--score-thresh T] [--max-detections N] [--set KEY=VALUE]
  detector model [CONFIG] [key=value ...]
  detector datasets [get NAME [--from PATH] [--force]]
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detector", description="Faster R-CNN you can train, trust and read.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train from a YAML config; writes a run folder")
    train.add_argument("config", help="YAML config, e.g. configs/demo.yaml")
    train.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.epochs=3")
    train.add_argument("--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT",
                       help="continue a stopped run (default: <output>/weights/last.pt)")
    train.add_argument("--nproc", type=int, default=1, metavar="N",
                       help="train with N processes on this machine (DDP through torchrun: one per GPU, "
                            "or CPU processes with gloo); for several machines run torchrun yourself")

    evaluate = commands.add_parser("eval", help="COCO mAP of a checkpoint on the config's val set")
    evaluate.add_argument("config", help="YAML config naming data.val")
    evaluate.add_argument("overrides", nargs="*",
                          help="dotted key=value overrides: data.* and train.batch_size pick the data; model.* "
                               "changes a test-time setting of the checkpoint's model, e.g. model.roi_heads.nms_method=gaussian")
    evaluate.add_argument("--weights", required=True, help="checkpoint written by `detector train`")
    evaluate.add_argument("--out", default=None, help="folder for metrics.json, predictions.json, ground_truth.json")

    predict = commands.add_parser("predict", help="detect objects in images, folders, globs and videos")
    predict.add_argument("sources", nargs="+", help="image or video files, folders, or glob patterns")
    predict.add_argument("--weights", required=True, help="checkpoint written by `detector train`")
    predict.add_argument("--out", default="runs/predict", help="folder for annotated images/videos and predictions.json")
    predict.add_argument("--score-thresh", type=float, default=None, help="keep detections scoring at least this")
    predict.add_argument("--max-detections", type=int, default=None, help="at most this many detections per image")
    predict.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="settings",
                         help="a test-time setting of the model, e.g. --set model.roi_heads.nms_method=hard (repeatable)")
    predict.add_argument("--device", default="auto")

    model = commands.add_parser("model", help="describe the model a config builds")
    model.add_argument("config", nargs="?", help="YAML config (default: the built-in defaults)")
    model.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. model.backbone.fpn=true")

    datasets = commands.add_parser("datasets", help="list the known real data sets, or install one (get)",
                                   description="Without arguments: list the known data sets and where they are "
                                               "installed ($DETECTOR_DATA, default ~/.cache/detector/datasets).")
    actions = datasets.add_subparsers(dest="action")
    get = actions.add_parser("get", help="download (or copy --from a local copy), verify and install a data set")
    get.add_argument("name", help="data set name, e.g. raccoon or bccd")
    get.add_argument("--from", dest="local", default=None, metavar="PATH",
                     help="install from a local copy in the installed COCO layout instead of downloading")
    get.add_argument("--force", action="store_true", help="reinstall even if it is installed")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may also follow the options (`eval CONFIG --weights W key=value`),
    # which argparse alone does not accept after an option.
    if extra and hasattr(args, "overrides") and all("=" in token and not token.startswith("-") for token in extra):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from detector.errors import DetectorError

    commands = {"train": train, "eval": evaluate, "predict": predict, "model": describe_model, "datasets": datasets}
    try:
        return commands[args.command](args)
    except (DetectorError, FileNotFoundError) as error:
        print(f"detector {args.command}: {error}", file=sys.stderr)
        return 2


def train(args) -> int:
    from detector import load_config
    from detector.engine.distributed import is_main, launched_by_torchrun, shutdown
    from detector.engine.trainer import Trainer

    if args.nproc < 1:
        raise SystemExit("detector train: --nproc must be >= 1")
    if args.nproc > 1 and not launched_by_torchrun():
        return launch_torchrun(args)

    try:
        metrics = Trainer(load_config(args.config, args.overrides), resume=args.resume).fit()
        main = is_main()
    finally:
        shutdown()
    if main and metrics and metrics["AP"] is not None:
        print(f"val AP {metrics['AP']:.4f}  AP50 {metrics['AP50']:.4f}")
    return 0


def launch_torchrun(args) -> int:
    """Re-run this `detector train` under torchrun with `args.nproc` processes on this machine."""
    import subprocess

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
               "-m", "detector.cli", "train", args.config, *args.overrides]
    if args.resume is not None:
        command += ["--resume"] + ([] if args.resume is True else [str(args.resume)])
    print("launching: " + " ".join(command), flush=True)
    return subprocess.run(command).returncode


def evaluate(args) -> int:
    from detector import load_config
    from detector.config import parse_override
    from detector.config_checks import check_data_paths
    from detector.data import CategoryMap, load_dataset
    from detector.engine.evaluation import evaluate_model
    from detector.engine.predictor import Predictor

    config = load_config(args.config, args.overrides)
    if config.data.val is None:
        print(f"detector eval: {args.config} has no data.val", file=sys.stderr)
        return 2
    check_data_paths(config.data)
    # The checkpoint's config builds the model; model.* overrides change its test-time settings.
    test_time = [o for o in args.overrides if parse_override(o)[0].startswith("model.")]
    predictor = Predictor.from_checkpoint(args.weights, device=config.train.device, overrides=test_time)
    if test_time:
        print("test-time settings: " + " ".join(test_time))
    categories = CategoryMap(tuple(predictor.category_ids), tuple(predictor.category_names))
    dataset = load_dataset(config.data.val, categories, policy=config.data.policy)
    out = Path(args.out or Path(config.output) / "eval")
    metrics = evaluate_model(predictor.model, dataset, predictor.device, out, batch_size=config.train.batch_size,
                             workers=config.data.workers, draw=config.train.num_val_images_drawn)
    for sample in metrics["skipped_images"]:
        print(f"WARNING: {sample}; left out of the metrics", file=sys.stderr)
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"):
        value = metrics[key]
        print(f"{key:<6} {value:.4f}" if value is not None else f"{key:<6} n/a (no ground truth of that size)")
    for name, ap in metrics["per_class"].items():
        print(f"  {name:<20} AP {ap:.4f}" if ap is not None else f"  {name:<20} no ground truth")
    print(f"wrote metrics.json, predictions.json, ground_truth.json to {out}")
    return 0


def find_sources(sources: list[str]) -> list[Path]:
    found: list[Path] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            in_folder = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES)
            if not in_folder:
                raise FileNotFoundError(f"no images or videos in folder {path}")
            found += in_folder
        elif path.is_file():
            found.append(path)
        elif any(ch in source for ch in "*?["):
            matches = sorted(Path(p) for p in glob.glob(source, recursive=True) if Path(p).is_file())
            if not matches:
                raise FileNotFoundError(f"no files match {source}")
            found += matches
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    return found


def predict(args) -> int:
    import cv2

    from detector.engine.predictor import Predictor, draw, image_file_problem, read_image
    from detector.errors import DetectorError

    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # FFmpeg prints its own lines for a broken video
    sources = find_sources(args.sources)
    for path in sources:  # before loading the model and writing anything: a bad file stops the run at once
        problem = video_problem(path) if path.suffix.lower() in VIDEO_SUFFIXES else image_file_problem(path)
        if problem:
            raise DetectorError(f"{path}: {problem}")
    predictor = Predictor.from_checkpoint(args.weights, args.device, args.score_thresh, args.max_detections, args.settings)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for path in sources:
        if path.suffix.lower() in VIDEO_SUFFIXES:
            results.append(predict_video(predictor, path, out))
            continue
        image = read_image(path)
        detection = predictor.predict([image])[0]
        cv2.imwrite(str(out / f"{path.stem}.jpg"), draw(image, detection))
        results.append({"file": str(path), "detections": to_json(detection)})
        print(f"{path}: {len(detection['scores'])} detections")
    (out / "predictions.json").write_text(json.dumps(results, indent=1))
    print(f"wrote annotated files and predictions.json to {out}")
    return 0


def video_problem(path: Path) -> str | None:
    import cv2

    capture = cv2.VideoCapture(str(path))
    readable = capture.isOpened()
    capture.release()
    return None if readable else "not a readable video"


def predict_video(predictor, path: Path, out: Path) -> dict:
    import cv2

    from detector.engine.predictor import draw
    from detector.errors import DetectorError

    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise DetectorError(f"{path}: not a readable video")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    writer, frames = None, []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        detection = predictor.predict([rgb])[0]
        annotated = draw(rgb, detection)
        if writer is None:
            height, width = annotated.shape[:2]
            writer = cv2.VideoWriter(str(out / f"{path.stem}.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
        writer.write(annotated)
        frames.append(to_json(detection))
    capture.release()
    if writer is None:
        raise DetectorError(f"{path}: no frames could be read")
    writer.release()
    print(f"{path}: {len(frames)} frames -> {out / (path.stem + '.mp4')}")
    return {"file": str(path), "frames": frames}


def to_json(detection: dict) -> list[dict]:
    return [
        {"bbox_xyxy": [round(float(v), 2) for v in box], "score": round(float(score), 4),
         "category_id": int(category_id), "name": name}
        for box, score, category_id, name in zip(detection["boxes"], detection["scores"], detection["category_ids"], detection["names"])
    ]


def describe_model(args) -> int:
    from detector import build_model, load_config

    config = load_config(args.config, args.overrides)
    model = build_model(config)
    params = list(model.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    backbone = config.model.backbone
    fmt = lambda values: "(" + ", ".join(f"{v:.3f}" for v in values) + ")"  # noqa: E731
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


def datasets(args) -> int:
    from detector.data import datasets as registry

    if args.action == "get":
        registry.get_dataset(args.name, args.local, force=args.force)
        return 0
    print(f"data sets in {registry.data_home()} (${registry.HOME_VARIABLE} to change):")
    for entry in registry.status():
        state = "installed" if entry["installed"] else f"not installed (detector datasets get {entry['name']})"
        print(f"  {entry['name']:<10} {state}\n    {entry['description']}; {entry['license']}\n"
              f"    folder {entry['folder']}\n    source {entry['url']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
