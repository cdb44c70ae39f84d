"""tools/ablation.py: options parsed and checked before any training, mean and spread over seeds
by hand, and a real (tiny) ablation whose finished runs a rerun reuses."""
import json

import pytest

from detector import ConfigError, load_config
from detector.config import save_config
from tool_scripts import load_tool

ablation = load_tool("ablation")


def test_options_group_their_overrides_by_name():
    options = ablation.parse_options(["rfs=data.sampler=repeat_factor", "ema=train.ema=true",
                                      "rfs=data.repeat_threshold=0.3"])
    assert options == {"rfs": ["data.sampler=repeat_factor", "data.repeat_threshold=0.3"], "ema": ["train.ema=true"]}
    assert list(ablation.variants(options, with_all=True)) == ["baseline", "rfs", "ema", "all"]
    assert ablation.variants(options, with_all=True)["all"] == [*options["rfs"], *options["ema"]]
    for bad in ("ema", "ema=train.ema", "=train.ema=true", "baseline=train.ema=true"):
        with pytest.raises(ConfigError, match="--options"):
            ablation.parse_options([bad])


def test_an_unknown_key_fails_in_one_line_before_any_training(tmp_path, capsys):
    code = ablation.main(["configs/shapes_imbalanced.yaml", "--seeds", "1", "--options", "ema=train.emma=true",
                          "--output", str(tmp_path)])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1
    assert "option ema: configs/shapes_imbalanced.yaml: unknown key train.emma; did you mean train.ema?" in error
    assert not list(tmp_path.iterdir())  # nothing trained


def test_the_table_holds_mean_sample_sd_min_max_and_the_change_from_the_baseline():
    def run(seed, ap, cross, wall):
        return {"seed": seed, "AP": ap, "AP50": 0.9, "AP_small": None, "per_class": {"circle": 0.5, "cross": cross},
                "wall_s": wall}

    results = {"baseline": [run(0, 0.40, 0.10, 100), run(1, 0.44, 0.20, 120)],
               "rfs": [run(0, 0.43, 0.30, 110), run(1, 0.45, 0.36, 130)]}
    table = ablation.summary_table(results)
    assert table[0] == "| variant | seeds | AP | AP50 | AP_small | AP circle | AP cross | wall_s |"
    # baseline AP: mean 0.42, sd sqrt(((0.02)^2 * 2) / 1) = 0.028
    assert table[2].startswith("| baseline | 2 | 0.420 ± 0.028 [0.400–0.440] | 0.900 ± 0.000 [0.900–0.900] | n/a |")
    assert "| 0.330 ± 0.042 [0.300–0.360] (+0.180) |" in table[3]  # cross: 0.15 -> 0.33
    assert table[3].endswith("| 120 ± 14 [110–130] (+10) |")
    assert ablation.runs_table(results)[4] == "| rfs | 0 | 0.430 | 0.900 | n/a | 0.500 | 0.300 | 110 |"


def test_a_tiny_ablation_trains_each_variant_per_seed_and_a_rerun_reuses_them(tmp_path, capsys):
    synthetic = f"{{format: synthetic, root: {tmp_path / 'synthetic'}, num_images: NUM, seed: 1, split: SPLIT}}"
    config = load_config(None, [
        "model.transform.min_size=96", "model.transform.max_size=128", "model.anchors.sizes=[[16, 32, 64]]",
        "model.rpn.pre_nms_top_n_train=100", "model.rpn.post_nms_top_n_train=50", "model.rpn.pre_nms_top_n_test=50",
        "model.rpn.post_nms_top_n_test=20", "model.roi_heads.batch_size_per_image=16", "model.roi_heads.score_thresh=0.0",
        "data.train=" + synthetic.replace("NUM", "4").replace("SPLIT", "train"),
        "data.val=" + synthetic.replace("NUM", "2").replace("SPLIT", "val"),
        "data.workers=0", "train.batch_size=2", "train.max_iters=1", "train.previews=false",
        "train.num_val_images_drawn=0"])
    save_config(config, tmp_path / "tiny.yaml")
    argv = [str(tmp_path / "tiny.yaml"), "--seeds", "2", "--options", "ema=train.ema=true", "ema=train.ema_tau=1",
            "--output", str(tmp_path / "out")]
    assert ablation.main(argv) == 0
    for variant in ("baseline", "ema"):
        for seed in (0, 1):
            result = json.loads((tmp_path / "out" / variant / f"seed{seed}" / "results.json").read_text())
            assert result["seed"] == seed and set(result["per_class"]) == {"circle", "square", "triangle", "cross"}
    written = (tmp_path / "out" / "ablation.md").read_text()
    assert "| variant | seeds | AP | AP50 | AP_small | AP circle | AP square | AP triangle | AP cross | wall_s |" in written
    assert "| baseline | 2 |" in written and "| ema | 2 |" in written
    assert "ema: train.ema=true train.ema_tau=1" in written
    first = written
    assert ablation.main(argv) == 0  # every run found finished: the same numbers, wall times included
    assert (tmp_path / "out" / "ablation.md").read_text() == first


def test_a_rerun_after_the_recipe_changed_trains_again_instead_of_reusing_old_numbers(tmp_path, capsys):
    synthetic = f"{{format: synthetic, root: {tmp_path / 'synthetic'}, num_images: NUM, seed: 1, split: SPLIT}}"
    overrides = [
        "model.transform.min_size=96", "model.transform.max_size=128", "model.anchors.sizes=[[16, 32, 64]]",
        "model.rpn.pre_nms_top_n_test=50", "model.rpn.post_nms_top_n_test=20", "model.roi_heads.batch_size_per_image=16",
        "data.train=" + synthetic.replace("NUM", "2").replace("SPLIT", "train"),
        "data.val=" + synthetic.replace("NUM", "2").replace("SPLIT", "val"),
        "data.workers=0", "train.batch_size=2", "train.max_iters=1", "train.previews=false",
        "train.num_val_images_drawn=0"]
    recipe = tmp_path / "tiny.yaml"
    argv = [str(recipe), "--seeds", "1", "--options", "ema=train.ema=true", "--output", str(tmp_path / "out")]
    trained_with = tmp_path / "out" / "baseline" / "seed0" / "config.yaml"  # the trainer's own record
    save_config(load_config(None, overrides), recipe)
    assert ablation.main(argv) == 0
    assert load_config(trained_with).model.transform.min_size == 96
    save_config(load_config(None, [*overrides, "model.transform.min_size=112"]), recipe)  # the recipe edited
    capsys.readouterr()
    assert ablation.main(argv) == 0
    assert load_config(trained_with).model.transform.min_size == 112
    assert "trained with another config (model.transform.min_size); training it again" in capsys.readouterr().out


def test_options_of_eval_only_keys_are_evaluated_and_the_others_trained():
    options = {"soft": ["model.roi_heads.nms_method=gaussian", "model.roi_heads.soft_nms_sigma=0.3"],
               "tta": ["inference.tta.hflip=true"],
               "res": ["model.transform.min_size=480"],  # a test-time key, but training resizes with it too
               "mixed": ["model.roi_heads.nms_method=gaussian", "train.ema=true"]}
    configs = {name: load_config(None, overrides) for name, overrides in options.items()}
    assert ablation.evaluated_variants(options, configs) == {"soft", "tta"}
    # With patience, validation (and so its post-processing) decides when training stops.
    configs["soft"] = load_config(None, [*options["soft"], "train.patience=2"])
    assert ablation.evaluated_variants(options, configs) == {"tta"}


def test_an_eval_only_option_is_measured_on_the_baselines_weights_without_training(tmp_path, capsys):
    synthetic = f"{{format: synthetic, root: {tmp_path / 'synthetic'}, num_images: NUM, seed: 1, split: SPLIT}}"
    recipe = tmp_path / "tiny.yaml"
    save_config(load_config(None, [
        "model.transform.min_size=96", "model.transform.max_size=128", "model.anchors.sizes=[[16, 32, 64]]",
        "model.rpn.pre_nms_top_n_test=50", "model.rpn.post_nms_top_n_test=20", "model.roi_heads.batch_size_per_image=16",
        "model.roi_heads.score_thresh=0.0", "data.train=" + synthetic.replace("NUM", "4").replace("SPLIT", "train"),
        "data.val=" + synthetic.replace("NUM", "2").replace("SPLIT", "val"), "data.workers=0", "train.batch_size=2",
        "train.max_iters=2", "train.previews=false", "train.num_val_images_drawn=0"]), recipe)
    out = tmp_path / "out"
    argv = [str(recipe), "--seeds", "1", "--output", str(out), "--options", "same=model.roi_heads.nms_method=hard",
            "soft=model.roi_heads.nms_method=gaussian"]
    assert ablation.main(argv) == 0
    baseline, same, soft = (json.loads((out / name / "seed0" / "results.json").read_text())
                            for name in ("baseline", "same", "soft"))
    assert not (out / "same" / "seed0" / "weights").exists() and not (out / "soft" / "seed0" / "weights").exists()
    assert same["weights"] == soft["weights"] == str(out / "baseline" / "seed0" / "weights" / "last.pt")
    assert same["wall_s"] is None and same["config"]["model"]["roi_heads"]["nms_method"] == "hard"
    # The recipe's own setting on its own weights: training's final validation, number for number.
    assert (same["AP"], same["AP50"], same["per_class"]) == (baseline["AP"], baseline["AP50"], baseline["per_class"])
    assert soft["config"]["model"]["roi_heads"]["nms_method"] == "gaussian"
    written = (out / "ablation.md").read_text()
    assert "Evaluated on the baseline's final weights of each seed, not trained: same, soft" in written
    assert "(+0.000; per seed +0.000 to +0.000)" in written
    # The baseline trained again (other weights): the evaluated variants are evaluated again.
    (out / "baseline" / "seed0" / "results.json").unlink()
    capsys.readouterr()
    assert ablation.main(argv) == 0
    assert capsys.readouterr().out.count("evaluated another config or other weights; evaluating again") == 2


def test_an_eval_only_option_without_the_baselines_weights_names_the_missing_file(tmp_path, capsys):
    config = load_config(None, ["data.train={format: synthetic, root: x, split: train}",
                                "data.val={format: synthetic, root: x, split: val}"])
    with pytest.raises(ConfigError, match=r"baseline/seed0/weights/last.pt: missing; an eval-only option"):
        ablation.evaluate_once(config, ["model.roi_heads.nms_method=gaussian"], 0, tmp_path / "soft" / "seed0",
                               tmp_path / "baseline" / "seed0")


def test_a_change_that_rounds_to_zero_has_no_sign():
    assert [ablation.signed(x) for x in (0.0123, -0.0041, -1e-9, 0.0)] == ["+0.012", "-0.004", "+0.000", "+0.000"]
    assert ablation.signed(-0.4, digits=0) == "+0" and ablation.signed(-7.0, digits=0) == "-7"
