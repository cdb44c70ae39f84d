"""The `detector` command line. Thin: it parses arguments, then calls the package.

  detector train CONFIG [key=value ...] [--resume [CHECKPOINT]] [--nproc N]
  detector eval CONFIG --weights W [key=value ...] [SLICE] [BACKEND]
  detector predict --weights W SOURCE... [key=value ...] [--out DIR] [--score-thresh T] [--max-detections N]
                   [--set KEY=VALUE] [--strict] [SLICE] [--ray [ADDRESS] ...] [BACKEND]
  detector model [CONFIG] [key=value ...]
  detector export --weights W [--out F.onnx] [--opset N] [--set KEY=VALUE]
                  [--int8 [--calibration CONFIG] [--calibration-images N] [--max-ap-drop D] [--force]]
  detector serve --weights W [--host 127.0.0.1] [--port 8000] [--set KEY=VALUE] [SLICE] [BACKEND] ...
  detector datasets [get NAME [--from PATH] [--force]]
  detector data CONFIG [key=value ...] [--out DIR]
  detector analyze CONFIG --weights W [key=value ...] [--out DIR] [--score-thresh T] [--worst K] [SLICE] [BACKEND]
  detector analyze --gt ground_truth.json --predictions predictions.json [--images DIR] [--out DIR] ...

--weights of eval, analyze, predict and serve is a checkpoint (.pt, run by PyTorch) or a `.onnx`
file of `detector export`, run by ONNX Runtime or, with BACKEND = `--backend openvino
[--precision bf16]`, by OpenVINO; all load through detector.inference, which also applies the
test-time settings (model.*) by one rule. SLICE = `--slice SIZE [--overlap F] [--full-image]`
predicts on overlapping tiles and merges them (inference/slicing.py; config inference.slice.*).
`--tta [SCALES|off]` (eval, predict, analyze) adds mirrored and resized views, merged the same
way (inference/tta.py; config inference.tta.*). key=value overrides may come before or after any
option (arguments.py).

Every command exits with one contract (exit_status.py, docs/reliability.md "Exit codes"): 0 done; 1 done, with
some inputs skipped, each named (predict's sources, the val images of eval and analyze, the
images train could not read); 2 a usage, config, input or checkpoint error, or an output path
that cannot be written, told in one line `detector COMMAND: message`; 3 an unexpected internal
error (a bug), told in one line naming a file that holds the traceback; 130 interrupted.
`train --nproc N` exits with the same codes, taken from its processes rather than from torchrun.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from detector.arguments import ArgumentParser, add_overrides, parse_command_line
from detector.serve import MAX_PIXELS


COMPILE_HELP = ("torch.compile the backbone and RPN head of a .pt model; each new image size pays a compilation "
                "(tools/bench_compile.py measures whether it pays on your machine)")
WEIGHTS_HELP = "checkpoint written by `detector train` (.pt), or its `detector export` (.onnx)"
EXIT_STATUS_HELP = ("Exit status (every command): 0 done; 1 done, some inputs skipped and named; 2 a usage, config, "
                    "input, checkpoint or output-path error, in one line; 3 an internal error (a bug), in one line "
                    "naming the file that holds its traceback; 130 interrupted.")


def add_settings(parser: argparse.ArgumentParser, help: str) -> None:
    """--set KEY=VALUE (repeatable): a test-time setting, the same as a bare key=value override."""
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="settings",
                        help=f"{help} (repeatable)")


def add_backend_options(parser: argparse.ArgumentParser) -> None:
    """--backend and --precision: how a command runs an exported .onnx (inference/loading.py)."""
    from detector.choices import BACKENDS, PRECISIONS

    parser.add_argument("--backend", choices=BACKENDS, default=None,
                        help="runtime of a .onnx --weights (default: onnxruntime); a .pt runs in PyTorch")
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="OpenVINO's inference precision, with --backend openvino (default f32; bf16 is faster "
                             "on CPUs with AVX512_BF16 or AMX, and gives slightly different detections)")


def add_slice_options(parser: argparse.ArgumentParser, default: str) -> None:
    """--slice, --overlap, --full-image: sliced prediction of large images (inference/slicing.py);
    unset, the `inference.slice` of `default` applies."""
    parser.add_argument("--slice", type=int, default=None, metavar="SIZE",
                        help=f"predict in overlapping SIZE x SIZE tiles, merged into one result (small objects on "
                             f"large images); 0 = the whole image at once (default: inference.slice.size of {default})")
    parser.add_argument("--overlap", type=float, default=None, metavar="F",
                        help="fraction of a tile shared with its neighbour, in [0, 0.9) (default 0.2); make it cover "
                             "the largest object")
    parser.add_argument("--full-image", action="store_true", default=None,
                        help="with --slice, also predict the whole image (objects larger than a tile)")


def slice_changes(args) -> dict:
    """The slicing options given on the command line (those left unset are None)."""
    return {"size": args.slice, "overlap": args.overlap, "full_image": args.full_image}


TTA_VALUE = re.compile(r"\d+(,\d+)*|off")  # --tta's optional value: scales, or off


def add_tta_option(parser: argparse.ArgumentParser, default: str) -> None:
    """--tta [SCALES|off]: test-time augmentation (inference/tta.py); unset, the `inference.tta`
    of `default` applies."""
    tta = parser.add_argument(
        "--tta", nargs="?", const="", default=None, metavar="SCALES|off",
        help="test-time augmentation: also predict the mirrored image, at the model's own size or, with SCALES "
             "(comma-separated min_size values, e.g. 480,600,720), at each of those; views merged as tiles are. "
             f"off: none (default: inference.tta of {default}; docs/tta.md)")
    tta.accepts_value = lambda token: TTA_VALUE.fullmatch(token) is not None  # else a source or a key=value


def tta_changes(args) -> dict:
    """The TTA the command line asks for: {} without --tta (the config's applies); the mirror at
    the model's own size (--tta), or at the SCALES given; nothing with --tta off."""
    from detector.errors import ConfigError

    if args.tta is None:
        return {}
    if args.tta and not TTA_VALUE.fullmatch(args.tta):
        raise ConfigError(f"--tta {args.tta}: comma-separated min_size values (inference.tta.scales), "
                          "e.g. --tta 480,600,720, or off")
    if args.tta == "off":
        return {"hflip": False, "scales": ()}
    return {"hflip": True, "scales": tuple(int(s) for s in args.tta.split(",")) if args.tta else ()}


def build_parser() -> argparse.ArgumentParser:
    """Every command; one that takes key=value overrides declares them with `add_overrides`
    (they may then come before or after any option: arguments.py)."""
    from detector.export.onnx import DEFAULT_OPSET, MIN_OPSET

    parser = ArgumentParser(prog="detector", description="Faster R-CNN you can train, trust and read.",
                            epilog=EXIT_STATUS_HELP)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train from a YAML config; writes a run folder",
                                description="Trains from a YAML config and writes a run folder. " + EXIT_STATUS_HELP
                                + " Here 1 means some images could not be read and were skipped (each named in "
                                  "the run's train.log); with --nproc the status comes from the processes (the first "
                                  "to fail), not from torchrun.")
    train.add_argument("config", help="YAML config, e.g. configs/demo.yaml")
    add_overrides(train, "dotted key=value overrides, e.g. train.epochs=3")
    resume = train.add_argument("--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT",
                                help="continue a stopped run (default: <output>/weights/last.pt); "
                                     "a key=value or a .yaml after it is not taken as the checkpoint")
    resume.accepts_value = lambda token: not token.endswith((".yaml", ".yml"))
    train.add_argument("--nproc", type=int, default=1, metavar="N",
                       help="train with N processes on this machine (DDP through torchrun: one per GPU, "
                            "or CPU processes with gloo); for several machines run torchrun yourself")

    evaluate = commands.add_parser("eval", help="COCO mAP of a checkpoint on the config's val set")
    evaluate.add_argument("config", help="YAML config naming data.val")
    add_overrides(evaluate, "dotted key=value overrides: data.* and train.batch_size pick the data; model.* "
                            "changes a test-time setting of the checkpoint's model, e.g. model.roi_heads.nms_method=gaussian")
    evaluate.add_argument("--weights", required=True, help=WEIGHTS_HELP)
    evaluate.add_argument("--out", default=None, help="folder for metrics.json, predictions.json, ground_truth.json")
    evaluate.add_argument("--compile", action="store_true", help=COMPILE_HELP)
    add_backend_options(evaluate)
    add_slice_options(evaluate, "the config")
    add_tta_option(evaluate, "the config")

    predict = commands.add_parser(
        "predict", help="detect objects in images, folders, globs and videos",
        description="Predicts every readable source and names each one it skips. Exit status: 0 when "
                    "every source was predicted, 1 when some were skipped, 2 when none could be (or on "
                    "a usage error).")
    predict.add_argument("sources", nargs="+", help="image or video files, folders, glob patterns, or @LIST: a text "
                                                    "file naming one of these per line")
    add_overrides(predict, "test-time settings of the model, as --set, e.g. model.roi_heads.nms_method=hard")
    predict.add_argument("--weights", required=True, help=WEIGHTS_HELP)
    predict.add_argument("--out", default="runs/predict",
                         help="folder for annotated images/videos, predictions.json and skipped.txt")
    predict.add_argument("--score-thresh", type=float, default=None, help="keep detections scoring above this")
    predict.add_argument("--max-detections", type=int, default=None, help="at most this many detections per image")
    add_settings(predict, "a test-time setting of the model, e.g. --set model.roi_heads.nms_method=hard")
    predict.add_argument("--strict", action="store_true",
                         help="stop at the first source that cannot be read (exit 2) instead of skipping it")
    predict.add_argument("--device", default="auto",
                         help="where a .pt checkpoint runs: auto (CUDA when available, else CPU), cpu, cuda or "
                              "cuda:N; a .onnx runs on the CPU")
    predict.add_argument("--compile", action="store_true", help=COMPILE_HELP)
    add_backend_options(predict)
    add_slice_options(predict, "the config saved with the weights")
    add_tta_option(predict, "the config saved with the weights")
    add_ray_options(predict)

    export = commands.add_parser("export", help="write a checkpoint as one ONNX file (dynamic batch and image size)")
    add_overrides(export, "test-time settings baked into the file, as --set, e.g. model.roi_heads.score_thresh=0.3")
    export.add_argument("--weights", required=True, help="checkpoint written by `detector train`")
    export.add_argument("--out", default=None, help="the .onnx file to write (default: beside the weights)")
    export.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET}, >= {MIN_OPSET})")
    add_settings(export, "a test-time setting baked into the file, e.g. --set model.roi_heads.score_thresh=0.3")
    int8 = export.add_argument_group("INT8 (the backbone quantized; heads and post-processing stay FP32)")
    int8.add_argument("--int8", action="store_true",
                      help="write an INT8 file (default name: WEIGHTS.int8.onnx), calibrated on training images and "
                           "gated on the val set's AP50")
    int8.add_argument("--calibration", default=None, metavar="CONFIG",
                      help="config whose data.train calibrates and whose data.val gates (default: the checkpoint's)")
    int8.add_argument("--calibration-images", type=int, default=None, metavar="N",
                      help="training images to calibrate on (default 300, or all when fewer; at least 8)")
    int8.add_argument("--max-ap-drop", type=float, default=None, metavar="D",
                      help="refuse to write the file when val AP50 drops by more than D (default 0.01)")
    int8.add_argument("--force", action="store_true", help="write the INT8 file even when the gate refuses it")
    int8.add_argument("--keep-fp32", action="append", default=None, metavar="LAYER",
                      help="a backbone layer (module path, e.g. backbone.body.stem) left in FP32, replacing the "
                           "measured default list (repeatable)")

    serve = commands.add_parser("serve", help="HTTP server: POST /predict an image, get the detections as JSON")
    add_overrides(serve, "test-time settings of the model, as --set, e.g. model.roi_heads.score_thresh=0.3")
    serve.add_argument("--weights", required=True, help=WEIGHTS_HELP)
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (0.0.0.0: every interface); beyond loopback with no token set, "
                            "a warning is printed")
    serve.add_argument("--port", type=int, default=8000, help="TCP port to listen on")
    serve.add_argument("--device", default="auto",
                       help="where a .pt checkpoint runs: auto (CUDA when available, else CPU), cpu, cuda or "
                            "cuda:N; a .onnx runs on the CPU")
    serve.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                       help=f"uploads declaring more pixels are refused from their header (413; default {MAX_PIXELS})")
    add_serve_limits(serve)
    add_settings(serve, "a test-time setting of the model, e.g. --set model.roi_heads.score_thresh=0.3")
    add_backend_options(serve)
    add_slice_options(serve, "the config saved with the weights")

    model = commands.add_parser("model", help="describe the model a config builds")
    model.add_argument("config", nargs="?", help="YAML config (default: the built-in defaults)")
    add_overrides(model, "dotted key=value overrides, e.g. model.backbone.fpn=true")

    datasets = commands.add_parser("datasets", help="list the known real data sets, or install one (get)",
                                   description="Without arguments: list the known data sets and where they are "
                                               "installed ($DETECTOR_DATA, default ~/.cache/detector/datasets).")
    actions = datasets.add_subparsers(dest="action")
    get = actions.add_parser("get", help="download (or copy --from a local copy), verify and install a data set")
    get.add_argument("name", help="data set name, e.g. raccoon or bccd")
    get.add_argument("--from", dest="local", default=None, metavar="PATH",
                     help="install from a local copy in the installed COCO layout instead of downloading")
    get.add_argument("--force", action="store_true", help="reinstall even if it is installed")

    # detector.analysis: look at the data before training and at the errors after.
    data = commands.add_parser("data", help="data set report before training: class and box statistics, anchor fit "
                                            "and suggested anchors, labels / anchor plots, first training batches")
    data.add_argument("config", help="YAML config naming data.train (and data.val)")
    add_overrides(data, "dotted key=value overrides, e.g. model.transform.min_size=800")
    data.add_argument("--out", default=None, help="output folder (default: runs/data/<config name>)")

    analyze = commands.add_parser("analyze", help="error analysis: TIDE error types with their AP50 cost, confusion "
                                                  "matrix, F1 per class, gallery of the images with the most errors")
    analyze.add_argument("config", nargs="?", help="YAML config naming data.val (with --weights)")
    add_overrides(analyze, "dotted key=value overrides (as `detector eval`)")
    analyze.add_argument("--weights", default=None, help="checkpoint (.pt) or its export (.onnx) to predict the val set with")
    analyze.add_argument("--gt", default=None, help="COCO ground-truth file (e.g. a run's eval/ground_truth.json)")
    analyze.add_argument("--predictions", default=None, help="COCO results file (e.g. eval/predictions.json)")
    analyze.add_argument("--images", default=None, help="folder the ground truth's file names are relative to")
    analyze.add_argument("--out", default=None, help="output folder (default: the run's eval/analysis/)")
    analyze.add_argument("--score-thresh", type=float, default=None,
                         help="score threshold of the confusion matrix, F1 and gallery (default: the best F1's)")
    analyze.add_argument("--worst", type=int, default=9, help="images in the gallery of the most errors")
    analyze.add_argument("--iou", type=float, default=0.5, metavar="T",
                         help="foreground IoU a detection needs to be right (TIDE's t_f; default 0.5): at 0.75 the "
                              "boxes right at 0.5 but not tight become loc errors, and AP reads AP75")
    add_backend_options(analyze)
    add_slice_options(analyze, "the config")
    add_tta_option(analyze, "the config")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; its exit status follows exit_status.py's contract (0 done, 1 some inputs
    skipped, 2 a usage/config/input/checkpoint/path error in one line, 3 a bug, 130 interrupted)."""
    args = parse_command_line(build_parser(), sys.argv[1:] if argv is None else argv)  # usage errors: 2
    from detector import exit_status

    commands = {"train": train, "eval": evaluate, "predict": predict, "model": describe_model, "export": export,
                "serve": serve, "datasets": datasets, "data": data_report, "analyze": analyze}
    return exit_status.run(args.command, lambda: commands[args.command](args))


def train(args) -> int:
    from detector import ConfigError, load_config
    from detector.engine.distributed import is_main, launched_by_torchrun, shutdown
    from detector.engine.trainer import Trainer

    if args.nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {args.nproc}")
    if args.nproc > 1 and not launched_by_torchrun():
        return launch_torchrun(args)

    try:
        trainer = Trainer(load_config(args.config, args.overrides), resume=args.resume)
        metrics = trainer.fit()
        main = is_main()
    finally:
        shutdown()
    if main and metrics and metrics["AP"] is not None:
        print(f"val AP {metrics['AP']:.4f}  AP50 {metrics['AP50']:.4f}")
    skipped = trainer.count_skipped_images(metrics)
    if skipped:
        print(f"{skipped} image(s) skipped, each named in {trainer.run_dir / 'train.log'}"
              f"{' (this process)' if not main else ''}", file=sys.stderr)
    return 1 if skipped else 0


def launch_torchrun(args) -> int:
    """Re-run this `detector train` under torchrun with `args.nproc` processes on this machine,
    with the exit status of a single process: the config is checked here first (2 before any
    process starts), and each process writes its status to a folder that exit_status.from_workers
    reads, since torchrun itself reports any failure as 1."""
    import os
    import subprocess
    import tempfile

    from detector import exit_status, load_config
    from detector.engine.builders import check_training_config

    check_training_config(load_config(args.config, args.overrides))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
               "-m", "detector.cli", "train", args.config, *args.overrides]
    if args.resume is not None:
        command += ["--resume"] + ([] if args.resume is True else [str(args.resume)])
    print("launching: " + " ".join(command), flush=True)
    with tempfile.TemporaryDirectory(prefix="detector-train-status-") as statuses:
        done = subprocess.run(command, env={**os.environ, exit_status.WORKER_STATUS_DIR: statuses})
        return exit_status.from_workers(done.returncode, statuses, args.nproc)


def evaluate(args) -> int:
    from detector import load_config
    from detector.config_checks import check_data_paths
    from detector.data import CategoryMap, load_dataset
    from detector.engine.evaluation import evaluate_model
    from detector.engine.evaluator import format_size_table
    from detector.inference import load_predictor
    from detector.inference.overrides import select_test_time_overrides
    from detector.inference.slicing import SliceSettings
    from detector.inference.tta import TtaSettings

    config = load_config(args.config, args.overrides)
    if config.data.val is None:
        print(f"detector eval: {args.config} has no data.val", file=sys.stderr)
        return 2
    check_data_paths(config.data)
    slicing = SliceSettings.from_config(config.inference.slice, **slice_changes(args))
    tta = TtaSettings.from_config(config.inference.tta, **tta_changes(args))
    # The checkpoint's config builds the model; the overrides meant for it change its test-time
    # settings (inference/overrides.py: the others are refused by name); the rest pick the data.
    test_time = select_test_time_overrides(args.overrides)
    predictor = load_predictor(args.weights, device=config.train.device, overrides=test_time, compile=args.compile,
                               backend=args.backend, precision=args.precision, slicing=slicing, tta=tta)
    if test_time:
        print("test-time settings: " + " ".join(test_time))
    if slicing.enabled:
        print(slicing.describe())
    if tta.enabled:
        print(tta.describe())
    categories = CategoryMap(tuple(predictor.category_ids), tuple(predictor.category_names))
    dataset = load_dataset(config.data.val, categories, policy=config.data.policy)
    out = Path(args.out or Path(config.output) / "eval")
    metrics = evaluate_model(predictor.model, dataset, predictor.device, out, batch_size=config.train.batch_size,
                             workers=config.data.workers, draw=config.train.num_val_images_drawn)
    # Images the reader skipped at load time (missing, truncated, ...) and those that failed to decode.
    skipped = [str(p) for p in dataset.report.skipped_images] + metrics["skipped_images"]
    for sample in skipped:
        print(f"WARNING: {sample}; left out of the metrics", file=sys.stderr)
    for key in ("AP", "AP50", "AP75", "AR100"):
        value = metrics[key]
        print(f"{key:<6} {value:.4f}" if value is not None else f"{key:<6} n/a (no ground truth)")
    print("\n".join(format_size_table(metrics)))  # APs, APm, APl with their boxes and detections
    for name, ap in metrics["per_class"].items():
        print(f"  {name:<20} AP {ap:.4f}" if ap is not None else f"  {name:<20} no ground truth")
    print(f"wrote metrics.json, predictions.json, ground_truth.json to {out}")
    scored = len(dataset) - len(metrics["skipped_images"])
    print(f"val images: {scored} scored, {len(skipped)} skipped" + (" (named above)" if skipped else ""))
    return 1 if skipped else 0


def add_ray_options(predict: argparse.ArgumentParser) -> None:
    """--ray [ADDRESS] and the options of a run on a Ray cluster (inference/ray_predict.py)."""
    ray = predict.add_argument(
        "--ray", nargs="?", const="", default=None, metavar="ADDRESS",
        help="predict on a Ray cluster (pip install 'detector[ray]'): ADDRESS is HOST:PORT, ray://HOST:PORT or "
             "auto; without it, RAY_ADDRESS or a Ray runtime started on this machine. Writes JSON Lines shards "
             "and a manifest to --out (no annotated images); a rerun with the same --out resumes")
    ray.accepts_value = is_ray_address
    predict.add_argument("--workers", type=int, default=None, metavar="N",
                         help="with --ray: predicting actors, each loads the model once (default 1)")
    predict.add_argument("--batch-size", type=int, default=None, metavar="N",
                         help="with --ray: images per actor batch (default 4)")
    predict.add_argument("--shard-size", type=int, default=None, metavar="N",
                         help="with --ray: records per JSON Lines shard, the most a crash makes redo (default 1000)")
    predict.add_argument("--cpus-per-worker", type=float, default=None, metavar="X",
                         help="with --ray: CPUs each actor reserves, and its torch threads (default 1)")
    predict.add_argument("--gpus-per-worker", type=float, default=None, metavar="X",
                         help="with --ray: GPUs each actor reserves (default 0; 1 for one model per GPU)")
    predict.add_argument("--merge", action="store_true",
                         help="with --ray: merge the shards into one COCO predictions.json at the end")


def is_ray_address(token: str) -> bool:
    """Whether the token after a bare --ray is its ADDRESS (imported when asked: Ray is optional)."""
    from detector.inference.ray_predict import looks_like_address

    return looks_like_address(token)


RAY_ONLY = ("workers", "batch_size", "shard_size", "cpus_per_worker", "gpus_per_worker", "merge")


def predictor_spec(args) -> dict:
    """The keyword arguments of `load_predictor` for `detector predict`, as plain data: local
    predict passes them to it, and every Ray actor does the same with its copy."""
    spec = {"weights": str(args.weights), "device": args.device, "score_thresh": args.score_thresh,
            "max_detections": args.max_detections, "overrides": list(args.settings + args.overrides),
            "compile": args.compile, "backend": args.backend, "precision": args.precision,
            "slicing": slice_changes(args)}
    tta = tta_changes(args)
    return {**spec, "tta": tta} if tta else spec  # without --tta, a --ray folder of an older version still resumes


def predict(args) -> int:
    from detector.errors import DetectorError
    from detector.inference import load_predictor
    from detector.inference.runner import predict_sources

    given = [f"--{name.replace('_', '-')}" for name in RAY_ONLY if getattr(args, name) not in (None, False)]
    if args.ray is not None:
        if args.strict:
            raise DetectorError("--strict: a --ray run skips and names bad files (skipped.txt); run without --ray "
                                "to stop at the first one")
        return predict_with_ray(args)
    if given:
        raise DetectorError(f"{', '.join(given)}: only with --ray")
    from detector.inference.sources import check_source_lists

    check_source_lists(args.sources)
    predictor = load_predictor(**predictor_spec(args))
    if hasattr(predictor, "settings"):  # sliced (inference/slicing.py)
        print(predictor.settings.describe())
    if hasattr(predictor, "tta"):  # inference/tta.py
        print(predictor.tta.describe())
    out = Path(args.out)
    try:
        run = predict_sources(predictor, args.sources, out, strict=args.strict,
                              warn=lambda message: print(f"detector predict: {message}", file=sys.stderr))
    except KeyboardInterrupt:
        print(f"detector predict: interrupted; what was predicted so far is in {out}", file=sys.stderr)
        return 130
    skipped = f"; {len(run.skipped)} skipped, listed in {out / 'skipped.txt'}" if run.skipped else ""
    print(f"predicted {len(run.predicted)} of {len(run.predicted) + len(run.skipped)} sources{skipped}; "
          f"wrote annotated files and predictions.json to {out}")
    return run.exit_code


def predict_with_ray(args) -> int:
    from detector.inference.ray_predict import RayOptions, predict_on_ray

    options = RayOptions(**{name: getattr(args, name) for name in RAY_ONLY if getattr(args, name) is not None},
                         address=args.ray or None)
    out = Path(args.out)
    try:
        run = predict_on_ray(predictor_spec(args), args.sources, out, options,
                             warn=lambda message: print(f"detector predict: {message}", file=sys.stderr))
    except KeyboardInterrupt:
        print(f"detector predict: interrupted; the finished shards are in {out}, and a rerun with the same "
              "--out predicts the rest", file=sys.stderr)
        return 130
    skipped = f"; {run.skipped} skipped, listed in {out / 'skipped.txt'}" if run.skipped else ""
    resumed = f" ({run.resumed} by an earlier run)" if run.resumed else ""
    merged = f"; merged into {run.merged}" if run.merged else ""
    print(f"predicted {run.predicted} of {run.predicted + run.skipped} sources{resumed}{skipped}; "
          f"wrote JSON Lines shards to {out / 'shards'}{merged}")
    return run.exit_code


def export(args) -> int:
    from detector.errors import ConfigError
    from detector.export.onnx import export_onnx, signature

    overrides = args.settings + args.overrides
    int8_options = {"--calibration": args.calibration, "--calibration-images": args.calibration_images,
                    "--max-ap-drop": args.max_ap_drop, "--force": args.force or None, "--keep-fp32": args.keep_fp32}
    if not args.int8:
        given = [option for option, value in int8_options.items() if value is not None]
        if given:
            raise ConfigError(f"{', '.join(given)}: only with --int8")
        out = export_onnx(args.weights, args.out, opset=args.opset, overrides=overrides)
        print("\n".join(signature(out)))
        print(f"wrote {out}")
        return 0
    return export_int8_file(args, overrides)


def export_int8_file(args, overrides: list[str]) -> int:
    """`detector export --int8`: the gate's numbers, then the file or the refusal (exit 2)."""
    from detector.errors import ExportError
    from detector.export import int8
    from detector.export.calibration import DEFAULT_CALIBRATION_IMAGES
    from detector.export.onnx import signature

    result = int8.export_int8(
        args.weights, args.out, calibration=args.calibration,
        calibration_images=args.calibration_images if args.calibration_images is not None else DEFAULT_CALIBRATION_IMAGES,
        max_ap_drop=args.max_ap_drop if args.max_ap_drop is not None else int8.DEFAULT_MAX_AP_DROP, force=args.force,
        keep_fp32=args.keep_fp32 if args.keep_fp32 is not None else int8.KEEP_FP32, opset=args.opset,
        overrides=overrides, log=print)
    print("\n".join(int8.describe(result)))
    if result.path is None:
        raise ExportError(f"INT8 AP50 {result.int8['AP50']:.4f} is {result.ap50_drop:.4f} below FP32's "
                          f"{result.fp32['AP50']:.4f}, more than --max-ap-drop {result.max_ap_drop}; no file written "
                          "(--keep-fp32 LAYER leaves the layers tools/int8_sensitivity.py finds most sensitive in "
                          "FP32; --force writes it anyway)")
    print("\n".join(signature(result.path)))
    print(f"wrote {result.path}" + (" (forced past the gate)" if not result.passed else ""))
    return 0


def add_serve_limits(serve: argparse.ArgumentParser) -> None:
    """serve's limits, queue and access options (their defaults: detector/serving/settings.py)."""
    from detector.serving.settings import TOKEN_VARIABLE, ServeSettings

    default = ServeSettings()
    serve.add_argument("--max-upload-bytes", type=int, default=default.max_upload_bytes,
                       help=f"larger image files are refused while streaming (413; default {default.max_upload_bytes})")
    serve.add_argument("--queue", type=int, default=default.queue_size, dest="queue_size",
                       help=f"requests in progress at once; more get 503 + Retry-After (default {default.queue_size})")
    serve.add_argument("--timeout", type=float, default=default.timeout_s, dest="timeout_s",
                       help=f"seconds for one request, upload to answer (408 / 503; default {default.timeout_s:g})")
    serve.add_argument("--max-batch", type=int, default=default.max_batch,
                       help=f"concurrent requests predicted in one batch (default {default.max_batch})")
    serve.add_argument("--max-wait-ms", type=float, default=default.max_wait_ms,
                       help=f"how long a batch waits to fill (default {default.max_wait_ms:g})")
    serve.add_argument("--workers", type=int, default=default.workers,
                       help="inference threads (default 1: one batch already uses every core)")
    serve.add_argument("--token", default=None,
                       help=f"bearer token required on /predict and /metrics (401 without it); prefer ${TOKEN_VARIABLE}, "
                            "which other users of the machine cannot read from the process list")
    serve.add_argument("--cors-origin", action="append", default=[], dest="cors_origins", metavar="ORIGIN",
                       help="a browser origin allowed to call the API, e.g. https://app.example.com "
                            "(repeatable; none by default)")
    serve.add_argument("--docs", action="store_true", help="serve the API docs at /docs and /openapi.json (off by default)")


def serve(args) -> int:
    import os

    from detector.serve import ServeSettings, run_server
    from detector.serving.settings import TOKEN_VARIABLE

    settings = ServeSettings(max_upload_bytes=args.max_upload_bytes, max_pixels=args.max_pixels,
                             queue_size=args.queue_size, timeout_s=args.timeout_s, max_batch=args.max_batch,
                             max_wait_ms=args.max_wait_ms, workers=args.workers,
                             token=args.token if args.token is not None else os.environ.get(TOKEN_VARIABLE),
                             cors_origins=tuple(args.cors_origins), docs=args.docs)
    run_server(args.weights, host=args.host, port=args.port, device=args.device, settings=settings,
               overrides=args.settings + args.overrides, backend=args.backend, precision=args.precision,
               slicing=slice_changes(args))
    return 0


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


def data_report(args) -> int:
    from detector import load_config
    from detector.analysis.data_report import write_data_report
    from detector.analysis.summary import format_data_report

    out = Path(args.out or Path("runs/data") / Path(args.config).stem)
    report = write_data_report(load_config(args.config, args.overrides), out, args.config)
    print(format_data_report(report, out))
    for problem in report["skipped_images"]:
        print(f"WARNING: {problem}; left out of the report", file=sys.stderr)
    return 1 if report["skipped_images"] else 0


def analyze(args) -> int:
    from detector.analysis.analyze import analyze_checkpoint, analyze_files
    from detector.analysis.summary import format_analysis
    from detector.errors import DetectorError

    if args.worst < 0 or (args.score_thresh is not None and not 0 <= args.score_thresh <= 1):
        raise DetectorError("--worst must be >= 0 and --score-thresh in 0..1")
    options = {"score_threshold": args.score_thresh, "worst": args.worst, "image_root": args.images, "iou": args.iou}
    if args.gt or args.predictions:
        if not (args.gt and args.predictions) or args.config or args.weights:
            raise DetectorError("give either --gt and --predictions, or CONFIG and --weights")
        result = analyze_files(args.gt, args.predictions, args.out, **options)
    elif args.config and args.weights:
        from detector import load_config
        from detector.inference.overrides import select_test_time_overrides

        config = load_config(args.config, args.overrides)
        from detector.inference.slicing import SliceSettings
        from detector.inference.tta import TtaSettings

        slicing = SliceSettings.from_config(config.inference.slice, **slice_changes(args))
        tta = TtaSettings.from_config(config.inference.tta, **tta_changes(args))
        result = analyze_checkpoint(config, args.weights, args.out, select_test_time_overrides(args.overrides),
                                    backend=args.backend, precision=args.precision, slicing=slicing, tta=tta,
                                    **options)
        for sample in result["skipped_images"]:
            print(f"WARNING: {sample}; left out of the analysis", file=sys.stderr)
    else:
        raise DetectorError("give either --gt and --predictions, or CONFIG and --weights")
    print(format_analysis(result, Path(result["files"][0]).parent))
    return 1 if result.get("skipped_images") else 0


if __name__ == "__main__":
    sys.exit(main())
