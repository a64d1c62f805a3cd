"""The nox session ``packaging``: real wheels, a fresh venv, and the plugins found by metadata.

``noxfile.py`` imports :func:`packaging` from here, so ``nox -s packaging`` runs it. It
proves what a user gets from PyPI, with no source tree anywhere on the path:

1. build the wheel and sdist of apt-core and the three plugin packages (``python -m build``);
2. check their metadata (``twine check``);
3. create a fresh venv, install ``torch==2.13.0`` first (a plain ``torch`` requirement
   would pull a multi-GB CUDA build; set ``APT_TORCH_INDEX_URL`` to use another index,
   e.g. ``https://download.pytorch.org/whl/cpu``), then the four wheels;
4. from an empty temporary folder, ``apt plugins list --json`` finds moe, align and
   checkpoint (read from metadata: listing imports no plugin code);
5. ``pip uninstall -y apt-plugin-moe``: it is gone from the list, and a tiny ``apt train``
   still runs to completion with the remaining plugins.

pip's download cache is reused between runs, so after the first run only the builds and
the install remain (under three minutes on two cores).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import nox


ROOT = Path(__file__).resolve().parent
PACKAGES = ("apt-core", "apt-plugin-moe", "apt-plugin-align", "apt-plugin-checkpoint")
PLUGINS = ("align", "checkpoint", "moe")
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


@nox.session(python=False)
def packaging(session: nox.Session) -> None:
    """Build the four wheels and sdists, check them, install them into a fresh venv and use them."""
    missing = [p for p in PACKAGES if not (ROOT / "packages" / p / "pyproject.toml").is_file()]
    if missing:
        session.error(f"missing packages: {', '.join(missing)} (expected packages/<name>/pyproject.toml)")

    tmp = Path(tempfile.mkdtemp(prefix="apt-packaging-"))
    dist = tmp / "dist"
    try:
        # 1. wheels and sdists; without build isolation when the backend is already here (fast, offline)
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

        # 2. metadata
        session.run(sys.executable, "-m", "twine", "check", "--strict", *map(str, wheels + sdists), external=True)

        # 3. a fresh venv: torch first (CPU build), then the wheels and their other dependencies
        venv = tmp / "venv"
        session.run(sys.executable, "-m", "venv", str(venv), external=True)
        pip = [_bin(venv, "python"), "-m", "pip", "install", "-q"]
        index = os.environ.get("APT_TORCH_INDEX_URL")
        session.run(*pip, TORCH, *(["--index-url", index] if index else []), external=True)
        session.run(*pip, *map(str, wheels), external=True)

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

        # 5. uninstall one plugin: it disappears, training still works with the others
        session.run(_bin(venv, "python"), "-m", "pip", "uninstall", "-y", "-q", "apt-plugin-moe", external=True)
        listed = _plugins_listed(session, apt, work)
        if "moe" in listed:
            session.error("`apt plugins list` still shows 'moe' after `pip uninstall apt-plugin-moe`")
        if not {"align", "checkpoint"} <= set(listed):
            session.error(f"uninstalling moe also removed other plugins: {sorted(listed)}")
        (work / "tiny.yaml").write_text(TINY_TRAIN_CONFIG, encoding="utf-8")
        with session.chdir(work):
            session.run(apt, "train", "--config", "tiny.yaml", external=True)
        summaries = list((work / "runs").rglob("summary.json"))
        if not summaries:
            session.error("`apt train` finished but wrote no runs/*/summary.json")
        session.log(f"training summary: {summaries[0].read_text(encoding='utf-8')[:300]}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
