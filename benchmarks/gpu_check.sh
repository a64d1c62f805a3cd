#!/usr/bin/env bash
# Everything in APT that needs a CUDA GPU, as one prepared call to a lent H100/H200 (the `device` tool):
#   1. the MoE tests, the CUDA-only ones included (grouped_mm in bf16, with and without biases,
#      against the per-expert loop);
#   2. `apt train` on CUDA (bf16 autocast) with the moe, align and checkpoint plugins: one epoch, then
#      `--resume latest` into a second epoch from the CUDA checkpoint, then `apt generate --weights stable`;
#   3. `torchrun --nproc_per_node=1 -m apt train` on CUDA: the launch path only. DDP/FSDP2 over NCCL
#      need two GPUs (NCCL refuses two ranks on one device), so one GPU cannot check them;
#   4. benchmarks/gpu_moe.sh (the issue's two GPU shapes) with a profile of each variant: the costliest
#      kernels go to the log, Chrome traces to $OUT/t1 and $OUT/t2.
# A failing step does not stop the others; the summary table is printed last and the exit status
# says whether every step passed.
#
# Before the call, here (PyPI reachable):  bash benchmarks/gpu_wheels.sh   (fills .whl/)
# The call: run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=540)
# Back under $OUT: gpu_check.log (the whole output), t1/ and t2/ (traces).
#
# --smoke runs the same steps on this machine's CPU at tiny sizes, to check the script itself
# without spending device time (build the wheels with PYVER=3.11 first).
set -uo pipefail
cd "$(dirname "$0")/.."
smoke=0
[ "${1:-}" = "--smoke" ] && smoke=1
out="${OUT:-/tmp/apt_gpu_check}"
mkdir -p "$out"
rm -rf "$out/t1" "$out/t2"

main() {
    source benchmarks/gpu_env.sh || return 2
    local work device
    work=$(mktemp -d)
    local -a train_sets launch_sets rows=()
    if [ $smoke = 1 ]; then
        device=cpu
        train_sets=(--set training.device=cpu --set model.n_layer=1 --set training.steps_per_epoch=10)
        launch_sets=(--set training.device=cpu --set model.n_layer=1 --set training.steps_per_epoch=5)
    else
        device=cuda
        train_sets=(--set training.steps_per_epoch=150)
        launch_sets=(--set training.steps_per_epoch=30)
    fi

    step() {  # step NAME COMMAND...: run it, log its status and wall time
        local name=$1 t0=$SECONDS rc
        shift
        echo
        echo "=== $name: $*"
        "$@"
        rc=$?
        rows+=("$(printf '%-22s %-8s %5ss' "$name" "$([ $rc = 0 ] && echo ok || echo "FAIL($rc)")" $((SECONDS - t0)))")
    }

    step environment python3 -c "
import torch, torch.nn.functional as F, apt, apt_plugin_moe
assert '$device' == 'cpu' or torch.cuda.is_available(), 'no CUDA device'
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'apt', apt.__version__)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(p.name, p.multi_processor_count, 'SMs', round(p.total_memory / 2**30), 'GiB', 'sm', p.major, p.minor)
print('F.grouped_mm:', hasattr(F, 'grouped_mm'), ' torch._grouped_mm:', hasattr(torch, '_grouped_mm'))
"
    step moe-tests python3 -m pytest -q -p no:cacheprovider tests/moe -rs
    step train-epoch-1 python3 -m apt train --run-dir "$work/run" --set training.max_epochs=1 "${train_sets[@]}"
    step train-resume python3 -m apt train --run-dir "$work/run" --resume latest --set training.max_epochs=2 \
        "${train_sets[@]}"
    step summary python3 -c "import json, sys; s = json.load(open(sys.argv[1])); print({k: s[k] for k in sorted(s) if not isinstance(s[k], (dict, list))})" "$work/run/summary.json"
    step generate python3 -m apt generate --run "$work/run" --prompt "def " --weights stable --max-new-tokens 64
    step torchrun-launch python3 -m torch.distributed.run --standalone --nproc_per_node=1 -m apt train \
        --run-dir "$work/launch" --set training.max_epochs=1 "${launch_sets[@]}"
    if [ $smoke = 1 ]; then
        local -a bench=(python3 benchmarks/bench_moe.py --tokens 512 --d-model 64 --d-ff 128 --repeats 2 --warmup 1)
        step moe-bench-1 "${bench[@]}" --profile 8 --trace-dir "$out/t1"
        step moe-bench-2 "${bench[@]}" --experts 16 --top-k 4 --profile 8 --trace-dir "$out/t2" --no-loop
    else
        APT_TRACE_DIR="$out" step moe-bench bash benchmarks/gpu_moe.sh --profile 12
    fi
    rm -rf "$work"

    echo
    echo "=== MoE ratios (dense time / variant time; targets: >= 0.75 at 8 experts top-2, >= 0.6 at 64 top-6)"
    grep -E "^MoE fwd|^(dense|loop|sliced|grouped_mm|auto) " "$out/gpu_check.log"
    echo
    echo "=== summary ($(date -u +%FT%TZ), log: \$OUT/gpu_check.log)"
    printf '%s\n' "${rows[@]}"
    ! printf '%s\n' "${rows[@]}" | grep -q FAIL
}

# the pipeline ends when tee has written everything: the log that comes back is complete
main 2>&1 | tee "$out/gpu_check.log"
exit "${PIPESTATUS[0]}"
