"""Does a training option pay? Train a recipe with each option off and on, over several seeds:

    python tools/ablation.py configs/shapes_imbalanced.yaml --seeds 2 \
        --options rfs=data.sampler=repeat_factor ema=train.ema=true [--all] [--set key=value ...]

An option is NAME=KEY=VALUE; give one NAME several times to switch several keys together
(`ms=model.transform.train_min_sizes=[224,256,288]`). The variants are the recipe as it is
("baseline"), each option alone on, and with `--all` every option at once; each trains with
train.seed = 0..N-1 (`--first-seed`) into OUTPUT/<variant>/seed<k>/, whose results.json (numbers
and the run's whole config) a rerun reuses while the config is the same: an interrupted ablation
continues where it stopped, and a run of a recipe edited since then trains again. Every variant's
config is loaded once, before the first run: a misspelt key fails at once, naming it, and an edit
of the YAML files while the ablation runs changes none of its runs.

An option that sets only keys training never reads (detection post-processing such as
`model.roi_heads.nms_method`, `inference.tta.*`: detector/inference/overrides.py EVAL_ONLY_KEYS)
is not trained: its variant evaluates the baseline's final weights of the same seed
(OUTPUT/baseline/seed<k>/weights/last.pt) on data.val, as `detector eval` would with that config.
Its change is then paired, seed by seed, and the table gives its range over the seeds, free of
the spread that training adds. (With train.patience, validation decides when training stops, so
every option trains.)

Prints, and writes to OUTPUT/ablation.md, one table: per variant the mean and spread over seeds
(sample standard deviation, and min-max) of AP, AP50, AP_small, each class's AP and the wall time
of the run (training and its evaluations), with the difference of each mean to the baseline's;
then every run's own numbers.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector import load_config  # noqa: E402
from detector.config import Config, config_to_dict, flatten_config, parse_override  # noqa: E402
from detector.errors import ConfigError  # noqa: E402
from detector.inference.overrides import is_eval_only  # noqa: E402

BASELINE = "baseline"


def parse_options(specs: list[str]) -> dict[str, list[str]]:
    """{name: [key=value, ...]} from NAME=KEY=VALUE strings, in the order first given."""
    options: dict[str, list[str]] = {}
    for spec in specs:
        name, _, override = spec.partition("=")
        key, sep, _ = override.partition("=")
        if not name or not key or not sep:
            raise ConfigError(f"--options {spec!r}: expected NAME=KEY=VALUE, e.g. ema=train.ema=true")
        if name in (BASELINE, "all"):
            raise ConfigError(f"--options {spec!r}: {name!r} names a variant of its own; call the option otherwise")
        options.setdefault(name, []).append(override)
    if not options:
        raise ConfigError("--options: name at least one option, e.g. ema=train.ema=true")
    return options


def variants(options: dict[str, list[str]], with_all: bool) -> dict[str, list[str]]:
    """{variant: its overrides}: the baseline, each option alone, and (with_all) all together."""
    chosen = {BASELINE: [], **options}
    if with_all and len(options) > 1:
        chosen["all"] = [override for overrides in options.values() for override in overrides]
    return chosen


def load_variants(config: str, chosen: dict[str, list[str]]) -> dict[str, Config]:
    """Every variant's config, loaded now: an unknown key or a bad value fails before hours of training."""
    loaded = {}
    for name, overrides in chosen.items():
        try:
            loaded[name] = load_config(config, overrides)
        except ConfigError as error:
            raise ConfigError(f"option {name}: {error}") from None
    return loaded


def evaluated_variants(options: dict[str, list[str]], configs: dict[str, Config]) -> set[str]:
    """The options that need no training: every key they set is eval-only, and training's
    validation does not steer when it stops (train.patience)."""
    return {name for name, overrides in options.items()
            if configs[name].train.patience is None and all(is_eval_only(parse_override(o)[0]) for o in overrides)}


def recipe_of(config: Config) -> dict:
    """A run's whole config as results.json records it (JSON types, the output folder left out)."""
    recipe = config_to_dict(config)
    del recipe["output"]
    return json.loads(json.dumps(recipe))


def changed_keys(old: dict, new: dict) -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    old, new = flatten_config(old), flatten_config(new)
    return sorted(key for key in old.keys() | new.keys() if old.get(key) != new.get(key))


def train_once(config: Config, overrides: list[str], seed: int, folder: Path) -> dict:
    """Train one variant with one seed -> its numbers. A finished run's results.json is reused only
    when it was trained with this very config: after an edit of the recipe, the run trains again."""
    run_config = copy.deepcopy(config)
    run_config.train.seed, run_config.output = seed, str(folder)
    recipe = recipe_of(run_config)
    done = folder / "results.json"
    if done.is_file():
        result = json.loads(done.read_text())
        if result.get("config") == recipe:
            return result
        why = (f"trained with another config ({', '.join(changed_keys(result['config'], recipe)[:5])})"
               if "config" in result else "does not record its config (an older ablation.py wrote it)")
        print(f"{done}: {why}; training it again", flush=True)
    from detector.engine.trainer import Trainer

    start = time.perf_counter()
    metrics = Trainer(run_config).fit()
    wall = time.perf_counter() - start
    if not metrics:
        raise ConfigError("the run had no evaluation (data.val is needed to compare variants)")
    result = {"overrides": overrides, "seed": seed, "wall_s": wall, "AP": metrics["AP"], "AP50": metrics["AP50"],
              "AP_small": metrics["APs"], "per_class": metrics["per_class"], "config": recipe}
    done.write_text(json.dumps(result, indent=1))
    return result


def evaluate_once(config: Config, overrides: list[str], seed: int, folder: Path, baseline: Path) -> dict:
    """Evaluate the baseline's final weights of this seed with an eval-only variant's config -> its
    numbers (wall_s None: nothing trained). Reused while the config and those weights are the same."""
    config = copy.deepcopy(config)
    config.train.seed = seed
    weights = baseline / "weights" / "last.pt"
    if not weights.is_file():
        raise ConfigError(f"{weights}: missing; an eval-only option is measured on the baseline's final weights")
    recipe, modified = recipe_of(config), weights.stat().st_mtime_ns
    done = folder / "results.json"
    if done.is_file():
        result = json.loads(done.read_text())
        if result.get("config") == recipe and result.get("weights_mtime_ns") == modified:
            return result
        print(f"{done}: evaluated another config or other weights; evaluating again", flush=True)
    from detector.data import CategoryMap, load_dataset
    from detector.engine.evaluation import evaluate_model
    from detector.inference import load_predictor
    from detector.inference.slicing import SliceSettings
    from detector.inference.tta import TtaSettings

    start = time.perf_counter()
    # The checkpoint's own config (the recipe, --set included) builds the model; the variant's
    # eval-only model keys change its post-processing, its inference section slicing and TTA.
    post_processing = [o for o in overrides if (key := parse_override(o)[0]).startswith("model.") and is_eval_only(key)]
    predictor = load_predictor(weights, device=config.train.device, overrides=post_processing,
                               slicing=SliceSettings.from_config(config.inference.slice),
                               tta=TtaSettings.from_config(config.inference.tta))
    categories = CategoryMap(tuple(predictor.category_ids), tuple(predictor.category_names))
    dataset = load_dataset(config.data.val, categories, policy=config.data.policy)
    metrics = evaluate_model(predictor.model, dataset, predictor.device, folder / "eval", batch_size=config.train.batch_size,
                             workers=config.data.workers, draw=config.train.num_val_images_drawn)
    result = {"overrides": overrides, "seed": seed, "wall_s": None, "eval_s": time.perf_counter() - start,
              "AP": metrics["AP"], "AP50": metrics["AP50"], "AP_small": metrics["APs"],
              "per_class": metrics["per_class"], "config": recipe, "weights": str(weights),
              "weights_mtime_ns": modified}
    done.write_text(json.dumps(result, indent=1))
    return result


def columns(results: list[dict]) -> list[str]:
    classes = list(results[0]["per_class"]) if results else []
    return ["AP", "AP50", "AP_small", *[f"AP {name}" for name in classes], "wall_s"]


def value(result: dict, column: str) -> float | None:
    if column.startswith("AP ") and column not in result:
        return result["per_class"].get(column[3:])
    return result.get(column)


def spread(values: list[float]) -> tuple[float, float, float, float]:
    """(mean, sample standard deviation (0 for one value), min, max)."""
    return (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0, min(values), max(values))


def signed(change: float, digits: int = 3) -> str:
    """+0.012, -0.004; a change that rounds to zero is +0.000, whatever its sign."""
    text = f"{change:+.{digits}f}"
    return "+" + text[1:] if text.startswith("-") and float(text) == 0 else text


def paired_changes(baseline: list[dict], runs: list[dict], column: str) -> list[float]:
    """Each run's value minus the baseline's of the same seed (both known)."""
    base = {run["seed"]: value(run, column) for run in baseline}
    return [value(run, column) - base[run["seed"]] for run in runs
            if value(run, column) is not None and base.get(run["seed"]) is not None]


def summary_table(results: dict[str, list[dict]]) -> list[str]:
    """Markdown: per variant and column, mean ± sd [min-max] over seeds, and the mean's change from
    the baseline; for a variant evaluated on the baseline's weights, also the range of its changes seed by seed."""
    names = columns(results[BASELINE])
    lines = ["| variant | seeds | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 2)]
    base_means = {}
    for variant, runs in results.items():
        cells = []
        for column in names:
            values = [v for v in (value(r, column) for r in runs) if v is not None]
            if not values:
                cells.append("n/a")
                continue
            mean, sd, low, high = spread(values)
            digits = 0 if column == "wall_s" else 3
            cell = f"{mean:.{digits}f} ± {sd:.{digits}f} [{low:.{digits}f}–{high:.{digits}f}]"
            if variant == BASELINE:
                base_means[column] = mean
            elif column in base_means:
                change = signed(mean - base_means[column], digits)
                paired = paired_changes(results[BASELINE], runs, column) if runs[0].get("weights") else []
                if paired:  # evaluated on the baseline's own weights: the change seed by seed
                    change += f"; per seed {signed(min(paired))} to {signed(max(paired))}"
                cell += f" ({change})"
            cells.append(cell)
        lines.append(f"| {variant} | {len(runs)} | " + " | ".join(cells) + " |")
    return lines


def runs_table(results: dict[str, list[dict]]) -> list[str]:
    names = columns(results[BASELINE])
    lines = ["| variant | seed | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 2)]
    for variant, runs in results.items():
        for run in runs:
            cells = [("n/a" if v is None else f"{v:.0f}" if c == "wall_s" else f"{v:.3f}")
                     for c, v in ((c, value(run, c)) for c in names)]
            lines.append(f"| {variant} | {run['seed']} | " + " | ".join(cells) + " |")
    return lines


def report(config: str, chosen: dict[str, list[str]], results: dict[str, list[dict]], command: str) -> str:
    evaluated = [name for name, runs in results.items() if runs and runs[0].get("weights")]
    options = "; ".join(f"{name}: {' '.join(overrides) or 'the recipe as it is'}" for name, overrides in chosen.items())
    return "\n".join([
        f"Ablation of `{config}`: `{command}`", "",
        f"Variants: {options}.", "",
        "Mean ± sample standard deviation [min–max] over seeds; (±x): the mean's change from the baseline.",
        *([f"Evaluated on the baseline's final weights of each seed, not trained: {', '.join(evaluated)} "
           "(eval-only keys); their change is also given seed by seed."] if evaluated else []), "",
        *summary_table(results), "", "Every run:", "", *runs_table(results), ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("--seeds", type=int, default=3, help="train.seed = first-seed .. first-seed + N - 1")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--options", nargs="+", required=True, metavar="NAME=KEY=VALUE")
    parser.add_argument("--all", action="store_true", help="also a variant with every option on")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every variant")
    parser.add_argument("--output", default="runs/ablation")
    args = parser.parse_args(argv)
    try:
        if args.seeds < 1:
            raise ConfigError(f"--seeds must be >= 1, got {args.seeds}")
        options = parse_options(args.options)
        chosen = {name: [*args.set, *overrides] for name, overrides in variants(options, args.all).items()}
        configs = load_variants(args.config, chosen)
        evaluated = evaluated_variants(options, configs)
        results: dict[str, list[dict]] = {}
        for seed in range(args.first_seed, args.first_seed + args.seeds):  # seed-major: a cut-short ablation still compares
            for name, overrides in chosen.items():
                folder = Path(args.output) / name / f"seed{seed}"
                if name in evaluated:
                    baseline = Path(args.output) / BASELINE / f"seed{seed}"
                    result = evaluate_once(configs[name], overrides, seed, folder, baseline)
                    took = f"evaluated the baseline's weights in {result['eval_s']:.0f} s"
                else:
                    result = train_once(configs[name], overrides, seed, folder)
                    took = f"{result['wall_s']:.0f} s"
                results.setdefault(name, []).append(result)
                print(f"{name} seed {seed}: AP {result['AP']} AP50 {result['AP50']} ({took})", flush=True)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    text = report(args.config, chosen, results, "python tools/ablation.py " + " ".join(sys.argv[1:] if argv is None else argv))
    Path(args.output).mkdir(parents=True, exist_ok=True)
    (Path(args.output) / "ablation.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
