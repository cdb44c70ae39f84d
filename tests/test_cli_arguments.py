"""The argument parser of every command, with the orders users type: key=value overrides before
or after any option (also after --resume, --weights, --set), --resume taking a checkpoint only,
and one line naming a token that is neither an option, its value, nor an override."""
import pytest

from detector.arguments import add_overrides, parse_command_line
from detector.cli import build_parser, main


def parse(*argv):
    return parse_command_line(build_parser(), list(argv))


# (argv, the fields it must give)
ORDERS = [
    (["train", "c.yaml"], dict(config="c.yaml", overrides=[], resume=None, nproc=1)),
    (["train", "c.yaml", "a=1", "b.c=x"], dict(config="c.yaml", overrides=["a=1", "b.c=x"])),
    (["train", "a=1", "c.yaml", "b=2"], dict(config="c.yaml", overrides=["a=1", "b=2"])),
    (["train", "c.yaml", "--resume"], dict(resume=True, overrides=[])),
    (["train", "c.yaml", "--resume", "output=runs/x"], dict(config="c.yaml", resume=True, overrides=["output=runs/x"])),
    (["train", "c.yaml", "output=runs/x", "--resume"], dict(resume=True, overrides=["output=runs/x"])),
    (["train", "c.yaml", "--resume", "runs/x/weights/last.pt", "a=1"],
     dict(resume="runs/x/weights/last.pt", overrides=["a=1"])),
    (["train", "--resume", "c.yaml", "a=1"], dict(config="c.yaml", resume=True, overrides=["a=1"])),
    (["train", "--resume", "last.pt", "c.yaml"], dict(config="c.yaml", resume="last.pt")),
    (["train", "c.yaml", "--resume=last.pt", "a=1"], dict(resume="last.pt", overrides=["a=1"])),
    (["train", "c.yaml", "--res", "a=1"], dict(resume=True, overrides=["a=1"])),  # argparse's abbreviation
    (["train", "a=1", "--nproc", "2", "c.yaml", "--resume", "b=2"], dict(nproc=2, resume=True, overrides=["a=1", "b=2"])),
    (["eval", "c.yaml", "--weights", "w.pt"], dict(config="c.yaml", weights="w.pt", overrides=[], out=None)),
    (["eval", "c.yaml", "--weights", "w.pt", "model.x=1"], dict(weights="w.pt", overrides=["model.x=1"])),
    (["eval", "a=1", "c.yaml", "--out", "o", "--weights", "w.pt", "b=2"],
     dict(config="c.yaml", out="o", weights="w.pt", overrides=["a=1", "b=2"])),
    (["eval", "--weights", "w.pt", "c.yaml", "a=1"], dict(config="c.yaml", overrides=["a=1"])),
    (["predict", "--weights", "w.pt", "a.jpg"], dict(sources=["a.jpg"], overrides=[], settings=[], strict=False)),
    (["predict", "a.jpg", "--weights", "w.pt", "dir/", "--out", "o", "*.png"],
     dict(sources=["a.jpg", "dir/", "*.png"], out="o")),
    (["predict", "--weights", "w.pt", "a.jpg", "--set", "k=1", "k2=2"], dict(settings=["k=1"], overrides=["k2=2"])),
    (["predict", "k=1", "--strict", "a.jpg", "--weights", "w.pt", "--score-thresh", "0.5"],
     dict(sources=["a.jpg"], overrides=["k=1"], strict=True, score_thresh=0.5)),
    (["model"], dict(config=None, overrides=[])),
    (["model", "a=1"], dict(config=None, overrides=["a=1"])),
    (["model", "a=1", "c.yaml", "b=2"], dict(config="c.yaml", overrides=["a=1", "b=2"])),
]


@pytest.mark.parametrize("argv, expected", ORDERS, ids=[" ".join(argv) for argv, _ in ORDERS])
def test_every_command_parses_the_orders_users_type(argv, expected):
    args = parse(*argv)
    assert {key: getattr(args, key) for key in expected} == expected


def test_an_existing_file_with_an_equals_sign_is_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x=1.jpg").write_bytes(b"")
    assert parse("predict", "--weights", "w.pt", "x=1.jpg", "y=2").sources == ["x=1.jpg"]
    (tmp_path / "lr=0.1.pt").write_bytes(b"")
    assert parse("train", "c.yaml", "--resume", "lr=0.1.pt").resume == "lr=0.1.pt"


MISTAKES = [
    (["train", "c.yaml", "other.yaml"], "detector train: unexpected argument 'other.yaml': neither an option, "
                                        "its value, nor a key=value override (see `detector train --help`)"),
    (["eval", "c.yaml", "stray", "--weights", "w.pt"], "detector eval: unexpected argument 'stray': neither"),
    (["model", "c.yaml", "a=1", "more"], "detector model: unexpected argument 'more': neither"),
    (["train", "c.yaml", "--bogus", "a=1"], "detector train: unrecognized arguments: --bogus"),
    (["eval", "c.yaml", "a=1"], "detector eval: the following arguments are required: --weights"),
    (["predict", "--weights", "w.pt", "k=1"], "detector predict: the following arguments are required: sources"),
    (["train", "c.yaml", "--nproc", "two"], "detector train: argument --nproc: invalid int value: 'two'"),
]


@pytest.mark.parametrize("argv, message", MISTAKES, ids=[" ".join(argv) for argv, _ in MISTAKES])
def test_a_mistake_is_one_line_naming_it_and_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith(message), err


def test_a_new_subcommand_gets_the_override_rules_by_declaring_them():
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    made_up = commands.add_parser("made-up")
    made_up.add_argument("--weights", required=True)
    made_up.add_argument("--dynamic", nargs="?", const=True)
    add_overrides(made_up, "settings")
    args = parse_command_line(parser, ["made-up", "--dynamic", "a=1", "--weights", "w.pt", "b=2"])
    assert (args.dynamic, args.weights, args.overrides) == (True, "w.pt", ["a=1", "b=2"])


def test_resume_after_an_override_resumes_the_overridden_run(tmp_path, capsys):
    # The case: `--resume output=runs/x` used to look for a checkpoint named "output=runs/x".
    from detector.config import load_config, save_config

    data = f"{{format: synthetic, root: {tmp_path / 'synthetic'}, num_images: 2, seed: 1, split: train}}"
    config = load_config(None, ["model.backbone.pretrained=false", "model.transform.min_size=64",
                                "model.transform.max_size=96", f"data.train={data}", "data.val=null",
                                f"output={tmp_path / 'run'}"])
    save_config(config, tmp_path / "config.yaml")
    assert main(["train", str(tmp_path / "config.yaml"), "--resume", f"output={tmp_path / 'elsewhere'}"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"detector train: checkpoint not found: {tmp_path / 'elsewhere' / 'weights' / 'last.pt'}")
