"""Package layout only (metadata is in pyproject.toml).

The design keeps flows/ and tasks/ as top-level folders of the repository; installed, they
become ``galot.flows`` and ``galot.tasks`` so that they never shadow (or are shadowed by) a
user's own Prefect project's ``flows``/``tasks`` packages. setuptools' package-dir does the
mapping, for wheels and editable installs alike; pyproject.toml alone cannot combine it with
package discovery, hence this file.
"""

from setuptools import find_packages, setup

setup(
    packages=["galot", "galot.templates", "galot.flows", "galot.tasks", *find_packages(include=["galot_core", "galot_core.*"])],
    package_dir={"galot.flows": "flows", "galot.tasks": "tasks"},
)
