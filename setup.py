"""Package discovery for the three top-level folders installed under one namespace.

pyproject.toml holds all the metadata; this file only computes `packages` and `package_dir`,
because setuptools' declarative `packages.find` cannot put a prefix (qlora_studio.) in front of
folders at the repository root. Every folder below core/, gui/ and resources/ is found (data
folders too), so a new room needs no edit here or in pyproject.toml.
"""

from setuptools import find_namespace_packages, setup

ROOTS = {"core": "qlora_studio.core", "gui": "qlora_studio.gui", "resources": "qlora_studio.resources"}

packages = []
for folder, name in ROOTS.items():
    packages.append(name)
    packages += [f"{name}.{sub}" for sub in find_namespace_packages(where=folder, exclude=["*__pycache__*"])]

setup(packages=packages, package_dir={name: folder for folder, name in ROOTS.items()})
