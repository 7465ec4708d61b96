#!/usr/bin/env bash
# The GPU paths (CUDA training, bf16, QLoRA's 4-bit base, the bitsandbytes
# schemes) checked on a machine with CUDA and torch but no package index.
#
#   bash bench/gpu_check.sh kit           # here: wheels and model files into .gpu-kit/
#   bash bench/gpu_check.sh tests OUT     # there: GPU-marked and loop tests, QLoRA and LoRA runs
#   bash bench/gpu_check.sh bench OUT     # there: bench/train_speed.py on the GPU
#   bash bench/gpu_check.sh all OUT       # there: bench, then tests (fits one 10-minute call)
#   bash bench/gpu_check.sh multi OUT     # there, with 2+ GPUs: tokens/s on 1 device and on all of them
#                                         # (bench/distributed_scaling.py: LoRA over DDP, goal >= 0.85x linear;
#                                         # MULTI_MODEL=dir for a 1B model where one is at hand)
#
# Through the device tool: carry .gpu-kit, command
#   bash bench/gpu_check.sh all $OUT      (timeout_s about 590; every step has its own time limit)
#
# The bundled model (a 98 MB GGUF) is too big to carry, so the GPU runs use
# SmolLM2-135M's config and tokenizer with random weights: speed, memory and
# MFU do not depend on the weights' values (losses start near ln(vocab)).
set -uo pipefail
cd "$(dirname "$0")/.."
KIT=.gpu-kit
mode=${1:?kit, tests, bench, all or multi}
out=${2:-/tmp/gpu-check}

if [ "$mode" = kit ]; then
    mkdir -p $KIT/whl $KIT/smollm2 $KIT/tests-cache
    for package in bitsandbytes==0.50.2 transformers==5.23.0 peft==0.21.2 gguf==0.19.0 tokenizers==0.23.3 torchao==0.18.0; do
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
            -d $KIT/whl "$package"
    done
    # Only the CUDA 13 libraries of bitsandbytes: the kit must stay small enough to travel.
    zip -q -d $KIT/whl/bitsandbytes-*.whl 'bitsandbytes/libbitsandbytes_cuda1[12]*.so' 'bitsandbytes/libbitsandbytes_rocm*' || true
    bundled=.cache/bench/smollm2-135m-instruct  # made by bench/train_speed.py --model bundled
    cp $bundled/config.json $bundled/tokenizer.json $bundled/tokenizer_config.json $bundled/chat_template.jinja \
        $bundled/generation_config.json $KIT/smollm2/
    cp -r .cache/tests/tiny-llama-v2 $KIT/tests-cache/
    grep -qx "/$KIT/" .git/info/exclude 2>/dev/null || echo "/$KIT/" >> .git/info/exclude
    du -sh $KIT
    exit 0
fi

mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $KIT/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD TUNING_TEST_CACHE=$PWD/$KIT/tests-cache PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
model=/tmp/smollm2-random
python3 - "$model" <<'EOF'
import shutil, sys, torch
from transformers import AutoConfig, AutoModelForCausalLM
torch.manual_seed(0)
model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(".gpu-kit/smollm2"))
model.save_pretrained(sys.argv[1])
for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
    shutil.copy(f".gpu-kit/smollm2/{name}", sys.argv[1])
print(torch.__version__, torch.cuda.get_device_name(), flush=True)
EOF

if [ "$mode" = bench ] || [ "$mode" = all ]; then
    # One round each: a GPU's figures hardly vary, and the three arms at two batch sizes fit the call.
    timeout 130 python3 bench/train_speed.py --model $model --device cuda --steps 20 --rounds 1 --batch-size 32 \
        --datasets mixed --out "$out/benchmarks-gpu-b32.md" 2> "$out/bench-b32.err" | tail -20
    timeout 130 python3 bench/train_speed.py --model $model --device cuda --steps 20 --rounds 1 --batch-size 4 \
        --arms ref,studio --out "$out/benchmarks-gpu-b4.md" 2> "$out/bench-b4.err" | tail -20
fi

if [ "$mode" = multi ]; then
    timeout 500 python3 bench/distributed_scaling.py --device cuda --model "${MULTI_MODEL:-$model}" --steps 12 \
        --per-device-batch 8 --max-length 512 > "$out/distributed-scaling.jsonl" 2> "$out/distributed-scaling.err"
    tail -5 "$out/distributed-scaling.jsonl"
fi

if [ "$mode" = tests ] || [ "$mode" = all ]; then
    for method in lora qlora; do
        cat > /tmp/$method.yaml <<EOF
base_model: $model
dataset_path: samples/instructions-sample.jsonl
output_dir: /tmp/run-$method
method: $method
method_params: {rank: 16, alpha: 32.0, dropout: 0.05, target_modules: "q_proj,k_proj,v_proj,o_proj"}
max_steps: 30
batch_size: 8
learning_rate: 0.001
precision: auto
save_every: 1000000
EOF
        timeout 50 python3 -m tuning train /tmp/$method.yaml > "$out/$method.jsonl" 2>&1 || tail -20 "$out/$method.jsonl"
    done
    timeout 45 python3 - "$out" "$model" <<'EOF'
import json, sys, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
out, model_dir = sys.argv[1], sys.argv[2]
for method in ("lora", "qlora"):
    events = [json.loads(l) for l in open(f"{out}/{method}.jsonl") if l.startswith("{")]
    metrics = [e["data"] for e in events if e["kind"] == "metrics"]
    logs = [e["data"]["message"] for e in events if e["kind"] == "log"]
    if not metrics:
        print(method, "FAILED", logs[-3:]); continue
    rate = (metrics[-1]["tokens_seen"] - metrics[0]["tokens_seen"]) / (metrics[-1]["elapsed_s"] - metrics[0]["elapsed_s"])
    print(json.dumps({"method": method, "steps": len(metrics), "first_loss": metrics[0]["loss"],
                      "last_loss": metrics[-1]["loss"], "tokens_per_s": round(rate), "peak_gpu_mib": metrics[-1]["memory_mib"],
                      "logs": [m for m in logs if "precision" in m or "Loss computed" in m or "Packing" in m or "on cuda" in m]}))
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, device_map="cuda")
    tuned = PeftModel.from_pretrained(base, f"/tmp/run-{method}/adapter")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer("Name three colours.", return_tensors="pt").to("cuda")
    print(method, "reloaded with stock peft on", next(tuned.parameters()).device, "generated",
          tuned.generate(**ids, max_new_tokens=5, do_sample=False).shape)
EOF
    # Every core test with the GPU visible (train.py trains on it); the bundled GGUF and encoder
    # packages are too big to carry, so tests that need them fail for want of them.
    timeout 140 python3 -m pytest tests/core -q -p no:cacheprovider -m "not slow" --timeout 120 --maxfail 30 \
        -n 12 --tb=short > "$out/pytest.txt" 2>&1
    tail -25 "$out/pytest.txt"
fi
