"""The nox session ``packaging``: real wheels, a fresh venv, and the plugins found by metadata.

``noxfile.py`` imports :func:`packaging` from here, so ``nox -s packaging`` runs it. It
proves what a user gets from PyPI, with no source tree anywhere on the path:

1. build the wheel and sdist of apt-core and each plugin package (``PACKAGES``, ``python -m build``);
2. check their metadata (``twine check``);
3. create a fresh venv, install ``torch==2.13.0`` first (a plain ``torch`` requirement
   would pull a multi-GB CUDA build; set ``APT_TORCH_INDEX_URL`` to use another index,
   e.g. ``https://download.pytorch.org/whl/cpu``), then the wheels of PACKAGES;
4. from an empty temporary folder, ``apt plugins list --json`` finds every plugin of ``PLUGINS``
   (read from metadata: listing imports no plugin code);
5. ``pip uninstall -y apt-plugin-moe``: it is gone from the list, and a tiny ``apt train``
   still runs to completion with the remaining plugins.

Third-party wheels (torch included) are kept in a wheelhouse, ``$APT_WHEELHOUSE`` or
``~/.cache/apt-packaging/wheelhouse``, filled with ``pip download`` on the first run and
installed offline (``--no-index``) afterwards. Each stage logs its duration.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nox
from nox.command import CommandFailed


ROOT = Path(__file__).resolve().parent
PACKAGES = (
    "apt-core", "apt-plugin-moe", "apt-plugin-align", "apt-plugin-checkpoint", "apt-plugin-gradient",
    "apt-plugin-retrieval", "apt-plugin-tensorboard", "apt-plugin-vft",
)  # fmt: skip
PLUGINS = ("align", "checkpoint", "gradient", "moe", "retrieval", "tensorboard", "vft")
TORCH = "torch==2.13.0"

# A run small enough to finish in seconds on a CPU: two optimizer steps of a 1-layer GPT.
TINY_TRAIN_CONFIG = """\
model: {n_layer: 1, n_head: 2, d_model: 32, block_size: 32}
training:
  max_epochs: 1
  steps_per_epoch: 2
  batch_size: 2
  warmup_steps: 0
  val_interval: 2
  val_batches: 1
  log_interval: 1
  device: cpu
run: {name: packaging-smoke, dir: runs}
"""


def _bin(venv: Path, name: str) -> str:
    return str(venv / ("Scripts" if os.name == "nt" else "bin") / name)


def _plugins_listed(session: nox.Session, apt: str, workdir: Path) -> dict[str, dict[str, object]]:
    with session.chdir(workdir):
        out = session.run(apt, "plugins", "list", "--json", silent=True, external=True)
    assert isinstance(out, str)
    rows = json.loads(out)
    session.log("apt plugins list: " + ", ".join(f"{r['name']} {r.get('version')} [{r.get('status')}]" for r in rows))
    return {str(r["name"]): r for r in rows}


class _Clock:
    """Logs how long each stage took, so that a slow run shows where the time went."""

    def __init__(self, session: nox.Session) -> None:
        self.session = session
        self.start = self.last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.session.log(f"[{now - self.start:6.1f} s] {stage} took {now - self.last:.1f} s")
        self.last = now


def _wheelhouse() -> Path:
    path = Path(os.environ.get("APT_WHEELHOUSE", Path.home() / ".cache" / "apt-packaging" / "wheelhouse"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _pip_install(session: nox.Session, python: str, wheelhouse: Path, *targets: str) -> None:
    """Install ``targets`` into the venv of ``python``: offline from the wheelhouse, filling it on a miss.

    The venv is created without pip; this interpreter's pip installs into it (``pip --python``).
    Downloads always pin torch (:data:`TORCH`): resolving the wheels' ``torch>=2.4`` freely
    would fetch the newest CUDA build and its GBs of dependencies.
    """
    pip = [sys.executable, "-m", "pip", "--python", python]
    offline = [*pip, "install", "-q", "--no-index", "--find-links", str(wheelhouse), *targets]
    try:
        session.run(*offline, external=True, silent=True)
        return
    except CommandFailed:
        session.log(f"wheelhouse {wheelhouse} lacks something for {' '.join(targets)}; downloading once")
    index = os.environ.get("APT_TORCH_INDEX_URL")
    extra = ["--extra-index-url", index] if index else []
    pins = [] if TORCH in targets else [TORCH]
    session.run(*pip, "download", "-q", "-d", str(wheelhouse), *extra, *pins, *targets, external=True)
    for own in wheelhouse.glob("apt_*"):  # this tree's wheels are installed from dist/, never from the cache
        own.unlink()
    session.run(*offline, external=True)


@nox.session(python=False)
def packaging(session: nox.Session) -> None:
    """Build every package's wheel and sdist, check them, install them into a fresh venv and use them."""
    missing = [p for p in PACKAGES if not (ROOT / "packages" / p / "pyproject.toml").is_file()]
    if missing:
        session.error(f"missing packages: {', '.join(missing)} (expected packages/<name>/pyproject.toml)")

    clock = _Clock(session)
    wheelhouse = _wheelhouse()
    tmp = Path(tempfile.mkdtemp(prefix="apt-packaging-"))
    dist = tmp / "dist"
    try:
        # 1. wheels and sdists (the wheel is built from the sdist, which proves the sdist complete);
        #    without build isolation when the backend is already here (fast, offline)
        no_isolation = ["--no-isolation"] if importlib.util.find_spec("hatchling") is not None else []
        for package in PACKAGES:
            session.run(
                sys.executable, "-m", "build", "--sdist", "--wheel", *no_isolation, "--outdir", str(dist),
                str(ROOT / "packages" / package), silent=True, external=True,
            )  # fmt: skip
        wheels = sorted(dist.glob("*.whl"))
        sdists = sorted(dist.glob("*.tar.gz"))
        assert len(wheels) == len(PACKAGES) and len(sdists) == len(PACKAGES), (wheels, sdists)
        session.log("built: " + ", ".join(p.name for p in [*wheels, *sdists]))
        clock.lap("build")

        # 2. metadata
        session.run(sys.executable, "-m", "twine", "check", "--strict", *map(str, wheels + sdists), external=True)
        clock.lap("twine check")

        # 3. a fresh venv: torch first (CPU build), then the wheels and their other dependencies
        venv = tmp / "venv"
        session.run(sys.executable, "-m", "venv", "--without-pip", str(venv), external=True)
        python = _bin(venv, "python")
        _pip_install(session, python, wheelhouse, TORCH)
        clock.lap("install torch")
        _pip_install(session, python, wheelhouse, *map(str, wheels))
        clock.lap("install the wheels")

        # 4. listing from an empty folder, so that nothing from the source tree can be imported
        work = tmp / "work"
        work.mkdir()
        apt = _bin(venv, "apt")
        listed = _plugins_listed(session, apt, work)
        for name in PLUGINS:
            if name not in listed:
                session.error(f"`apt plugins list` does not show {name!r}; it shows {sorted(listed)}")
            if listed[name].get("status") != "available":
                session.error(f"plugin {name!r} is listed as {listed[name].get('status')!r}, expected 'available'")
        with session.chdir(work):
            session.run(apt, "plugins", "doctor", external=True)
        clock.lap("list + doctor")

        # 5. uninstall one plugin: it disappears, training still works with the others
        session.run(sys.executable, "-m", "pip", "--python", python, "uninstall", "-y", "-q", "apt-plugin-moe",
                    external=True)  # fmt: skip
        listed = _plugins_listed(session, apt, work)
        if "moe" in listed:
            session.error("`apt plugins list` still shows 'moe' after `pip uninstall apt-plugin-moe`")
        if not {"align", "checkpoint", "gradient"} <= set(listed):
            session.error(f"uninstalling moe also removed other plugins: {sorted(listed)}")
        (work / "tiny.yaml").write_text(TINY_TRAIN_CONFIG, encoding="utf-8")
        with session.chdir(work):
            session.run(apt, "train", "--config", "tiny.yaml", external=True)
        summaries = list((work / "runs").rglob("summary.json"))
        if not summaries:
            session.error("`apt train` finished but wrote no runs/*/summary.json")
        summary = json.loads(summaries[0].read_text(encoding="utf-8"))
        if summary.get("steps") != 2 or "moe" in {p["name"] for p in summary.get("plugins", [])}:
            session.error(
                f"unexpected training summary: steps {summary.get('steps')}, plugins {summary.get('plugins')}"
            )
        session.log(f"trained {summary['steps']} steps with plugins {[p['name'] for p in summary['plugins']]}")
        clock.lap("uninstall moe + list + train")
    finally:
        # A venv holding torch is tens of thousands of files: deleting it takes longer than
        # everything above on a slow disk, so it is left to a detached `rm -rf`.
        if shutil.which("rm") is not None:
            subprocess.Popen(["rm", "-rf", str(tmp)], start_new_session=True)
            session.log(f"removing {tmp} in the background")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        clock.lap("clean up")
