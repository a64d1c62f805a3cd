# Sourced by gpu_check.sh and gpu_moe.sh: make apt and the plugins importable from this checkout.
#
# On the offline GPU machine (the `device` tool's: Python 3.12 with torch but no pydantic) the
# wheels that benchmarks/gpu_wheels.sh put in .whl/ bring pydantic and the packages' metadata
# (their apt.plugins entry points); the working tree's sources come first on the path, so the
# code that runs is this checkout's. Where apt is installed already, nothing is needed.
gpu_env_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if ! python3 -c "import importlib.metadata as m; m.version('apt-core')" 2>/dev/null; then
    if ! compgen -G "$gpu_env_root/.whl/*.whl" >/dev/null; then
        if python3 -c "import pydantic" 2>/dev/null; then
            echo "gpu_env: apt is not installed: plugins are found only through their entry points" >&2
        else
            echo "gpu_env: pydantic is missing and there is no .whl/: run benchmarks/gpu_wheels.sh" \
                "where PyPI is reachable and bring .whl along" >&2
            return 2
        fi
    fi
fi
if compgen -G "$gpu_env_root/.whl/*.whl" >/dev/null && ! python3 -c "import importlib.metadata as m; m.version('apt-core')" 2>/dev/null; then
    gpu_env_site=$(mktemp -d)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$gpu_env_site" "$gpu_env_root"/.whl/*.whl || return 2
    export PYTHONPATH="$gpu_env_site${PYTHONPATH:+:$PYTHONPATH}"
fi
for gpu_env_pkg in apt-core apt-plugin-moe apt-plugin-align apt-plugin-checkpoint; do
    PYTHONPATH="$gpu_env_root/packages/$gpu_env_pkg/src${PYTHONPATH:+:$PYTHONPATH}"
done
export PYTHONPATH PYTHONUNBUFFERED=1 MPLBACKEND=Agg
