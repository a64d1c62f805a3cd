"""Fixtures for packaging tests: wheels built from this tree, fresh venvs, a cached wheelhouse.

These tests install real distributions into real virtual environments, so they exercise
entry points, metadata and imports exactly as a user's ``pip install`` would. To stay fast
(and to work offline after the first run) the third-party wheels apt-core needs without
torch are downloaded once into ``$APT_TEST_WHEELHOUSE`` (default
``~/.cache/apt-tests/wheelhouse``) and installed with ``--no-index --find-links``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parents[2]
CORE = REPO / "packages" / "apt-core"

# apt-core's dependencies that discovery, validation and hook dispatch need; torch is not
# among them (importing apt.plugins / apt.core must not import torch).
LIGHT_DEPS = ("pluggy", "pydantic", "packaging", "PyYAML")


def run(cmd: Sequence[str | Path], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run a command; on failure show its whole output in the assertion message."""
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _build_wheel(project: Path, out: Path) -> Path:
    """Build ``project``'s wheel into ``out`` with the build backend already installed here."""
    out.mkdir(parents=True, exist_ok=True)
    before = set(out.glob("*.whl"))
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", out, project])
    built = sorted(set(out.glob("*.whl")) - before) or sorted(out.glob("*.whl"))
    assert built, f"no wheel was built from {project}"
    return built[-1]


@dataclass
class Venv:
    """A fresh virtual environment driven by this interpreter's pip (``pip --python``)."""

    path: Path
    wheelhouse: Path | None = None

    @property
    def python(self) -> Path:
        return self.path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")

    def bin(self, name: str) -> Path:
        return self.path / ("Scripts" if os.name == "nt" else "bin") / name

    def env(self) -> dict[str, str]:
        """A clean environment: no PYTHONPATH pointing into the source tree, no autoload switch."""
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "APT_DISABLE_PLUGIN_AUTOLOAD")}
        env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
        return env

    def pip(self, *args: str | Path) -> str:
        return run([sys.executable, "-m", "pip", "--python", self.python, *args], env=self.env())

    def install(self, *targets: str | Path, deps: bool = False) -> None:
        """Install wheels or requirements offline from the wheelhouse."""
        assert self.wheelhouse is not None, "this venv has no wheelhouse (use the core_venv fixture)"
        flags = ["--no-index", "--find-links", str(self.wheelhouse), "-q"]
        self.pip("install", *flags, *([] if deps else ["--no-deps"]), *targets)

    def apt(self, *args: str | Path, cwd: Path) -> str:
        """Run the ``apt`` command of this venv (``python -m apt``) from ``cwd``; return stdout."""
        return run([self.python, "-m", "apt", *args], cwd=cwd, env=self.env())

    def python_script(self, code: str, cwd: Path) -> str:
        """Run ``code`` with the venv's python from ``cwd`` (outside the source tree); return stdout."""
        script = cwd / "script.py"
        script.write_text(textwrap.dedent(code), encoding="utf-8")
        return run([self.python, "-I", script], cwd=cwd, env=self.env())


@pytest.fixture(scope="session")
def wheelhouse() -> Path:
    """Wheels of apt-core's light dependencies, pinned to the versions installed here, cached across runs."""
    path = Path(os.environ.get("APT_TEST_WHEELHOUSE", Path.home() / ".cache" / "apt-tests" / "wheelhouse"))
    path.mkdir(parents=True, exist_ok=True)
    pins = [f"{name}=={version(name)}" for name in LIGHT_DEPS]
    stamp = path / (
        "ok-" + "-".join(p.replace("==", "_") for p in pins) + f"-py{sys.version_info[0]}{sys.version_info[1]}"
    )
    if not stamp.exists():
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "-d", str(path), *pins],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if proc.returncode != 0:
            pytest.skip(f"cannot fill the wheel cache {path} (needs PyPI once): {proc.stderr.strip()[-300:]}")
        stamp.touch()
    return path


@pytest.fixture(scope="session")
def apt_core_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel of packages/apt-core built from this tree (once per test session)."""
    return _build_wheel(CORE, tmp_path_factory.mktemp("apt-core-wheel"))


@pytest.fixture(scope="session")
def build_wheel() -> Callable[[Path, Path], Path]:
    """``build_wheel(project_dir, out_dir) -> wheel path``, with the build backend installed here."""
    return _build_wheel


def _is_installation_path(entry: str) -> bool:
    """Whether a ``sys.path`` entry belongs to the installation (not the repo root or the test folders)."""
    path, tests = Path(entry).resolve(), (REPO / "tests").resolve()
    return path.is_dir() and path != REPO.resolve() and path != tests and tests not in path.parents


@pytest.fixture
def make_venv(tmp_path: Path) -> Callable[..., Venv]:
    """Factory for fresh venvs.

    ``inherit=True`` makes this interpreter's import path (its site-packages, editable
    installs, torch) visible in the new venv through a ``.pth`` file, after the venv's own
    site-packages. ``--system-site-packages`` would not do: this interpreter may itself be
    a venv (nox's), whose packages are not in the base interpreter's site-packages.
    """

    def make(name: str = "venv", *, inherit: bool = False) -> Venv:
        path = tmp_path / name
        run([sys.executable, "-m", "venv", "--without-pip", path])
        venv = Venv(path=path)
        if inherit:
            site = run([venv.python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip()
            inherited = [p for p in sys.path if p and _is_installation_path(p)]
            (Path(site) / "_apt_test_parent.pth").write_text("\n".join(inherited) + "\n", encoding="utf-8")
        return venv

    return make


@pytest.fixture
def core_venv(make_venv: Callable[..., Venv], apt_core_wheel: Path, wheelhouse: Path) -> Venv:
    """A fresh venv with apt-core (from its wheel) and its light dependencies, without torch."""
    venv = make_venv("core-venv")
    venv.wheelhouse = wheelhouse
    venv.install(*LIGHT_DEPS, deps=True)
    venv.install(apt_core_wheel)  # --no-deps: torch is not needed for discovery and dispatch
    return venv
