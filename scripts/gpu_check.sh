#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one go (`make gpu-check`; CI has no GPU and never runs it):
#   1. the Bi-WKV tests on CUDA: Triton compiled for the card (and the PyTorch path on the GPU)
#      against the float64 reference, padding, extremes, half inputs, torch.compile;
#   2. the network tests on CUDA: a few fp16-autocast training steps lower the loss;
#   3. `python -m nnunet_sss.bench.wkv --gpu-only`: Triton against the PyTorch path at
#      T = 64k, C = 256 (and network shapes), bandwidth against the card's peak, launch sweep;
#   4. `python -m nnunet_sss.bench.network` on the GPU: eager, then both networks torch.compile'd
#      (what nnU-Net does on a GPU by default), then the size sweeps;
#   5. `scripts/gpu_profile.py`: the checkpointing variants' step time and memory, and where one
#      eager step's GPU time goes (kernel count, busy time against wall time);
#   6. `python -m nnunet_sss.bench.network --breakdown`: both networks' GPU time per kind of op;
#   7. `python -m nnunet_sss.bench.memory`: the GPU planner's memory model against
#      torch.cuda.max_memory_allocated, float32 and then under fp16 autocast (--amp).
# Each step has its own time limit and log (in $LOGS; a limit of 0 skips the step); a failing
# step does not stop the others. Extra arguments for the wkv benchmark: WKV_ARGS.
# PY: the Python to use (default: the project's .venv, else python3). Without an installed
# package (a bare machine with torch and Triton), the source tree is laid out under $WORK the
# way pyproject.toml installs it and used from there.
set -u
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$( [ -x "$REPO/.venv/bin/python" ] && echo "$REPO/.venv/bin/python" || echo python3 )}
LOGS=${LOGS:-$REPO/gpu_check_logs}
WORK=${WORK:-/tmp/nnunet_sss_gpu_check}
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$WORK/triton_cache}

cd "$REPO"
if ! "$PY" -c "import nnunet_sss.kernels" 2>/dev/null; then
    rm -rf "$WORK/src" && mkdir -p "$WORK/src"
    cp -r nnunet_sss "$WORK/src/" && cp -r kernels "$WORK/src/nnunet_sss/kernels" && cp -r plans "$WORK/src/nnunet_sss/plans"
    export PYTHONPATH="$WORK/src${PYTHONPATH:+:$PYTHONPATH}"
    cd "$WORK/src"  # so that this nnunet_sss, not the repository's folder, is imported
fi

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    [ "$limit" = 0 ] && { echo "=== $name: skipped"; return; }
    echo "=== $name ($(date +%T), limit ${limit}s)"
    timeout "$limit" "$@" > "$LOGS/$name.log" 2>&1
    local rc=$?
    tail -n "${TAIL:-40}" "$LOGS/$name.log"
    echo "=== $name: exit $rc"
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv 2>&1 | tee "$LOGS/gpu.txt"
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda)" 2>&1 | tee -a "$LOGS/gpu.txt"
# pytest-xdist, where installed, spreads the tests (and Triton's compiles) over the CPU cores
XDIST=$("$PY" -c "import xdist" 2>/dev/null && echo "-n ${XDIST_WORKERS:-8}")
step kernel_tests "${KERNEL_LIMIT:-300}" "$PY" -m pytest -q -p no:cacheprovider $XDIST -k cuda "$REPO/tests/kernels"
step wkv_bench "${WKV_LIMIT:-240}" "$PY" -m nnunet_sss.bench.wkv --gpu-only --gpu-shape 8x65536x256 4096x512x32 2048x64x320 \
    --gpu-configs ${GPU_CONFIGS:-128,64,1,1 256,64,2,1 128,32,1,1 128,16,8,1,tile 128,16,4,1,tile 64,32,8,1,tile 64,16,4,1,tile 128,32,8,1,tile 32,32,4,1,tile} ${WKV_ARGS:-}
step network_tests "${NETWORK_TESTS_LIMIT:-120}" "$PY" -m pytest -q -p no:cacheprovider -k cuda "$REPO/tests/network/test_unet.py"
step network_bench "${NETWORK_LIMIT:-200}" "$PY" -m nnunet_sss.bench.network --sweep none --json "$LOGS/network.json"
step network_bench_compiled "${COMPILED_LIMIT:-400}" "$PY" -m nnunet_sss.bench.network --compile --sweep none
step network_sweep "${SWEEP_LIMIT:-200}" "$PY" -m nnunet_sss.bench.network --plans --sweep 2d 3d
step gpu_profile "${PROFILE_LIMIT:-120}" "$PY" "$REPO/scripts/gpu_profile.py"
step network_breakdown "${BREAKDOWN_LIMIT:-120}" "$PY" -m nnunet_sss.bench.network --breakdown --plans hippocampus3d hippocampus2d
step memory_model "${MEMORY_LIMIT:-240}" "$PY" -m nnunet_sss.bench.memory --json "$LOGS/memory.json"
step memory_model_amp "${MEMORY_AMP_LIMIT:-120}" "$PY" -m nnunet_sss.bench.memory --amp --json "$LOGS/memory_amp.json"
