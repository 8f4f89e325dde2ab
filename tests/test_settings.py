"""Settings are declared once (loff_core.settings): `loff` options, the window's controls and
the run record all come from the declaration, so they cannot disagree."""

from __future__ import annotations

import argparse
from dataclasses import fields

import pytest

from loff_core.cli import build_parser
from loff_core.errors import LoffError, SettingError
from loff_core.settings import (AugmentConfig, CVSettings, EvaluateSettings, ExtractSettings, ImportSettings,
                                PredictSettings, TrainConfig, TuneSettings, all_fields, field_info, option_name)


def _subparser(name: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


@pytest.mark.parametrize("command, cls", [("train", TrainConfig), ("extract", ExtractSettings),
                                          ("evaluate", EvaluateSettings), ("cv", CVSettings),
                                          ("tune", TuneSettings), ("import", ImportSettings),
                                          ("predict", PredictSettings)])
def test_every_declared_option_is_on_the_command_line_with_its_default(command, cls):
    parser = _subparser(command)
    by_dest = {a.dest: a for a in parser._actions}
    declared = [f for f in all_fields(cls) if option_name(f) is not None and f.kind is not bool]
    assert declared
    for info in declared:
        action = by_dest[info.name]
        assert option_name(info) in action.option_strings
        if info.name == "crop":  # None: not typed, so `loff extract` names the declared default it uses
            assert action.default is None and info.default in (action.help or ""), info.name
        elif info.name != "task":  # the project's task unless given
            assert action.default == info.default, info.name
        assert info.help.split(" (")[0].replace("%", "%%")[:30] in (action.help or ""), info.name
        if info.choices:
            assert list(action.choices) == list(info.choices)


@pytest.mark.parametrize("command, names", [("cv", ["task", "epochs", "lr", "patience", "seed", "device"]),
                                            ("tune", ["task", "seed", "device"])])
def test_cv_and_tune_take_the_training_options_from_their_declaration(command, names):
    """`loff cv` / `loff tune` share TrainConfig's declarations (choices, ranges, help); the
    settings they leave to TrainConfig default to None there, so TrainConfig's default holds."""
    by_dest = {a.dest: a for a in _subparser(command)._actions}
    for name in names:
        info, action = field_info(TrainConfig, name), by_dest[name]
        assert option_name(info) in action.option_strings
        assert info.help.split(" (")[0][:30] in (action.help or ""), name
        assert action.default in (None, info.default), name
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "p", "--folds", "1"])
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "p", "--task", "regression"])
    if command == "cv":
        assert build_parser().parse_args(["cv", "p", "--head", "logreg"]).head == "logreg"
        with pytest.raises(SystemExit):
            build_parser().parse_args(["cv", "p", "--lr", "0"])


def test_out_of_range_values_are_refused_by_the_declaration():
    for bad in ("0", "-1", "x", "nan"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["train", "p", "--epochs", bad])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "p", "--lr", "0"])  # lr is > 0, not >= 0
    assert build_parser().parse_args(["train", "p", "--lr", "0.01"]).lr == 0.01
    with pytest.raises(ValueError, match="too large"):
        field_info(AugmentConfig, "hflip").check(1.5)


@pytest.mark.parametrize("cls, bad", [
    (TrainConfig, {"epochs": 0}), (TrainConfig, {"lr": 0.0}), (TrainConfig, {"head": "mlp"}),
    (TrainConfig, {"task": "regression"}), (TrainConfig, {"batch_size": 2.5}), (TrainConfig, {"patience": 0}),
    (AugmentConfig, {"hflip": 1.5}), (AugmentConfig, {"crop_scale": (0.0, 1.0)}), (ExtractSettings, {"grid": 0}),
    (ExtractSettings, {"image_size": 8}), (EvaluateSettings, {"bootstrap": -1}), (CVSettings, {"folds": 1}),
    (CVSettings, {"head": "mlp"}), (TuneSettings, {"trials": 0}), (ImportSettings, {"task": "regression"}),
    (ImportSettings, {"on_patient_overlap": "merge"}), (PredictSettings, {"batch_size": 0}),
    (PredictSettings, {"bootstrap": -5})])
def test_a_settings_object_is_checked_when_it_is_built(cls, bad):
    """Any front end or script: an out-of-range setting is refused where the object is built,
    naming the setting (so no step keeps hand checks of its own)."""
    with pytest.raises(SettingError, match=f"{cls.__name__}.{next(iter(bad))}") as caught:
        cls(**bad)
    assert isinstance(caught.value, LoffError) and isinstance(caught.value, ValueError)
    from dataclasses import replace

    with pytest.raises(SettingError):
        replace(cls(), **bad)  # a changed copy is checked too
    assert cls() == cls()  # the defaults are in range


def test_predict_and_import_take_their_options_from_the_declaration():
    args = build_parser().parse_args(["predict", "HEAD", "a.png", "--run", "R", "--labels", "l.csv",
                                      "--batch-size", "4", "--bootstrap", "0"])
    from loff_core.cli.terminal import declared

    settings = PredictSettings(**declared(args, PredictSettings))
    assert (settings.run, settings.labels, settings.batch_size, settings.bootstrap) == ("R", "l.csv", 4, 0)
    assert settings.label_column == PredictSettings.label_column and settings.device == PredictSettings.device
    with pytest.raises(SystemExit):
        build_parser().parse_args(["predict", "HEAD", "a.png", "--batch-size", "0"])
    args = build_parser().parse_args(["import", "p", "img", "--on-patient-overlap", "keep", "--split-column", "s"])
    settings = ImportSettings(**declared(args, ImportSettings, skip=("labels_csv", "classes")))
    assert (settings.on_patient_overlap, settings.split_column, settings.task) == ("keep", "s", None)


def test_a_run_records_every_training_setting(tmp_path):
    from loff_core.settings import config_record

    recorded = config_record(TrainConfig())
    assert set(recorded) == {f.name for f in fields(TrainConfig)}
    assert set(recorded["augment"]) == {f.name for f in fields(AugmentConfig)}


@pytest.mark.gui
def test_the_train_and_cache_pages_show_the_declared_defaults(qtbot):
    from app.main import MainWindow

    window = MainWindow()
    qtbot.addWidget(window)
    train, cache = window.train_page, window.cache_page
    assert train.head.currentText() == TrainConfig.head
    assert [train.head.itemText(i) for i in range(train.head.count())] == list(field_info(TrainConfig, "head").choices)
    assert train.epochs.value() == TrainConfig.epochs
    assert train.lr.value() == pytest.approx(TrainConfig.lr)
    assert train.noise.value() == pytest.approx(AugmentConfig.noise_std)
    assert train.flip.value() == pytest.approx(AugmentConfig.hflip)
    assert cache.grid.value() == ExtractSettings.grid and cache.batch.value() == ExtractSettings.batch_size
    assert field_info(TrainConfig, "epochs").help in train.epochs.toolTip()
    assert cache.layers.currentText() == ExtractSettings.layers == cache.spec().layers
    cache.layers.setCurrentText("-4:")  # the Cache page chooses the block(s) as `loff extract --layers` does
    assert cache.spec().layers == "-4:"


@pytest.mark.gui
def test_every_training_option_is_on_the_train_page_and_reaches_the_config(qtbot):
    """A setting declared in TrainConfig with a `loff train` option appears on the Train page
    without touching the page (its "More settings" are built from the declaration), and the
    value chosen there is the one the run is trained with."""
    from app.main import MainWindow
    from app.forms import train_config
    from app.pages.train_page import PLACED

    window = MainWindow()
    qtbot.addWidget(window)
    train = window.train_page
    options = {a.dest for a in _subparser("train")._actions if a.option_strings}
    declared = {f.name for f in fields(TrainConfig) if field_info(TrainConfig, f.name).option is not None}
    assert declared <= options
    assert declared == set(PLACED) | set(train.more), sorted(declared ^ (set(PLACED) | set(train.more)))
    assert {"batch_size", "patience"} <= set(train.more)
    train.more["batch_size"].setValue(8)
    train.more["patience"].setValue(3)
    train.epochs.setValue(7)
    config = train_config(train.settings())
    assert (config.batch_size, config.patience, config.epochs) == (8, 3, 7)
    assert config.device == TrainConfig.device and config.lr == pytest.approx(TrainConfig.lr)
    # Cross-validate trains each fold with the same config (More settings included), and tune
    # keeps what its search does not vary (device, batch size, seed, task)
    train.more["device"].setCurrentText("cpu")
    cv = train.validation.cv_config()
    assert (cv.batch_size, cv.patience, cv.epochs, cv.device) == (8, 3, 7, "cpu")
    from loff_core.search import tune_base

    base = tune_base(cv)
    assert (base.batch_size, base.device, base.seed, base.task) == (8, "cpu", cv.seed, cv.task)
    # issue 23 item 5: the form's epochs / patience are the search's base length (it tries them and twice them)
    assert (base.epochs, base.patience, base.head, base.lr) == (7, 3, TrainConfig.head, TrainConfig.lr)
