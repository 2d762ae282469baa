#!/usr/bin/env bash
# One device session on a lent GPU (see docs/performance.md, "On a GPU"):
#   1. the GPU-relevant tests (float64 gradients, solver, device reductions, block output);
#   2. the benchmark at every size with true float32 products (tag gpu; default
#      z_step="auto"), with the paper's two-product Z step at 8k and 10k (tag
#      gpu-zgradient), with tensor-core products (tag gpu-tf32), plus the dense-vs-sparse
#      crossover;
#   3. the steady-state iteration against its one product (experiments/iteration_profile.py).
# Run from the repository root: bash experiments/gpu_check.sh
# Expects wheels for anndata and its pure-Python dependencies in .whl/ (the GPU image has
# jax, numpy, scipy, h5py, pandas) and the real data in .gpudata/ (both git-ignored; e.g.
# `cp ../shared/data/granja2019_D6T1_{2k,10k}.h5ad .gpudata/`).  Results: $OUT.
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
if ! python3 -c "import anndata" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/extra/*.whl
fi
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import jax, anndata, numpy, scipy; print(jax.__version__, jax.devices(), anndata.__version__, numpy.__version__, scipy.__version__)" | tee -a "$OUT/gpu.txt"
export SCCASE_DATA=$PWD/.gpudata
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # so the device peak of each run is its own

( timeout "${TEST_S:-120}" python3 -m pytest -q -p no:cacheprovider -x -n 4 \
    tests/test_gradients.py tests/test_steps.py tests/test_solver.py tests/test_fit.py tests/test_io.py \
    2>&1 | tail -15 ) | tee "$OUT/tests.txt"

B="python3 -m experiments.benchmark"
timeout "${BENCH_S:-210}" $B run synth2k:jax:tol synth4k:jax:tol synth8k:jax:tol real2k:jax:tol real10k:jax:tol \
  --tag gpu 2>&1 | grep -v '^{' | tee "$OUT/bench.txt"
timeout "${ZGRAD_S:-60}" $B run synth8k:jax:tol real10k:jax:tol --tag gpu-zgradient \
  --z-step gradient 2>&1 | grep -v '^{' | tee -a "$OUT/bench.txt"
timeout "${TF32_S:-80}" $B run synth4k:jax:tol synth8k:jax:tol real10k:jax:tol --tag gpu-tf32 \
  --precision tensorfloat32 2>&1 | grep -v '^{' | tee -a "$OUT/bench.txt"
timeout "${CROSS_S:-50}" $B crossover --tag gpu 2>&1 | tail -8 | tee -a "$OUT/bench.txt"
# 3. the steady-state iteration (free Z step) against its one product (no trace).
timeout "${ITER_S:-90}" python3 -m experiments.iteration_profile synth4k synth8k --warm 8 --reps 5 \
  2>&1 | grep -v '^E' | tee "$OUT/iteration.txt"
python3 - <<'EOF'
import glob, json, os
for f in sorted(glob.glob("experiments/results/*gpu*.json")):
    r = json.load(open(f))
    if "times" in r:
        t = r["times"]
        print(os.path.basename(f), r["n_iter"], f"F={r['final_loss']:.7g}", f"init={t['initialisation']:.2f}",
              f"iter={t['per_iteration']:.4f}", f"mm={r['matmul_s']:.4f}", f"out={t['output']:.2f}",
              f"total={t['total']:.1f}", f"peak={r.get('device_peak')}")
EOF
mkdir -p "$OUT/results"
cp experiments/results/*gpu*.json "$OUT/results/" 2>/dev/null
(cd "$OUT" && tar czf results.tgz results && rm -rf results)
