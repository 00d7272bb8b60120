#!/usr/bin/env bash
# One-command check of vlmtune on a machine with a CUDA GPU (one is enough), in about 8 minutes from a fresh
# clone: sets up .venv with the CUDA build of torch, runs the tests marked `gpu`, trains each family's smoke recipe
# in bf16 (and with QLoRA where bitsandbytes imports), benchmarks, exports and predicts each, then prints one line
# per check and a summary. Exit status 0 only if no check failed. Nothing outside the repository is written except
# pip's cache; runs and one log per check go to a temporary directory, named in the summary.
#
#   bash scripts/gpu-check.sh
#   VLMTUNE_TORCH="torch==2.13.0" PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cu128 bash scripts/gpu-check.sh
#
# VLMTUNE_TORCH is the torch requirement (default torch==2.13.0: on Linux x86_64, PyPI's wheel is the CUDA build);
# VLMTUNE_GPU_CHECK_STEPS the training steps per smoke run (default 20).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

started=$SECONDS
passed=0
failed=0
skipped=0
failures=()

line() { # STATUS NAME DETAIL
  printf '%-4s %-34s %s (%ds)\n' "$1" "$2" "$3" "$((SECONDS - started))"
}
ok() { passed=$((passed + 1)); line ok "$1" "${2:-}"; }
fail() { failed=$((failed + 1)); failures+=("$1"); line FAIL "$1" "${2:-}"; }
skip() { skipped=$((skipped + 1)); line skip "$1" "${2:-}"; }

# Refuse before installing gigabytes when there is no GPU to check.
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
  echo "gpu-check: no CUDA GPU on this machine (nvidia-smi is missing or lists no GPU); nothing was checked." >&2
  echo "gpu-check: run it on a GPU node; on CPU use scripts/test.sh (the gpu-marked tests skip there)." >&2
  exit 2
fi
gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
line info gpu "$gpu_name ($(nvidia-smi -L | grep -c '^GPU ') visible)"

export VLMTUNE_TORCH=${VLMTUNE_TORCH:-torch==2.13.0}
export PIP_PROGRESS_BAR=off HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0} # one GPU: the smoke runs are single-process
log_dir=$(mktemp -d "${TMPDIR:-/tmp}/vlmtune-gpu-check.XXXXXX")
export VLMTUNE_RUNS_DIR="$log_dir/runs" VLMTUNE_CACHE_DIR="$log_dir/cache"
py=.venv/bin/python
vlmtune=(.venv/bin/python -m vlmtune_cli)

# run NAME TIMEOUT_S CMD...: runs CMD with its output in $log_dir/NAME.log; returns its status.
run() {
  local name=$1 limit=$2
  shift 2
  timeout "$limit" "$@" >"$log_dir/$name.log" 2>&1
}
tail_of() { tail -n 3 "$log_dir/$1.log" | tr '\n' ' ' | cut -c 1-160; }

# 1. The venv with the CUDA build of torch.
if run setup 420 bash scripts/setup.sh; then
  ok setup "$VLMTUNE_TORCH in .venv"
else
  fail setup "$(tail_of setup)"
fi
if ! cuda_info=$($py - 2>&1 <<'EOF'
import torch
if torch.version.cuda is None:
    raise SystemExit(f"torch {torch.__version__} is a CPU build: set VLMTUNE_TORCH and PIP_EXTRA_INDEX_URL to a CUDA build, or remove .venv")
if not torch.cuda.is_available():
    raise SystemExit(f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU: driver too old for this build?")
major, minor = torch.cuda.get_device_capability()
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name()}, compute capability {major}.{minor}")
EOF
); then
  fail "torch sees the GPU" "$cuda_info"
  echo "gpu-check: stopping: without CUDA in torch nothing else can be checked (logs in $log_dir)" >&2
  exit 1
fi
ok "torch sees the GPU" "$cuda_info"
capability=$($py -c 'import torch; print("%d%d" % torch.cuda.get_device_capability())')
if [ "$capability" -lt 80 ]; then
  line info precision "compute capability < 8.0: bf16 is emulated here (slow); precision=auto would pick fp16"
fi

# 2. bitsandbytes for QLoRA, if this platform has a wheel (not required by vlmtune).
if $py -c "import bitsandbytes" >/dev/null 2>&1 || { run bitsandbytes 180 $py -m pip install --quiet bitsandbytes &&
  $py -c "import bitsandbytes" >/dev/null 2>&1; }; then
  has_bnb=1
  ok bitsandbytes "$($py -c 'import bitsandbytes; print(bitsandbytes.__version__)' 2>/dev/null)"
else
  has_bnb=0
  skip bitsandbytes "does not install or import here: QLoRA checks skip"
fi

# 3. The tests marked gpu.
if run pytest-gpu 240 $py -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py; then
  ok "pytest -m gpu" "$(grep -Eo '[0-9]+ (passed|skipped)[^=]*' "$log_dir/pytest-gpu.log" | tail -n 1)"
else
  fail "pytest -m gpu" "$(tail_of pytest-gpu)"
fi

# 4. Each family's smoke recipe in bf16 (and QLoRA): train, then benchmark, export and predict with the run. The
# runs are tiny, so they share the GPU and run side by side (the tokenised cache and model builds are locked);
# each prints its lines into a file, shown in order once all are done.
steps=${VLMTUNE_GPU_CHECK_STEPS:-20}
$py -c "from PIL import Image; Image.new('RGB', (320, 240), (200, 40, 40)).save('$log_dir/probe.png')"
common=(--set "training.max_steps=$steps" --set training.eval_steps=1000 --set training.save_steps=1000
  --set "training.report_to=[]" --set training.logging_steps=5)
check_run() { # LABEL RECIPE OVERRIDES... (prints its own lines; counted by the caller)
  local label=$1 recipe=$2
  shift 2
  local variant="gpu-$label" dir="$VLMTUNE_RUNS_DIR/gpu-$label"
  if run "train-$label" 300 "${vlmtune[@]}" train "$recipe" --set "variant=$variant" "${common[@]}" "$@" --json; then
    line ok "train $label" "$(grep -o '"final_loss": [0-9.]*' "$log_dir/train-$label.log" | head -n 1)"
  else
    line FAIL "train $label" "$(tail_of "train-$label")"
    return
  fi
  if run "benchmark-$label" 240 "${vlmtune[@]}" benchmark "$dir" --limit 4 --batch-size 4 --max-new-tokens 16; then
    line ok "benchmark $label" "metrics.json written"
  else
    line FAIL "benchmark $label" "$(tail_of "benchmark-$label")"
  fi
  if run "export-$label" 240 "${vlmtune[@]}" export "$dir" --merge --out "$log_dir/export-$label"; then
    line ok "export $label" "merged model in $log_dir/export-$label"
  else
    line FAIL "export $label" "$(tail_of "export-$label")"
  fi
  if run "predict-$label" 240 "${vlmtune[@]}" predict "$dir" "$log_dir/probe.png" --max-new-tokens 16 \
    --out "$log_dir/predict-$label"; then
    line ok "predict $label" "answer and drawing in $log_dir/predict-$label"
  else
    line FAIL "predict $label" "$(tail_of "predict-$label")"
  fi
}
labels=()
start_run() { # LABEL RECIPE OVERRIDES...
  labels+=("$1")
  (check_run "$@") >"$log_dir/lines-$1.txt" 2>&1 &
}
bf16=(--set model.dtype=bfloat16 --set training.precision=bf16)
start_run qwen2-vl-bf16 recipes/smoke.toml "${bf16[@]}"
start_run qwen2.5-vl-bf16 recipes/smoke-qwen2.5-vl.toml "${bf16[@]}"
start_run mllama-bf16 recipes/smoke-mllama.toml "${bf16[@]}"
# Full components in bf16 beside a LoRA LLM: trainable weights in float32, PEFT's modules_to_save on Qwen-VL.
start_run qwen2-vl-full-bf16 recipes/smoke.toml "${bf16[@]}" --set tuning.vision=full --set tuning.projector=full \
  --set tuning.llm=lora
if [ "$has_bnb" = 1 ]; then
  start_run qwen2-vl-qlora recipes/smoke.toml --set model.quantization=4bit --set model.dtype=bfloat16 \
    --set training.precision=bf16
else
  skip "train qwen2-vl-qlora" "bitsandbytes does not import"
fi
# FSDP over 2 GPUs (NCCL, bf16 compute with float32 gradient reduction), every component full: trains sharded, and
# its consolidated final/ (ordinary safetensors) benchmarks in one process.
check_fsdp() {
  local dir="$VLMTUNE_RUNS_DIR/gpu-fsdp"
  if run train-fsdp 300 $py -m torch.distributed.run --standalone --nproc_per_node 2 -m vlmtune_cli train \
    recipes/smoke.toml --set variant=gpu-fsdp "${common[@]}" "${bf16[@]}" --set training.strategy=fsdp \
    --set tuning.vision=full --set tuning.projector=full --set tuning.llm=full; then
    line ok "train fsdp-2gpu" "sharded checkpoints: $(ls -d "$dir"/checkpoints/*/pytorch_model_fsdp_0 | wc -l)"
  else
    line FAIL "train fsdp-2gpu" "$(tail_of train-fsdp)"
    return
  fi
  if run benchmark-fsdp 240 "${vlmtune[@]}" benchmark "$dir" --limit 4 --batch-size 4 --max-new-tokens 16; then
    line ok "benchmark fsdp-2gpu" "consolidated final/ loads and generates"
  else
    line FAIL "benchmark fsdp-2gpu" "$(tail_of benchmark-fsdp)"
  fi
}
if [ "$($py -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
  labels+=(fsdp)
  (check_fsdp) >"$log_dir/lines-fsdp.txt" 2>&1 &
else
  skip "train fsdp-2gpu" "needs 2 GPUs"
fi
wait
for label in "${labels[@]}"; do
  while IFS= read -r result; do
    echo "$result"
    name=$(echo "$result" | awk '{print $2, $3}')
    case "$result" in
    "ok "*) passed=$((passed + 1)) ;;
    "FAIL "*) failed=$((failed + 1)) && failures+=("$name") ;;
    "skip "*) skipped=$((skipped + 1)) ;;
    esac
  done <"$log_dir/lines-$label.txt"
done

elapsed=$((SECONDS - started))
echo
echo "gpu-check: $passed passed, $failed failed, $skipped skipped in ${elapsed}s on $gpu_name; logs in $log_dir"
if [ "$elapsed" -gt 480 ]; then
  echo "gpu-check: took longer than the 8 minutes it aims at (a slow download of torch counts too)"
fi
if [ "$failed" -gt 0 ]; then
  printf 'gpu-check: failed: %s\n' "${failures[@]}"
  exit 1
fi
