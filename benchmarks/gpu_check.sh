#!/usr/bin/env bash
# The device check: the CUDA tests, then every performance benchmark on the GPU, logs under $OUT.
# Run on a lent GPU machine from the repo root, with the missing packages carried as wheels in .whl/
# (see benchmarks/README.md, "On a GPU"). Each step has its own time limit so one hang cannot eat the lease.
set -u -o pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 ROBUSTKIT_CACHE=${ROBUSTKIT_CACHE:-/tmp/robustkit-cache}
{ nvidia-smi; python3 -c 'import torch, sys; print(sys.version); print(torch.__version__, torch.cuda.get_device_name(0))'; } >"$OUT/environment.txt" 2>&1
STEPS=${STEPS-tests bench}  # a subset, e.g. STEPS=tests; EXTRA='python3 benchmarks/x.py ...' runs last
if [[ " $STEPS " == *" tests "* ]]; then
start=$(date +%s)
timeout "${TEST_LIMIT:-240}" python3 -m pytest tests/test_gpu.py -q -p no:cacheprovider -rs 2>&1 | tee "$OUT/test_gpu.log"
echo "test_gpu rc=$? in $(( $(date +%s) - start )) s" | tee -a "$OUT/test_gpu.log"
fi
if [[ " $STEPS " == *" bench "* ]]; then
start=$(date +%s)
timeout "${BENCH_LIMIT:-300}" python3 benchmarks/run_all.py --device cuda --out "$OUT/run_all_cuda.json" 2>&1 | tee "$OUT/run_all_cuda.log"
echo "run_all rc=$? in $(( $(date +%s) - start )) s" | tee -a "$OUT/run_all_cuda.log"
fi
if [[ -n "${EXTRA:-}" ]]; then
  start=$(date +%s)
  timeout "${EXTRA_LIMIT:-300}" bash -c "$EXTRA" 2>&1 | tee "$OUT/extra.log"
  echo "extra rc=$? in $(( $(date +%s) - start )) s" | tee -a "$OUT/extra.log"
fi
