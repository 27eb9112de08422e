#!/usr/bin/env bash
# LeJEPA GPU benchmark: ViT-B/16 and ViT-H/14 (and ResNet-50 with channels_last) training throughput and MFU.
#
# Run from the repository root:   bash benchmarks/gpu.sh [extra bench_gpu.py flags, e.g. --compile]
# End-to-end mode:                bash benchmarks/gpu.sh --end-to-end   (JPEG folder -> real loader with 16 workers ->
#                                 views on the GPU -> ViT-B/16 step, with the JPEGs decoded by the workers and on the
#                                 GPU (decode_on_device); images/s and the fraction of synthetic-input throughput;
#                                 under 7 minutes)
# On a machine without a GPU:     bash benchmarks/gpu.sh --quick [--end-to-end]  (tiny model, 2 steps: checks the script)
#
# Installs nothing and needs no network: torch (with CUDA) and the repository's requirements must be installed.
# Finishes in under 8 minutes plus the FSDP check (6 launches of at most 2 minutes each, about 3 minutes in all):
# every call runs under `timeout`, and bench_gpu.py skips the models it has not started when its time budget is spent. When $OUT is set, the log and the results (JSON and markdown) are
# written there.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
PYTHON="${PYTHON:-$(command -v python || command -v python3)}"
OUT_DIR="${OUT:-}"
LOG=/dev/null
if [[ -n "$OUT_DIR" ]]; then
  mkdir -p "$OUT_DIR"
  LOG="$OUT_DIR/gpu_bench.log"
  : > "$LOG"
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"

log() { echo "$@" | tee -a "$LOG"; }

log "# LeJEPA GPU benchmark, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv 2>&1 | tee -a "$LOG"
  nvidia-smi -L 2>&1 | tee -a "$LOG"
else
  log "nvidia-smi: not found (no NVIDIA GPU?)"
fi
"$PYTHON" - <<'EOF' 2>&1 | tee -a "$LOG"
import importlib.util, platform, torch
print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"cuDNN {torch.backends.cudnn.version()}, GPU available: {torch.cuda.is_available()}, "
      f"flash_attn: {'yes' if importlib.util.find_spec('flash_attn') else 'no'}")
EOF

end_to_end=0
args=()
for arg in "$@"; do  # --end-to-end selects the mode; everything else goes to bench_gpu.py
  if [[ "$arg" == "--end-to-end" ]]; then end_to_end=1; else args+=("$arg"); fi
done
set -- "${args[@]}"

status=0
run() {  # run <timeout seconds> <name> <bench_gpu.py arguments...>
  local limit="$1" name="$2"
  shift 2
  local output=()
  [[ -n "$OUT_DIR" ]] && output=(--output "$OUT_DIR/gpu_bench_${name}.json")
  log ""
  log "## $name: bench_gpu.py $*"
  timeout --kill-after=10 "$limit" "$PYTHON" benchmarks/bench_gpu.py "$@" "${output[@]}" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  if [[ $rc -ne 0 ]]; then
    log "## $name: exit status $rc$([[ $rc -eq 124 ]] && echo ' (timed out)')"
    status=$rc
  fi
}

fsdp_check() {  # FSDP2 on the GPUs against DDP: sharded checkpoints, resume, final folders
  local n dir rc=0 backbone
  n=$("$PYTHON" -c "import torch; print(max(torch.cuda.device_count(), 1))")
  dir=$(mktemp -d)
  local launch=(timeout --kill-after=10 120 "$PYTHON" -m accelerate.commands.launch --num_processes "$n"
                --mixed_precision no --main_process_port 0)
  local ddp=() fsdp=(--config_file accelerate_configs/fsdp.yaml)
  ((n > 1)) && ddp=(--multi_gpu)
  log ""
  log "## fsdp: accelerate_configs/fsdp.yaml on $n GPU(s): ViT and ResNet, 4 steps + resume to 6, against DDP"
  for backbone in vit resnet; do
    local worker=(--gpu --backbone "$backbone")
    "${launch[@]}" "${ddp[@]}" tests/launch_worker.py "$dir/ddp-$backbone" "${worker[@]}" --max_steps 6 \
      >> "$dir/launch.log" 2>&1 || rc=$?
    "${launch[@]}" "${fsdp[@]}" tests/launch_worker.py "$dir/fsdp-$backbone" "${worker[@]}" --max_steps 4 \
      >> "$dir/launch.log" 2>&1 || rc=$?
    "${launch[@]}" "${fsdp[@]}" tests/launch_worker.py "$dir/fsdp-$backbone" "${worker[@]}" --max_steps 6 --resume \
      >> "$dir/launch.log" 2>&1 || rc=$?
  done
  "$PYTHON" - "$dir" <<'PYEOF' 2>&1 | tee -a "$LOG"
import json, sys
from pathlib import Path
from modeling_lejepa import LeJepaForPreTraining
root, ok = Path(sys.argv[1]), True
for backbone in ("vit", "resnet"):
    ddp, fsdp = root / f"ddp-{backbone}", root / f"fsdp-{backbone}"
    try:
        a, b = (json.loads((d / "rank0.json").read_text()) for d in (ddp, fsdp))
        loss = max(abs(x["loss"] - y["loss"]) / abs(x["loss"]) for x, y in zip(a["history"], b["history"]))
        sharded = all((fsdp / f"checkpoint-{s}" / "pytorch_model_fsdp_0").is_dir() for s in (2, 4, 6))
        wa, wb = (LeJepaForPreTraining.from_pretrained(d).state_dict() for d in (ddp, fsdp))
        weights = max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa)
        good = b["distributed_type"] == "FSDP" and sharded and len(b["history"]) == 6 and loss < 1e-4 and weights < 1e-4
        print(f"{backbone}: {b['launch_summary']}\n  sharded checkpoints {sharded}, steps {len(b['history'])}, max "
              f"relative loss difference {loss:.2e}, max weight difference {weights:.2e}: {'OK' if good else 'FAILED'}")
    except Exception as error:  # a launch failed: its log is in launch.log
        good = False
        print(f"{backbone}: FAILED ({type(error).__name__}: {error})")
    ok = ok and good
sys.exit(0 if ok else 1)
PYEOF
  local check=${PIPESTATUS[0]}
  if [[ $check -ne 0 || $rc -ne 0 ]]; then
    log "## fsdp: FAILED (launch exit status $rc); the end of $dir/launch.log:"
    tail -n 40 "$dir/launch.log" | tee -a "$LOG"
    status=1
  fi
}

if [[ $end_to_end -eq 1 ]]; then
  # The same ViT-B/16 step on synthetic views already on the GPU and fed by the real data path (2,048 generated
  # 1024 x 768 JPEGs, DecodeResizeTransform in 16 persistent DataLoader workers, DeviceMultiCrop on the GPU), then
  # with the JPEGs decoded on the GPU instead of by the workers (decode_on_device: torchcodec, nvJPEG).
  if [[ " $* " == *" --quick "* || " $* " == *" --dry-run "* ]]; then
    run 240 end-to-end-quick --modes loop end-to-end end-to-end-decode --no-count-flops "$@"
  else
    run 400 end-to-end --models vit-base-patch16 --modes loop end-to-end end-to-end-decode --no-count-flops \
      --steps 30 "$@"
  fi
elif [[ " $* " == *" --quick "* || " $* " == *" --dry-run "* ]]; then
  run 120 quick --modes loop host-syncs trainer "$@"
else
  # Worst case 270 + 80 + 100 s of `timeout`, plus a few seconds of start-up: under 8 minutes.
  # 1. ViT-B/16 and ViT-H/14 in the tight loop: bf16 autocast, SDPA (FlashAttention-2 if flash_attn imports), fused
  #    AdamW, grad clipping 1.0.
  run 270 vit --time-budget 180 "$@"
  # 2. ResNet-50 with channels_last (the optional third model).
  run 80 resnet --models resnet-50 --channels-last --steps 15 "$@"
  # 3. ViT-B/16: the tight loop, the loop with LeJepaTrainer's two host syncs per step, and LeJepaTrainer itself.
  run 100 trainer-vs-loop --models vit-base-patch16 --modes loop host-syncs trainer --no-count-flops --steps 15 "$@"
  # 4. FSDP2 on the GPUs (accelerate does not apply it to CPU processes, so tests/test_launch.py can only override
  #    its dispatch there): ViT and ResNet, 4 steps with sharded checkpoints, a second launch resuming to step 6,
  #    against 6 steps of DDP (one process on one GPU); the final folders must hold the same weights.
  fsdp_check
fi
log ""
log "done (status $status)"
exit $status
