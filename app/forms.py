"""Form controls built from the engine's setting declarations (loff_core.settings): the
window shows the same defaults, ranges, units and help as `loff --help`, from one place."""

from __future__ import annotations

from typing import Any

from PySide6.QtWidgets import QComboBox, QDoubleSpinBox, QLineEdit, QSpinBox, QWidget

from loff_core.settings import field_info

_INT_MAX = 2**31 - 1


def budget_text(seconds: float) -> str:
    """A duration as the command line writes it (300 -> "5m"), which `parse_duration` reads back."""
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def duration_control(cls: type, name: str, default: float | None = None) -> QLineEdit:
    """A line edit for a declared duration setting (a time budget: "90s", "3m", "1h", as on the
    command line), set to `default` or the declaration's default, with its help as the tooltip;
    read it back with `duration_value`."""
    info = field_info(cls, name)
    value = default if default is not None else info.default
    box = QLineEdit("" if value is None else budget_text(float(value)))
    box.setPlaceholderText("no limit" if info.default is None else "")
    box.setToolTip(info.help)
    # wide enough for "no limit" and "1h 30m" in any crowded row (it was squeezed to "50s")
    box.setMinimumWidth(box.fontMetrics().horizontalAdvance("no limit") + 16)
    return box


def duration_value(box: QLineEdit) -> float | None:
    """Seconds in a `duration_control`; None when it is empty (no limit); ValueError naming
    the text when it is not a duration."""
    from loff_core.progress import parse_duration

    text = box.text().strip()
    return parse_duration(text) if text else None


def control_for(cls: type, name: str, *, step: float | None = None, decimals: int | None = None,
                high: float | None = None, suggestions: list[str] | None = None) -> QWidget:
    """A combo box (choices; free text with `suggestions`), spin box (int) or double spin box
    (float) for one declared setting, set to its default, limited to its range, with its help
    as the tooltip. `high` narrows an open-ended range for the form; `step` / `decimals` are
    presentation only."""
    info = field_info(cls, name)
    tip = info.help + (f" ({info.unit})" if info.unit else "")
    if info.kind is str and info.choices is None:  # free text, e.g. --layers: an editable list
        box = QComboBox()
        box.setEditable(True)
        shown = "" if info.default is None else str(info.default)  # empty: automatic (e.g. --block)
        box.addItems([shown, *[s for s in suggestions or [] if s != shown]])
        box.setCurrentText(shown)
    elif info.choices is not None:
        box: Any = QComboBox()
        box.addItems(list(info.choices))
        box.setCurrentText(str(info.default))
    elif info.kind is int:
        box = QSpinBox()
        box.setRange(int(info.low) if info.low is not None else -_INT_MAX,
                     int(high if high is not None else info.high if info.high is not None else _INT_MAX))
        if info.unit:
            box.setSuffix(f" {info.unit}")
        box.setValue(int(info.default) if info.default is not None else box.minimum())
    else:
        box = QDoubleSpinBox()
        box.setDecimals(decimals if decimals is not None else 2)
        low = float(info.low) if info.low is not None else 0.0
        if info.low_open:  # the smallest value the box can show, not the excluded bound itself
            low += 10 ** -box.decimals()
        box.setRange(low, float(high if high is not None else info.high if info.high is not None else 1e9))
        if step is not None:
            box.setSingleStep(step)
        box.setValue(float(info.default))
    box.setToolTip(tip)
    return box


def train_config(chosen: dict[str, Any]) -> Any:
    """The TrainConfig of the Train page's settings (`TrainPage.settings()`; the Train page,
    Cross-validate and Find the best head build it here), each value checked by its
    declaration."""
    from dataclasses import replace

    from loff_core.settings import AugmentConfig, TrainConfig

    augment = AugmentConfig.off() if chosen["augment"] is None else replace(AugmentConfig(), **chosen["augment"])
    more = {name: field_info(TrainConfig, name).check(value) for name, value in (chosen.get("more") or {}).items()}
    return TrainConfig(head=chosen["head"], task=chosen["task"], epochs=chosen["epochs"], lr=chosen["lr"],
                       seed=chosen["seed"], augment=augment, **more)
