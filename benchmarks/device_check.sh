#!/bin/bash
# One device session: the MaxSim kernel tests on a real GPU, then the CUDA benchmark (Triton vs PyTorch).
# Usage (repo root): OUT=/some/dir bash benchmarks/device_check.sh
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi -L
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
timeout 240 python3 -m pytest -q tests/test_kernels_maxsim.py -p no:cacheprovider 2>&1 | tee "$OUT/tests_cuda.log"
for args in "" "--ragged" "--dtype float16" "--dtype bfloat16"; do
  name=$(echo "cuda $args" | tr -c 'a-z0-9\n' '_' | tr -s '_')
  timeout 120 python3 benchmarks/bench_maxsim.py --runs 20 $args --out "$OUT/bench_${name}.json" > /dev/null
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[1].split('/')[-1], d['device'], 'ok' if d['ok'] else 'MISMATCH', {k: (round(v['median_s']*1e3, 3), round(v['speedup_vs_torch'], 2)) for k, v in d['results'].items()})" "$OUT/bench_${name}.json"
done
