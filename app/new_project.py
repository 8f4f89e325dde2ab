"""File > New project: a folder that may not exist yet (it is made), typed or browsed to.

Qt's directory chooser refuses a folder that does not exist ("Directory not found"), which
turned a newcomer's first step into a puzzle (issue 23, item 10). Here the folder is a line
of text, prefilled with a new folder beside the user's other projects; Browse picks a
parent (or an empty folder) and a name is added when the folder chosen is not empty."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from PySide6.QtWidgets import (QDialog, QDialogButtonBox, QFileDialog, QHBoxLayout, QLabel, QLineEdit, QPushButton,
                               QVBoxLayout)


def suggested_folder(base: Optional[Path] = None) -> Path:
    """A folder that does not exist yet: BASE/loff-project, -2, -3, ... (BASE: ~/LOFF projects)."""
    base = base or Path.home() / "LOFF projects"
    for n in range(1, 1000):
        candidate = base / ("loff-project" if n == 1 else f"loff-project-{n}")
        if not candidate.exists():
            return candidate
    return base / "loff-project-new"


def folder_problem(text: str) -> str:
    """Why a typed folder cannot hold a new project ("" when it can; a missing one is made)."""
    if not text.strip():
        return "type or choose a folder"
    path = Path(text.strip()).expanduser()
    if (path / "loff-project.json").exists():
        return "a project is already there: use File > Open project"
    if path.exists() and not path.is_dir():
        return "this is a file, not a folder"
    if path.is_dir() and any(path.iterdir()):
        return "this folder is not empty: choose an empty or a new folder (it is made)"
    return ""


class NewProjectDialog(QDialog):
    def __init__(self, parent: Any = None, start: Optional[Path] = None):
        super().__init__(parent)
        self.setWindowTitle("New project")
        self.folder = QLineEdit(str(start or suggested_folder()))
        self.folder.textChanged.connect(lambda _: self._check())
        browse = QPushButton("Browse...")
        browse.clicked.connect(self._browse)
        self.problem = QLabel("")
        self.problem.setWordWrap(True)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Create")
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        row = QHBoxLayout()
        row.addWidget(self.folder, 1)
        row.addWidget(browse)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("Folder of the new project (a new folder is made; an empty one is used):"))
        layout.addLayout(row)
        layout.addWidget(self.problem)
        layout.addWidget(self.buttons)
        self.resize(620, 140)
        self._check()

    def _check(self) -> None:
        problem = folder_problem(self.folder.text())
        self.problem.setText(problem)
        ok = self.buttons.button(QDialogButtonBox.StandardButton.Ok)
        ok.setEnabled(not problem)
        ok.setToolTip(problem)

    def _browse(self) -> None:
        chosen = QFileDialog.getExistingDirectory(self, "Where to put the new project")
        if not chosen:
            return
        path = Path(chosen)
        if path.is_dir() and any(path.iterdir()) and not (path / "loff-project.json").exists():
            path = suggested_folder(path)  # a parent folder: a new folder inside it
        self.folder.setText(str(path))

    def path(self) -> Path:
        return Path(self.folder.text().strip()).expanduser()
