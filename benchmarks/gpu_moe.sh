#!/usr/bin/env bash
# MoE layer fwd+bwd throughput vs an equal-FLOP dense FFN, bf16 on one CUDA GPU (H100 / H200).
#
# Targets (issue 4): ratio >= 0.75 at (16384 tokens, d 1024, d_ff 4096, 8 experts, top-2)
#                    ratio >= 0.6  at (16384 tokens, d 2048, d_ff 1408, 64 experts, top-6)
# Reference on an H200: loop 0.11 / 0.007, sort + per-expert matmul 0.48 / 0.09, sort + grouped_mm 0.63 / 0.46.
# Runs from this checkout (benchmarks/gpu_env.sh sets the path; on a machine without pydantic it
# installs the wheels of benchmarks/gpu_wheels.sh from .whl/). Extra arguments go to both runs of
# bench_moe.py (e.g. --profile 12); with APT_TRACE_DIR set, --profile also saves Chrome traces under
# $APT_TRACE_DIR/t1 and $APT_TRACE_DIR/t2. benchmarks/gpu_check.sh runs this among its GPU checks.
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/gpu_env.sh
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())"
trace() { if [ -n "${APT_TRACE_DIR:-}" ]; then printf "%s\n" --trace-dir "$APT_TRACE_DIR/$1"; fi; }

# Mixtral-like experts (SwiGLU, as the experts the reference numbers were measured with)
python3 benchmarks/bench_moe.py --device cuda --dtype bf16 --activation swiglu \
    --tokens 16384 --d-model 1024 --d-ff 4096 --experts 8 --top-k 2 --repeats 20 --warmup 3 $(trace t1) "$@"
# fine-grained experts (DeepSeek-like)
python3 benchmarks/bench_moe.py --device cuda --dtype bf16 --activation swiglu \
    --tokens 16384 --d-model 2048 --d-ff 1408 --experts 64 --top-k 6 --repeats 20 --warmup 3 $(trace t2) "$@"
