"""The terminal's wording of each `Remedy` (`loff_core.errors`): commands and options of `loff`.

The engine's messages name no front end (`str(LoffError)` is "PATH: REASON"); the CLI words
the remedy at its edge with `terminal_text(exc)`, from this table, the window with
`app.remedies.window_text(exc)`, from `app.remedies.WINDOW`. A wording is a format string over the error's
parameters, or a function of them when a parameter is optional. Every key has a wording
here and in the window's table (tests/test_errors.py)."""

from __future__ import annotations

from typing import Callable, Union

from ..errors import LoffError, Remedy

Wording = Union[str, Callable[[dict], str]]


def _project(params: dict) -> str:
    return str(params.get("project") or "PROJECT")


def _weights_or_random(params: dict) -> str:
    get = (f"`loff weights get {params['download']}` downloads them ({params['size_mb']:g} MB, licence "
           f"{params['licence']}); " if params.get("download") else "")
    return f"{get}`loff weights add FILE` brings your own, or pass --weights FILE (.safetensors or .pth) or --random-init"


def _extract_again(params: dict) -> str:
    project = params.get("project")
    return f"run `loff extract {project}` again to finish it" if project else "run `loff extract` again to finish it"


def _weights_add(params: dict) -> str:
    return f"`loff weights add FILE --name {params['name']}`" if params.get("name") else "`loff weights add FILE`"


TERMINAL: dict[Remedy, Wording] = {
    Remedy.CREATE_PROJECT: "create one with `loff import`",
    Remedy.IMPORT_IMAGES: lambda p: f"run `loff import {_project(p)} IMAGES_DIR`",
    Remedy.EXTRACT: lambda p: f"run `loff extract {_project(p)}`",
    Remedy.EXTRACT_AGAIN: _extract_again,
    Remedy.TRAIN: lambda p: f"run `loff train {_project(p)}`",
    Remedy.CHOOSE_WEIGHTS_OR_RANDOM: _weights_or_random,
    Remedy.SAME_WEIGHTS_FILE: "pass the same weights (--weights FILE)",
    Remedy.RANDOM_INIT: "pass the same weights (--random-init)",
    Remedy.DEVICE_CPU: "use --device cpu",
    Remedy.HEAD_LINEAR: "use a smaller head (--head linear), a smaller grid, or train on the CPU (--device cpu)",
    Remedy.SMALLER_BACKBONE_OR_CPU: "use a smaller input size, a smaller backbone or --device cpu",
    Remedy.CHOOSE_FILE_COLUMN: "pass --file-column",
    Remedy.CHOOSE_LABEL_COLUMN: "pass --label-column",
    Remedy.CHOOSE_PATIENT_OVERLAP: ("choose: keep it as given (--on-patient-overlap keep) or re-split by patient "
                                    "(--on-patient-overlap resplit)"),
    Remedy.WEIGHTS_GET: lambda p: (f"`loff weights get {p.get('name', 'NAME')}` downloads it ({p['size_mb']:g} MB, "
                                   f"licence {p.get('licence', '?')}), or {_weights_add(p)}" if p.get("size_mb")
                                   else f"`loff weights get {p.get('name', 'NAME')}` downloads it"),
    Remedy.WEIGHTS_ADD_AGAIN: "add it again (`loff weights add`)",
    Remedy.WEIGHTS_COPY_AND_ADD: lambda p: f"without a network, copy the weights file here and run {_weights_add(p)}",
    Remedy.HUB_TOKEN: lambda p: (f"accept the licence on https://huggingface.co/{p.get('repo', 'REPO')} while signed in, "
                                 f"create an access token (Settings > Access Tokens, read) and run `loff weights get "
                                 f"{p.get('name', 'NAME')}` again: it asks for the token (or set HF_TOKEN, or "
                                 f"`hf auth login`); it is sent only to the Hub"),
    Remedy.SUGGESTED_BACKBONES: lambda p: ("see `loff weights list`" + (
        "; for your own checkpoint use `loff weights add FILE`" if p.get("own") else "")),
    Remedy.ADDED_BACKBONES: "see `loff weights list`",
    Remedy.ANOTHER_NAME: "remove it first or choose --name",
    Remedy.BACKBONE: lambda p: f"use them with --backbone {p.get('backbone', 'NAME')}",
    Remedy.HEAD_OR_PROJECT: ("give a project folder (and --run ID), or export a run first with "
                             "`loff export PROJECT FOLDER`"),
}



def terminal_text(exc: LoffError) -> str:
    """"PATH: REASON; REMEDY" with the remedy in the terminal's words (what `loff` prints)."""
    return exc.message(TERMINAL)
