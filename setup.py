"""Build glue that pyproject.toml cannot express: the shipped configs travel in the wheel as package data of
`cellemnet.shipped` without leaving their tracked folders (package-dir maps each one; see cellemnet/shipped)."""
import runpy

from setuptools import find_packages, setup

SHIPPED_DIRS = runpy.run_path("cellemnet/shipped/__init__.py")["SHIPPED_DIRS"]
SHIPPED = {f"cellemnet.shipped.{name}": folder for name, folder in SHIPPED_DIRS.items()}

setup(
    packages=find_packages(include=["cellemnet*"]) + list(SHIPPED),
    package_dir=SHIPPED,
    package_data={package: ["*.yaml"] for package in SHIPPED},
)
