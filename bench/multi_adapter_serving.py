"""Serving many fine-tunes of one base: eight LoRA adapters answered
interleaved from one warm base (``tuning.adapter_sets.AdapterSet``, what the
playground and the OpenAI-compatible endpoint now do) against loading each
adapter with its base in turn (``tuning.loading.load_artifact`` per request:
what a cache of two warm models does when eight adapters take turns).

    .venv/bin/python bench/multi_adapter_serving.py [--adapters 8] [--requests 24] [--max-tokens 16]
                                                    [--rounds 3] [--model bundled|tiny|PATH]

Both arms answer the same requests (adapter i % N for request i, greedy,
the same chat prompt) in a child process of their own, alternating round by
round so a busy machine slows them alike. Figures: requests per second
(wall time of all requests, the shared arm's first loads included), peak
RSS, and that both arms wrote the same text. The adapters are LoRA r=16 on
q, k, v, o with random (nonzero) weights, made once per run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.train_speed import emit, machine, model_dir_for, run_child  # noqa: E402

PROMPT = [{"role": "user", "content": "Name three colours of the rainbow."}]


def make_adapters(model_dir: Path, folder: Path, count: int) -> list[str]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    paths = []
    for i in range(count):
        torch.manual_seed(i)
        base = AutoModelForCausalLM.from_pretrained(model_dir)
        model = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj",
                                                                                     "o_proj"],
                                                init_lora_weights=False))
        for name, parameter in model.named_parameters():  # small changes: answers stay readable
            if "lora_B" in name:
                parameter.data.mul_(0.01)
        path = folder / f"adapter-{i}"
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        paths.append(str(path))
    return paths


def child(spec_file: str) -> None:
    """One arm: answer every request, print one RESULT line."""
    import torch

    from tuning.adapter_sets import AdapterSet
    from tuning.generate import encode_messages, stream_inputs
    from tuning.loading import load_artifact

    spec = json.loads(Path(spec_file).read_text())
    torch.set_num_threads(spec["threads"])
    shared = AdapterSet(spec["base"], capacity=len(spec["adapters"]))
    texts, started = [], time.monotonic()
    for i in range(spec["requests"]):
        path = spec["adapters"][i % len(spec["adapters"])]
        if spec["arm"] == "shared":
            model, tokenizer = shared.use(path)
        else:
            model, tokenizer = load_artifact(path, base_model=spec["base"])
        reply = stream_inputs(model, tokenizer, encode_messages(tokenizer, PROMPT),
                              max_new_tokens=spec["max_tokens"])
        texts.append("".join(reply))
    seconds = time.monotonic() - started
    print("RESULT " + json.dumps({"seconds": seconds, "texts": texts}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="bundled", help="bundled, tiny, or a model directory")
    parser.add_argument("--threads", type=int, default=__import__("os").cpu_count())
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child)

    lines: list[dict] = []
    emit({"figure": "machine", **machine()}, lines)
    base = model_dir_for(args.model)
    with tempfile.TemporaryDirectory(prefix="multi-adapter-") as tmp:
        adapters = make_adapters(base, Path(tmp), args.adapters)
        ratios, runs = [], {"shared": [], "reload": []}
        for round_ in range(args.rounds):
            results = {}
            for arm in ("reload", "shared"):
                spec = Path(tmp) / f"{arm}-{round_}.json"
                spec.write_text(json.dumps({"arm": arm, "base": str(base), "adapters": adapters,
                                            "requests": args.requests, "max_tokens": args.max_tokens,
                                            "threads": args.threads}))
                out, _, _, peak_mib = run_child([sys.executable, __file__, "--child", str(spec)], args.threads)
                result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
                results[arm] = {"requests_per_s": args.requests / result["seconds"], "peak_mib": peak_mib,
                                "texts": result["texts"]}
                emit({"figure": "arm", "round": round_, "arm": arm,
                      "requests_per_s": round(results[arm]["requests_per_s"], 3), "peak_mib": round(peak_mib)},
                     lines)
                runs[arm].append(results[arm])
            same = results["shared"]["texts"] == results["reload"]["texts"]
            ratio = results["shared"]["requests_per_s"] / results["reload"]["requests_per_s"]
            ratios.append(ratio)
            emit({"figure": "round", "round": round_, "ratio": round(ratio, 2), "same_answers": same}, lines)
            if not same:
                raise SystemExit("the arms answered differently: the shared base does not serve each adapter exactly")
    emit({"figure": "multi_adapter_serving", "model": args.model, "adapters": args.adapters,
          "requests": args.requests, "max_tokens": args.max_tokens,
          "ratio_median": round(statistics.median(ratios), 2), "ratios": [round(r, 2) for r in ratios],
          "shared_peak_mib": round(statistics.median(r["peak_mib"] for r in runs["shared"])),
          "reload_peak_mib": round(statistics.median(r["peak_mib"] for r in runs["reload"]))}, lines)


if __name__ == "__main__":
    main()
