"""Packaging that pyproject.toml cannot say alone (metadata and dependencies are there).

conf/ (the Hydra config tree) ships inside the wheel as the package data `pipeline/conf`,
so an installed `safecompress` finds its configs from any folder; in a checkout or an
editable install `pipeline/__main__.py` reads conf/ beside the package instead.
"""

from pathlib import Path

from setuptools import find_packages, setup

CONF_GROUPS = sorted(p.name for p in Path(__file__).resolve().parent.joinpath("conf").iterdir() if p.is_dir())
CONF_PACKAGES = ["pipeline.conf", *(f"pipeline.conf.{g}" for g in CONF_GROUPS)]

setup(
    packages=[*find_packages(include=["pipeline*", "training*", "sparse*", "attacks*"]), *CONF_PACKAGES],
    package_dir={"pipeline.conf": "conf"},
    package_data={name: ["*.yaml"] for name in CONF_PACKAGES},
)
