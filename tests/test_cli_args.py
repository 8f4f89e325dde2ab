"""`loff` refuses bad arguments up front with a usage message (never a traceback after the
work is done), sets augmentation strengths by name, and fails when nothing was done."""

from __future__ import annotations

from dataclasses import asdict

import pytest
from PIL import Image

from loff_core.cli import main
from loff_core.cli.train import AUGMENT_HELP, _augment_from_args
from loff_core.errors import TrainingError


@pytest.mark.parametrize("argv, option", [
    (["extract", "p", "--grid", "0"], "--grid"),
    (["extract", "p", "--grid", "-3"], "--grid"),
    (["extract", "p", "--image-size", "0"], "--image-size"),
    (["extract", "p", "--batch-size", "x"], "--batch-size"),
    (["train", "p", "--lr", "-1"], "--lr"),
    (["train", "p", "--lr", "nan"], "--lr"),
    (["train", "p", "--epochs", "0"], "--epochs"),
    (["evaluate", "p", "--bootstrap", "-5"], "--bootstrap"),
])
def test_bad_numbers_are_usage_errors_before_any_work(argv, option, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}" in err and "Traceback" not in err


def test_augmentation_help_shows_the_engine_defaults():
    from loff_core.settings import AugmentConfig

    defaults = asdict(AugmentConfig())
    for name, (shown, _) in AUGMENT_HELP.items():
        value = defaults[name]
        expected = ",".join(str(v) for v in value) if isinstance(value, tuple) else str(value)
        assert shown == expected, (name, shown, value)
    assert set(AUGMENT_HELP) == set(defaults) - {"enabled"}


def test_augmentation_strengths_by_name():
    from loff_core.settings import AugmentConfig

    config = _augment_from_args(["noise_std=0.1", "crop-scale=0.4,1", "mixup_prob=0"], AugmentConfig())
    assert config.noise_std == 0.1 and config.crop_scale == (0.4, 1.0) and config.mixup_prob == 0.0
    assert config.hflip == AugmentConfig().hflip
    for bad in ("noise=0.1", "hflip=2", "hflip=x", "crop_scale=0.9,0.2", "token_dropout"):
        with pytest.raises(TrainingError, match="--augment"):
            _augment_from_args([bad], AugmentConfig())


def test_import_of_a_missing_folder_creates_no_project(tmp_path, capsys):
    assert main(["import", str(tmp_path / "new"), str(tmp_path / "nowhere"), "--quiet"]) == 1
    assert "nowhere: not a folder" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_predict_with_no_readable_file_fails(tmp_path, capsys):
    images = tmp_path / "images"
    for label in ("a", "b"):
        (images / label).mkdir(parents=True)
        for i in range(8):
            Image.new("L", (40, 32), color=(20 if label == "a" else 200) + 3 * i).save(images / label / f"{i}.png")
    project = tmp_path / "p"
    for argv in (["import", project, images],
                 ["extract", project, "--backbone", "vit_tiny_patch16_224", "--random-init", "--image-size", "32",
                  "--grid", "2", "--workers", "0"],
                 ["train", project, "--head", "linear", "--epochs", "1"],
                 ["export", project, tmp_path / "head"]):
        assert main([str(a) for a in argv] + ["--quiet"]) == 0
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    capsys.readouterr()
    code = main(["predict", str(tmp_path / "head"), str(bad), "--random-init", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and "none of the 1 files could be read" in err and "broken.png" in err
    assert main(["predict", str(tmp_path / "head"), str(images / "a" / "0.png"), str(bad), "--random-init",
                 "--quiet", "--json"]) == 0  # one good file: predictions, and the bad one listed


def test_every_command_prints_a_human_summary_unless_json(tmp_path, capsys):
    """One voice on the terminal: without --json no command prints JSON on stdout."""
    import argparse

    from loff_core.cli import build_parser

    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    missing = [name for name, p in subparsers.choices.items() if p.get_default("describe") is None]
    assert not missing, f"commands without a human summary: {missing}"

    project = tmp_path / "demo"
    steps = [["demo", project, "--patients", "4"],
             ["extract", project, "--random-init", "--image-size", "32", "--workers", "0"],
             ["train", project, "--epochs", "1"],
             ["evaluate", project, "--bootstrap", "10"],
             ["export", project, tmp_path / "head"],
             ["predict", tmp_path / "head", project / "images", "--random-init"],
             ["info", project]]
    for step in steps:
        capsys.readouterr()
        assert main([str(a) for a in step] + ["--quiet"]) == 0, capsys.readouterr().err
        out = capsys.readouterr().out
        assert out.strip() and not out.lstrip().startswith(("{", "[")), f"loff {step[0]} printed: {out[:200]}"
    assert "STALE" not in out and "run " in out  # info lists the run in words


def test_a_log_shows_each_progress_state_once(capsys):
    """Without a terminal, progress is plain lines; the last state is not printed twice."""
    from loff_core.cli.terminal import TerminalProgress

    terminal = TerminalProgress("export")
    terminal._tty = False
    terminal.progress.report(0, 2, "writing head")
    terminal.progress.report(2, 2, "exported")  # within 10 s: not printed yet
    terminal.close()
    assert capsys.readouterr().err.splitlines() == ["export: 0/2 writing head", "export: 2/2 exported"]

    terminal = TerminalProgress("predict")
    terminal._tty = False
    terminal.progress.report(1, 1, "predicted 0 images")
    terminal.close()
    assert capsys.readouterr().err.splitlines() == ["predict: 1/1 predicted 0 images"]
