"""Benchmark detector.ops against torchvision: time, peak memory and exact equality.

    python tools/bench_kernels.py            # CUDA when available (Triton kernels), else CPU paths
    python tools/bench_kernels.py --device cpu --threads 1
    TRITON_INTERPRET=1 python tools/bench_kernels.py --suite gpu --backend triton --scale 100
                                             # the GPU case list through Triton's interpreter

Prints one table row per (op, size): our time and torchvision's, the speed-up, peak memory
where it is measured, the largest |difference| of the outputs and whether they are equal.
CUDA: ``triton.testing.do_bench`` median (warm-up and compilation excluded, L2 flushed), inputs
rotated over 4 sets, peak memory from ``torch.cuda.max_memory_allocated`` above the inputs.
CPU: median wall time of a few runs; peak memory as the growth of max RSS in a fresh process.
"""
import argparse
import itertools
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torchvision
from torchvision.models.detection._utils import Matcher

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from detector import ops  # noqa: E402

INPUT_SETS = 4  # inputs rotated between timed calls, so no run reuses the previous one's caches


# ----------------------------------------------------------------------------- inputs
def detection_boxes(count: int, seed: int, device: str, objects: int = 0) -> torch.Tensor:
    """Boxes as a detector proposes them: clusters of jittered boxes around ``objects`` objects
    (count // 20 by default) in a 1333 x 800 image, so NMS has real work to do."""
    generator = torch.Generator().manual_seed(seed)
    objects = objects or max(1, count // 20)
    centers = torch.rand(objects, 2, generator=generator) * torch.tensor([1333.0, 800.0])
    sizes = 16 + torch.rand(objects, 2, generator=generator) * 300
    owner = torch.randint(0, objects, (count,), generator=generator)
    jitter = 1 + 0.25 * torch.randn(count, 4, generator=generator)
    center, half = centers[owner], sizes[owner] / 2
    boxes = torch.cat([center - half * jitter[:, :2], center + half * jitter[:, 2:]], dim=1)
    return boxes.to(device)


def distinct_scores(count: int, seed: int, device: str) -> torch.Tensor:
    # Distinct scores: torchvision's per-class path sorts unstably, so ties could reorder.
    generator = torch.Generator().manual_seed(seed)
    return ((torch.randperm(count, generator=generator).float() + 1) / count).to(device)


def anchors_and_gt(num_anchors: int, num_gt: int, seed: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    return detection_boxes(num_gt, seed, device, objects=num_gt), detection_boxes(num_anchors, seed + 1, device)


# ----------------------------------------------------------------------------- comparisons
def compare(ours: torch.Tensor, theirs: torch.Tensor) -> tuple[str, bool]:
    """(max |difference| as text, exactly equal?) for float matrices (NaN == NaN) or index lists."""
    if ours.shape != theirs.shape:
        return f"shape {tuple(ours.shape)} vs {tuple(theirs.shape)}", False
    if ours.numel() == 0:
        return "0", True
    if ours.is_floating_point():
        same_nan = torch.equal(ours.isnan(), theirs.isnan())
        difference = (ours.nan_to_num(0.0) - theirs.nan_to_num(0.0)).abs().max().item()
        return f"{difference:.1e}", same_nan and difference == 0
    difference = (ours - theirs).abs().max().item()
    return str(difference), difference == 0


def per_image_batched_nms(boxes, scores, classes, images, threshold):
    """torchvision as its RoIHeads uses it: one batched_nms call per image."""
    kept = []
    for image in torch.unique(images):
        members = torch.nonzero(images == image).squeeze(1)
        kept.append(members[torchvision.ops.batched_nms(boxes[members], scores[members], classes[members], threshold)])
    return torch.cat(kept)


def torchvision_match(gt, anchors, high=0.7, low=0.3):
    return Matcher(high, low, allow_low_quality_matches=True)(torchvision.ops.box_iou(gt, anchors))


# ----------------------------------------------------------------------------- cases
SUITES = {  # sizes per op: the GPU targets, and what the CPU paths are checked at
    "gpu": {
        "box_iou": [(1000, 10_000), (2000, 50_000)],
        "nms": [1000, 5000, 10_000, 50_000],
        "batched_nms": [(2, 10_000), (4, 20_000), (8, 50_000)],  # (images, boxes), 80 classes
        "match": [(243_000, 500), (250_000, 2000)],  # (anchors, GT)
    },
    "cpu": {
        "box_iou": [(1000, 10_000)],
        "nms": [1000, 10_000],
        "batched_nms": [(2, 10_000)],
        "match": [(200_000, 100)],
    },
}


def cases(suite: str, device: str, backend: str, scale: int = 1):
    """(op, size, make_inputs(seed) -> args, ours(*args), torchvision(*args)); ``scale``
    divides every size (a quick run of the GPU suite through the interpreter, say)."""
    sizes = SUITES[suite]
    rows = []
    for n, m in sizes["box_iou"]:
        n, m = n // scale, m // scale
        rows.append((
            "box_iou", f"{n} x {m}",
            lambda seed, n=n, m=m: (detection_boxes(n, seed, device), detection_boxes(m, seed + 7, device)),
            lambda a, b: ops.box_iou(a, b, backend=backend),
            torchvision.ops.box_iou,
        ))
    for count in sizes["nms"]:
        count //= scale
        rows.append((
            "nms 0.7", f"{count} boxes",
            lambda seed, count=count: (detection_boxes(count, seed, device), distinct_scores(count, seed, device), 0.7),
            lambda b, s, t: ops.nms(b, s, t, backend=backend),
            torchvision.ops.nms,
        ))
    for images, count in sizes["batched_nms"]:
        count //= scale

        def make(seed, images=images, count=count):
            generator = torch.Generator().manual_seed(seed)
            classes = torch.randint(0, 80, (count,), generator=generator).to(device)
            image_idxs = torch.randint(0, images, (count,), generator=generator).to(device)
            return detection_boxes(count, seed, device), distinct_scores(count, seed, device), classes, image_idxs, 0.5

        rows.append((
            "batched_nms 0.5", f"{images} img x 80 cls, {count} boxes", make,
            lambda b, s, c, i, t: ops.batched_nms(b, s, c, t, backend=backend, image_idxs=i),
            per_image_batched_nms,
        ))
    for num_anchors, num_gt in sizes["match"]:
        num_anchors, num_gt = num_anchors // scale, max(1, num_gt // scale)
        rows.append((
            "match", f"{num_anchors} x {num_gt}",
            lambda seed, a=num_anchors, g=num_gt: anchors_and_gt(a, g, seed, device),
            lambda gt, anchors: ops.match(gt, anchors, backend=backend),
            torchvision_match,
        ))
    return rows


# ----------------------------------------------------------------------------- measuring
def time_cuda(fn, input_sets) -> tuple[float, float]:
    """(median ms over rotated inputs, peak MB allocated above the inputs)."""
    from triton.testing import do_bench

    fn(*input_sets[0])  # compile outside the timing
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn(*input_sets[1])
    torch.cuda.synchronize()
    peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
    rotation = itertools.cycle(input_sets)
    return do_bench(lambda: fn(*next(rotation)), warmup=25, rep=200, return_mode="median"), peak_mb


def time_cpu(fn, input_sets, repeats: int = 5) -> float:
    fn(*input_sets[0])
    times = []
    for args in itertools.islice(itertools.cycle(input_sets), repeats):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def peak_rss_mb(implementation: str, num_anchors: int, num_gt: int) -> float:
    """Peak RSS above the starting RSS while matching, in a fresh process (Linux /proc)."""
    command = [sys.executable, __file__, "--rss-of", implementation, str(num_anchors), str(num_gt)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure_rss_in_this_process(implementation: str, num_anchors: int, num_gt: int) -> None:
    gt, anchors = anchors_and_gt(num_anchors, num_gt, seed=0, device="cpu")
    run = {"ours": lambda g, a: ops.match(g, a), "torchvision": torchvision_match}[implementation]
    run(gt[:5], anchors[:1000])  # load code paths before measuring
    # VmHWM (not getrusage's max RSS, which a child inherits from its parent) reset to now.
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kib("VmRSS")
    run(gt, anchors)
    print((_status_kib("VmHWM") - before) / 1024)


# ----------------------------------------------------------------------------- report
HEADER = "| op | size | ours ms | torchvision ms | speed-up | ours peak MB | torchvision peak MB | max abs diff | equal |"


def row(op, size, ours_ms, theirs_ms, ours_mb, theirs_mb, difference, equal) -> str:
    def number(value, digits=2):
        return value if isinstance(value, str) else f"{value:.{digits}f}"

    speedup = f"{theirs_ms / ours_ms:.2f}x" if isinstance(ours_ms, float) and isinstance(theirs_ms, float) else "-"
    return (
        f"| {op} | {size} | {number(ours_ms)} | {number(theirs_ms)} | {speedup} | {number(ours_mb, 0)} | "
        f"{number(theirs_mb, 0)} | {difference} | {'-' if equal is None else 'yes' if equal else 'NO'} |"
    )


def run_table(suite: str, device: str, backend: str, scale: int) -> None:
    print(HEADER)
    print("|" + "---|" * (HEADER.count("|") - 1))
    for op, size, make_inputs, ours, theirs in cases(suite, device, backend, scale):
        input_sets = [make_inputs(seed) for seed in range(INPUT_SETS)]
        difference, equal = compare(ours(*input_sets[0]), theirs(*input_sets[0]))
        if device == "cuda":
            ours_ms, ours_mb = time_cuda(ours, input_sets)
            theirs_ms, theirs_mb = time_cuda(theirs, input_sets)
        else:
            ours_ms, theirs_ms = time_cpu(ours, input_sets), time_cpu(theirs, input_sets)
            ours_mb = theirs_mb = "-"
        print(row(op, size, ours_ms, theirs_ms, ours_mb, theirs_mb, difference, equal), flush=True)
        del input_sets
        if device == "cuda":
            torch.cuda.empty_cache()
    if suite == "cpu" and device == "cpu" and scale == 1:
        cpu_match_memory()


def cpu_match_memory() -> None:
    """match at 200k x 1,000 on CPU: our peak memory, and torchvision's extrapolated from 200k x 100
    (its dense path is linear in the number of pairs; 7 GB is not worth allocating to show it)."""
    gt, anchors = anchors_and_gt(200_000, 1000, seed=0, device="cpu")
    ours_ms = time_cpu(lambda g, a: ops.match(g, a), [(gt, anchors)], repeats=3)
    ours_mb = peak_rss_mb("ours", 200_000, 1000)
    theirs_mb_at_100 = peak_rss_mb("torchvision", 200_000, 100)
    estimate = f"~{theirs_mb_at_100 * 10:.0f} (est.: 10 x its 200000 x 100)"
    print(row("match", "200000 x 1000", ours_ms, "not run", ours_mb, estimate, "-", None))
    print(f"\nmatch 200000 x 100 peak RSS: ours {peak_rss_mb('ours', 200_000, 100):.0f} MB, "
          f"torchvision {theirs_mb_at_100:.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--suite", choices=["gpu", "cpu"], help="sizes to run (default: the device's)")
    parser.add_argument("--backend", choices=["auto", "triton", "torchvision"], help="ours (default: triton on CUDA, auto on CPU)")
    parser.add_argument("--scale", type=int, default=1, help="divide every size by this (quick checks)")
    parser.add_argument("--rss-of", nargs=3, metavar=("IMPL", "ANCHORS", "GT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_of:
        implementation, num_anchors, num_gt = args.rss_of
        measure_rss_in_this_process(implementation, int(num_anchors), int(num_gt))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU (torch threads: {torch.get_num_threads()})"
    try:
        import triton

        versions = f"torch {torch.__version__}, triton {triton.__version__}"
    except ImportError:
        versions = f"torch {torch.__version__}, no triton"
    print(f"# detector.ops vs torchvision {torchvision.__version__} on {name}; {versions}\n")
    suite = args.suite or ("gpu" if device == "cuda" else "cpu")
    backend = args.backend or ("triton" if device == "cuda" else "auto")
    run_table(suite, device, backend, args.scale)


if __name__ == "__main__":
    main()
