"""The independent judges (pocketsphinx, Resemblyzer) are optional: they are imported only when a measurement
needs them, and a missing one gives an error that says how to install it."""

from __future__ import annotations

import importlib
from types import ModuleType

INSTALL_HINT = 'pip install "kanade-stream[eval]"'


class JudgeMissingError(ImportError):
    """An evaluation dependency is not installed; the message names the package and the install command."""


def require(module: str, package: str, purpose: str) -> ModuleType:
    """Import `module` (from the PyPI package `package`) or raise JudgeMissingError explaining what it is for."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise JudgeMissingError(
            f"{purpose} needs the {package} package, which is not installed: {INSTALL_HINT} "
            f"(or pip install {package})"
        ) from err


def judge_versions() -> dict[str, str]:
    """Installed versions of the judges ("not installed" where missing), for reports."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("pocketsphinx", "resemblyzer"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found
