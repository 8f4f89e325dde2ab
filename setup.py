"""Package list for setuptools (the rest of the metadata is in pyproject.toml).

Here rather than in pyproject.toml because the top-level resources/ folder (icons, themes)
goes into the wheel as the data package `loff_studio_resources`, a mapping that a
`packages.find` table cannot express. app/resources.py finds it there (see its docstring).
"""
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["loff_core", "loff_core.*", "app", "app.*"]) + ["loff_studio_resources"],
    package_dir={"loff_studio_resources": "resources"},
)
