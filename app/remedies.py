"""The window's wording of each `Remedy` (`loff_core.errors`): pages and controls, never
`loff` commands or options (those are the terminal's, `loff_core.cli.remedies.TERMINAL`).

`window_text(exc)` is how the window shows any exception a job or a page catches: a
`LoffError` as "PATH: REASON; REMEDY" with the remedy worded here, a file-system error
(full or read-only disk, permission) as the file and the reason, anything else as it is.
Qt-free, so it is cheap to import and to test."""

from __future__ import annotations

from typing import Callable, Optional, Union

from loff_core.errors import LoffError, Remedy, explain_file_error

Wording = Union[str, Callable[[dict], str]]


def _weights_or_random(params: dict) -> str:
    get = (f"download {params['download']} with Get in Backbones... on the Cache page ({params['size_mb']:g} MB, "
           f"licence {params['licence']}), " if params.get("download") else "")
    return (f"{get}add your own with Add file... in Backbones..., or choose a local weights file "
            f"(.safetensors or .pth) or random weights on the Cache page")


WINDOW: dict[Remedy, Wording] = {
    Remedy.CREATE_PROJECT: "create one with File > New project",
    Remedy.IMPORT_IMAGES: "import images on the Import page",
    Remedy.EXTRACT: "run Extract on the Cache page",
    Remedy.EXTRACT_AGAIN: "run Extract again on the Cache page to finish it",
    Remedy.TRAIN: "train a head on the Train page",
    Remedy.CHOOSE_WEIGHTS_OR_RANDOM: _weights_or_random,
    Remedy.SAME_WEIGHTS_FILE: "choose the same local weights file on the Cache page",
    Remedy.RANDOM_INIT: "choose random weights on the Cache page, as when it was trained",
    Remedy.DEVICE_CPU: "choose device CPU",
    Remedy.HEAD_LINEAR: "choose a smaller head (head: linear), a smaller grid, or train on the CPU (device CPU)",
    Remedy.SMALLER_BACKBONE_OR_CPU: "choose a smaller input size, a smaller backbone or device CPU on the Cache page",
    Remedy.CHOOSE_FILE_COLUMN: "choose the file column",
    Remedy.CHOOSE_LABEL_COLUMN: "choose the label column",
    Remedy.CHOOSE_PATIENT_OVERLAP: "choose what to do with patients on two sides: keep the split as given or "
                                   "re-split by patient",
    Remedy.WEIGHTS_GET: lambda p: (f"Get in Backbones... on the Cache page downloads it ({p['size_mb']:g} MB, "
                                   f"licence {p.get('licence', '?')}), or Add file... brings your own"
                                   if p.get("size_mb") else "Get in Backbones... on the Cache page downloads it"),
    Remedy.WEIGHTS_ADD_AGAIN: "add it again with Add file... in Backbones... on the Cache page",
    Remedy.WEIGHTS_COPY_AND_ADD: "without a network, copy the weights file to this computer and add it with "
                                 "Add file... in Backbones... on the Cache page",
    Remedy.HUB_TOKEN: lambda p: (f"accept the licence on https://huggingface.co/{p.get('repo', 'REPO')} while signed "
                                 f"in, create an access token there (Settings > Access Tokens, read) and press Get "
                                 f"again: it asks for the token, which is sent only to the Hub"),
    Remedy.SUGGESTED_BACKBONES: lambda p: ("see the list in Backbones... on the Cache page" + (
        "; for your own checkpoint use Add file..." if p.get("own") else "")),
    Remedy.ADDED_BACKBONES: "see the list in Backbones... on the Cache page",
    Remedy.ANOTHER_NAME: "remove it first or choose another name",
    Remedy.BACKBONE: lambda p: f"use them with backbone {p.get('backbone', '(another)')} on the Cache page",
    Remedy.HEAD_OR_PROJECT: "choose an exported head folder, or leave it empty to predict with the chosen run",
}


def window_text(exc: BaseException, job: Optional[str] = None) -> str:
    """An exception as the window shows it. `job` names the job for an unexpected error
    ("Unexpected error in JOB: ..."); without it such an error is shown as its text."""
    if isinstance(exc, LoffError):
        return exc.message(WINDOW)
    error = explain_file_error(exc)
    if error is not None:
        return error.message(WINDOW)
    if job is not None:
        return f"Unexpected error in {job}: {type(exc).__name__}: {exc} (details in the log)"
    return str(exc)
