"""The `detector` command line. Thin: it parses arguments, then calls the package.

  detector train CONFIG [key=value ...] [--resume [CHECKPOINT]] [--nproc N]
  detector eval CONFIG --weights W [key=value ...]
  detector predict --weights W SOURCE... [--out DIR] [--score-thresh T] [--max-detections N] [--set KEY=VALUE]
  detector model [CONFIG] [key=value ...]
  detector data CONFIG [key=value ...] [--out DIR]
  detector analyze CONFIG --weights W [key=value ...] [--out DIR] [--score-thresh T] [--worst K]
  detector analyze --gt ground_truth.json --predictions predictions.json [--images DIR] [--out DIR] ...
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

    # detector.analysis: look at the data before training and at the errors after.
    data = commands.add_parser("data", help="data set report before training: class and box statistics, anchor fit "
                                            "and suggested anchors, labels / anchor plots, first training batches")
    data.add_argument("config", help="YAML config naming data.train (and data.val)")
    data.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. model.transform.min_size=800")
    data.add_argument("--out", default=None, help="output folder (default: runs/data/<config name>)")

    analyze = commands.add_parser("analyze", help="error analysis: TIDE error types with their AP50 cost, confusion "
                                                  "matrix, F1 per class, gallery of the images with the most errors")
    analyze.add_argument("config", nargs="?", help="YAML config naming data.val (with --weights)")
    analyze.add_argument("overrides", nargs="*", help="dotted key=value overrides (as `detector eval`)")
    analyze.add_argument("--weights", default=None, help="checkpoint to predict the val set with")
    analyze.add_argument("--gt", default=None, help="COCO ground-truth file (e.g. a run's eval/ground_truth.json)")
    analyze.add_argument("--predictions", default=None, help="COCO results file (e.g. eval/predictions.json)")
    analyze.add_argument("--images", default=None, help="folder the ground truth's file names are relative to")
    analyze.add_argument("--out", default=None, help="output folder (default: the run's eval/analysis/)")
    analyze.add_argument("--score-thresh", type=float, default=None,
                         help="score threshold of the confusion matrix, F1 and gallery (default: the best F1's)")
    analyze.add_argument("--worst", type=int, default=9, help="images in the gallery of the most errors")
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

    commands = {"train": train, "eval": evaluate, "predict": predict, "model": describe_model,
                "data": data_report, "analyze": analyze}
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


def data_report(args) -> int:
    from detector import load_config
    from detector.analysis.data_report import write_data_report
    from detector.analysis.summary import format_data_report

    out = Path(args.out or Path("runs/data") / Path(args.config).stem)
    print(format_data_report(write_data_report(load_config(args.config, args.overrides), out, args.config), out))
    return 0


def analyze(args) -> int:
    from detector.analysis.analyze import analyze_checkpoint, analyze_files
    from detector.analysis.summary import format_analysis
    from detector.errors import DetectorError

    if args.worst < 0 or (args.score_thresh is not None and not 0 <= args.score_thresh <= 1):
        raise DetectorError("--worst must be >= 0 and --score-thresh in 0..1")
    options = {"score_threshold": args.score_thresh, "worst": args.worst, "image_root": args.images}
    if args.gt or args.predictions:
        if not (args.gt and args.predictions) or args.config or args.weights:
            raise DetectorError("give either --gt and --predictions, or CONFIG and --weights")
        result = analyze_files(args.gt, args.predictions, args.out, **options)
    elif args.config and args.weights:
        from detector import load_config
        from detector.config import parse_override

        config = load_config(args.config, args.overrides)
        test_time = [o for o in args.overrides if parse_override(o)[0].startswith("model.")]
        result = analyze_checkpoint(config, args.weights, args.out, test_time, **options)
    else:
        raise DetectorError("give either --gt and --predictions, or CONFIG and --weights")
    print(format_analysis(result, Path(result["files"][0]).parent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
