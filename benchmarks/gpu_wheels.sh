#!/usr/bin/env bash
# Wheels for a GPU machine that cannot reach PyPI (the `device` tool's machines: Python 3.12 with
# torch, pluggy, PyYAML, tqdm, matplotlib and safetensors, but no pydantic). Run here, where PyPI
# is reachable; it fills .whl/ (git-ignored) with:
#   - the four APT packages (their metadata carries the apt.plugins entry points), and
#   - pydantic and the packages it needs, pinned to the versions installed here.
# Then carry .whl to the GPU machine and run benchmarks/gpu_check.sh there.
#
#   bash benchmarks/gpu_wheels.sh            # wheels for CPython 3.12 (the device's Python)
#   PYVER=3.11 bash benchmarks/gpu_wheels.sh # for this machine's Python (gpu_check.sh --smoke)
set -euo pipefail
cd "$(dirname "$0")/.."
pyver="${PYVER:-3.12}"

rm -rf .whl && mkdir .whl
python3 -m pip wheel -q --no-deps -w .whl \
    packages/apt-core packages/apt-plugin-moe packages/apt-plugin-align packages/apt-plugin-checkpoint
pins=$(python3 -c 'from importlib.metadata import version
print(" ".join(f"{n}=={version(n)}" for n in ("pydantic", "pydantic-core", "annotated-types", "typing-inspection")))')
python3 -m pip download -q --no-deps --only-binary=:all: -d .whl \
    --python-version "$pyver" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    $pins
ls -1 .whl
du -sh .whl
