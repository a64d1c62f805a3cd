"""Development sessions.

    nox -s tests       the whole test suite in a fresh venv (torch==2.13.0 CPU first)
    nox -s packaging   real wheels + sdists, twine check, a fresh venv with no source tree
    nox -s lint        ruff and mypy on every package's src/

torch is pinned to 2.13.0 in these sessions because a bare ``torch`` requirement pulls a
multi-GB CUDA build; the packages themselves declare ``torch>=2.4``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nox


sys.path.insert(0, str(Path(__file__).resolve().parent))  # nox loads this file by path
from noxfile_packaging import packaging  # noqa: E402


__all__ = ["lint", "packaging", "tests"]

nox.options.sessions = ["tests", "packaging"]
nox.options.reuse_existing_virtualenvs = True

TORCH = "torch==2.13.0"
PACKAGES = [
    "packages/apt-core",
    "packages/apt-plugin-moe",
    "packages/apt-plugin-align",
    "packages/apt-plugin-checkpoint",
    "packages/apt-plugin-gradient",
    "packages/apt-plugin-retrieval",
    "packages/apt-plugin-tensorboard",
    "packages/apt-plugin-vft",
]


def _install(session: nox.Session, *extra: str) -> None:
    session.install(TORCH)
    session.install(*(arg for p in PACKAGES for arg in ("-e", p)), "pytest>=8", "build", "hatchling", *extra)


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    """Run the test suite (pass pytest arguments after --)."""
    # pyarrow, datasets: apt data prepare's Parquet and save_to_disk sources; faiss-cpu: the retrieval
    # plugin's index; transformers: the Hugging Face export/import tests load APT's exports and make checkpoints
    _install(session, "pyarrow", "datasets", "faiss-cpu", "transformers==5.25.0")
    # APT_RUN_SLOW=1: also the 10-SIGKILL resume test (about a minute)
    session.run(
        "python", "-m", "pytest", "tests", "-q", "-p", "no:cacheprovider", *session.posargs, env={"APT_RUN_SLOW": "1"}
    )


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """ruff (lint) and mypy (types) on the packages' sources."""
    _install(session, "ruff", "mypy", "types-PyYAML")
    session.run("ruff", "check", *PACKAGES, "tests", "benchmarks", "examples")
    for package in PACKAGES:
        session.run("mypy", f"{package}/src")
