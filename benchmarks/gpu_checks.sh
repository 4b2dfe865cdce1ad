#!/usr/bin/env bash
# What only a CUDA GPU shows, in stages that each fit a 10-minute slot. Run from anywhere, in an
# environment where the project is installed (`./install.sh`, or on a machine with its own torch:
# the DALI/webdataset/DeepSpeed/PyAV wheels, then `pip install --no-deps --no-build-isolation -e .`).
#
#   bash benchmarks/gpu_checks.sh tests      # GPU-marked tests: NVDEC decode, GPU log-mel, eval clips, bf16 step, bf16 ZeRO-2 run
#   bash benchmarks/gpu_checks.sh pipeline   # DALI clips/s from 128-px VP9 shards (goal: 2,000 per GPU), NVDEC load
#   bash benchmarks/gpu_checks.sh decode     # video decode alone and the whole pipeline with 1/2/4/7 DALI pipelines per GPU
#   bash benchmarks/gpu_checks.sh stages     # CPU ms per sample of each pipeline stage on this host's cores
#   bash benchmarks/gpu_checks.sh model      # one XKD step with ViT-B in bf16 at 32 and 128 clips: TFLOP/s, share
#                                            # of the bf16 matrix-product peak (goal: half), largest kernels
#   bash benchmarks/gpu_checks.sh train      # the whole loop, ViT-B, ZeRO-2 bf16: end to end vs model only (goal: 90%),
#                                            # and where a model-only step's time goes (the loop's phases, kernels);
#                                            # then end to end with 4 DALI pipelines feeding the GPU
#   bash benchmarks/gpu_checks.sh compiled   # the model step and the whole loop again with every transformer block
#                                            # compiled (train.compile=default): fewer, fused kernels
#   bash benchmarks/gpu_checks.sh bench      # `xkd bench --quick` with ViT-B: every stage on the GPU, once, with
#                                            # the smallest workloads (a check that it runs, not figures)
#   bash benchmarks/gpu_checks.sh finetune   # fine-tuning steps, ViT-B at 224 px (ft_ucf101), ZeRO-2 bf16: clips/s
#   bash benchmarks/gpu_checks.sh all        # the nine in turn
#
# The benchmarks write their figures to benchmarks/results/*_<GPU name>.json. When $OUT is set (a
# device session), each stage's log and those result files are copied there as well. Every stage
# runs under a time limit (STAGE_TIMEOUT seconds, default 300) so one hang cannot eat a GPU lease.
# On a machine with its own torch, the other packages come from `bash benchmarks/gpu_env.sh install`.
set -uo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
failed=()

with_decoder_load() {  # with_decoder_load NAME COMMAND...: run_stage, sampling NVDEC load ('dec' column) each second
  local name=$1 dmon_pid
  nvidia-smi dmon -s u -d 1 >"${OUT:-${TMPDIR:-/tmp}}/gpu_${name}_dmon.log" 2>&1 &
  dmon_pid=$!
  run_stage "$@"
  kill "$dmon_pid" 2>/dev/null
}

run_stage() {  # run_stage NAME COMMAND...: run it, keep its log, remember a failure and go on
  local name=$1 log
  shift
  log=${OUT:-${TMPDIR:-/tmp}}/gpu_$name.log
  echo "== $name: $*"
  timeout "${STAGE_TIMEOUT:-300}" "$@" 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  if ((rc != 0)); then
    echo "== $name failed (exit $rc), log: $log"
    failed+=("$name")
  fi
}

if ! "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "gpu_checks: $python sees no CUDA GPU (or has no torch); set PYTHON to the environment's python" >&2
  exit 2
fi
stages=("$@")
[[ ${#stages[@]} -eq 0 || ${stages[0]} == all ]] && stages=(tests pipeline decode stages model train compiled finetune bench)
gpu_file=$("$python" -c 'import torch; print(torch.cuda.get_device_name(0).replace(" ", "_"))')
for stage in "${stages[@]}"; do
  case $stage in
    tests) run_stage tests "$python" -m pytest -q -rs -m gpu tests ;;
    # the 200-rebuild memory check would not fit the stage's slot; it runs in the CPU benchmark
    pipeline) with_decoder_load pipeline "$python" benchmarks/bench_pipeline.py --warmup 30 --batches 200 \
      --memory-rebuilds 0 ;;
    decode) with_decoder_load decode "$python" benchmarks/bench_video_decode.py ;;
    stages) run_stage stages "$python" benchmarks/bench_pipeline_stages.py \
      --out "benchmarks/results/pipeline_stages_$gpu_file.json" ;;
    model)
      run_stage model "$python" benchmarks/bench_model.py --preset base --variants xkd --batch-size 32 --profile
      run_stage model_b128 "$python" benchmarks/bench_model.py --preset base --variants xkd --batch-size 128 \
        --out "benchmarks/results/bench_model_base_b128_$gpu_file.json" ;;
    train)
      run_stage train "$python" benchmarks/bench_train.py --config xkd_base --deepspeed-config zero2.json --profile 10
      run_stage train_4pipelines "$python" benchmarks/bench_train.py --config xkd_base --deepspeed-config zero2.json \
        --set data.pipelines_per_device=4 --set data.num_threads=16 ;;
    compiled)
      run_stage model_compiled "$python" benchmarks/bench_model.py --preset base --variants xkd --batch-size 32 \
        --compile default --profile
      run_stage train_compiled "$python" benchmarks/bench_train.py --config xkd_base --deepspeed-config zero2.json \
        --set train.compile=default --profile 10 ;;
    bench) run_stage bench "$python" -m xkd bench --device cuda --preset base --quick --repeats 2 \
      --out "${OUT:-${TMPDIR:-/tmp}}/bench_quick" ;;
    finetune) run_stage finetune "$python" benchmarks/bench_finetune.py --backbone-preset xkd_base \
      --deepspeed-config zero2.json ;;
    *) echo "gpu_checks: unknown stage '$stage' (tests, pipeline, decode, stages, model, train, compiled, finetune, bench, all)" >&2
       exit 2 ;;
  esac
done
if [[ -n ${OUT:-} ]]; then
  cp benchmarks/results/*"$gpu_file"*.json "$OUT"/ 2>/dev/null || true
fi
if ((${#failed[@]})); then
  echo "gpu_checks: failed: ${failed[*]}"
  exit 1
fi
echo "gpu_checks: all passed"
