"""Command line: the same runs the worker performs, without Django or Redis.

    python -m tuning train CONFIG.yaml      # events as JSON lines on stdout
    python -m tuning merge CONFIG.yaml      # merge adapters or models (tuning.merge)
    python -m tuning merge-search CONFIG.yaml  # search a merge's coefficients by scores (tuning.merge_search)
    python -m tuning quantize CONFIG.yaml   # quantize or export (tuning.quantize)
    python -m tuning evaluate CONFIG.yaml   # score an artifact on a dataset (tuning.scoring)
    python -m tuning judge CONFIG.yaml      # judged comparison of two models (tuning.judge; key in $JUDGE_API_KEY)
    python -m tuning forgetting CONFIG.yaml # perplexity on general text, base vs tuned (tuning.forgetting)
    python -m tuning publish DIR REPO_ID    # publish a folder to the Hub (token in $HF_TOKEN)
    python -m tuning prepare-bundled DIR    # convert the bundled model once
    python -m tuning methods [--json]       # the method catalogue
    python -m tuning merge-methods [--json] / quantize-schemes [--json]
"""

from __future__ import annotations

import argparse
import json
import sys

from tuning.errors import TuningError


def _load_yaml(path: str) -> dict:
    import yaml

    try:
        with open(path) as handle:
            data = yaml.safe_load(handle) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise TuningError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise TuningError(f"{path} must hold a mapping of settings")
    return data


def _train(args) -> int:
    from tuning.config import TrainConfig
    from tuning.events import StdoutSink
    from tuning.train import run_train

    config = TrainConfig.from_dict(_load_yaml(args.config))
    check = _forgetting_after_training(config)
    sink = StdoutSink()
    result = run_train(config, sink)
    if result.status != "succeeded":
        return 3
    if check is None:
        return 0
    from tuning.forgetting import run_forgetting

    # As in the studio's chained check: the output against the base it was tuned from. Exit 4 when it
    # regressed, as `python -m tuning forgetting` does, so a script can stop a release on it.
    checked = run_forgetting(check(result.output_path), sink)
    return 3 if checked.status != "succeeded" else 4 if checked.regressed else 0


def _forgetting_after_training(config):
    """None, or what makes the forgetting check's config for the output path when the training config
    sets ``forgetting_threshold_pct``; refused before training for a classifier, which has no perplexity."""
    if config.forgetting_threshold_pct <= 0:
        return None
    from tuning.forgetting import ForgettingConfig
    from tuning.methods.base import CLASSIFIER_TASKS

    if config.task in CLASSIFIER_TASKS:
        raise TuningError(f"forgetting_threshold_pct: the forgetting check measures perplexity on text, and a "
                          f"{config.task} model has none; set it to 0 for this run")
    harness = {"harness": "named_tasks", "harness_tasks": config.forgetting_harness_tasks} \
        if config.forgetting_harness_tasks.strip() else {}
    settings = {"base_model": config.base_model, "threshold_pct": config.forgetting_threshold_pct,
                "trust_remote_code": config.trust_remote_code, "harness": harness}
    ForgettingConfig.from_dict({**settings, "artifact_path": config.output_dir})  # bad settings: refused now
    return lambda output: ForgettingConfig.from_dict({**settings, "artifact_path": output})


def _merge(args) -> int:
    from tuning.events import StdoutSink
    from tuning.merge import check_merge_sources, run_merge
    from tuning.merge.config import MergeConfig

    config = MergeConfig.from_dict(_load_yaml(args.config))
    check_merge_sources(config)
    return 0 if run_merge(config, StdoutSink()).status == "succeeded" else 3


def _merge_search(args) -> int:
    from tuning.events import StdoutSink
    from tuning.merge_search import MergeSearchConfig
    from tuning.merge_search_run import run_merge_search

    result = run_merge_search(MergeSearchConfig.from_dict(_load_yaml(args.config)), StdoutSink())
    return 0 if result.status == "succeeded" else 3


def _quantize(args) -> int:
    from tuning.events import StdoutSink
    from tuning.quantize.run import check_quantize_source, run_quantize
    from tuning.quantize.config import QuantizeConfig

    config = QuantizeConfig.from_dict(_load_yaml(args.config))
    check_quantize_source(config)
    return 0 if run_quantize(config, StdoutSink()).status == "succeeded" else 3


def _evaluate(args) -> int:
    from tuning.events import StdoutSink
    from tuning.scoring import EvaluateConfig, run_evaluate

    return 0 if run_evaluate(EvaluateConfig.from_dict(_load_yaml(args.config)), StdoutSink()).status == "succeeded" \
        else 3


def _judge(args) -> int:
    import os

    from tuning.events import StdoutSink
    from tuning.judge import JudgeConfig, run_judge

    result = run_judge(JudgeConfig.from_dict(_load_yaml(args.config)), StdoutSink(),
                       api_key=os.environ.get("JUDGE_API_KEY", ""))
    return 0 if result.status == "succeeded" else 3


def _forgetting(args) -> int:
    from tuning.events import StdoutSink
    from tuning.forgetting import ForgettingConfig, run_forgetting

    result = run_forgetting(ForgettingConfig.from_dict(_load_yaml(args.config)), StdoutSink())
    # 4: the check ran and the tune regressed beyond the threshold (a script can stop a release on it)
    return 3 if result.status != "succeeded" else 4 if result.regressed else 0


def _publish(args) -> int:
    import os
    from pathlib import Path

    from tuning.hub_card import facts_from_folder, redistribution_refusal
    from tuning.hub_publish import PublishCancelled, publish_folder, repo_files

    folder = Path(args.folder)
    if not folder.is_dir():
        raise TuningError(f"{folder} is not a folder")
    facts = facts_from_folder(folder, base_model=args.base_model, license=args.license)
    if refusal := redistribution_refusal(facts, private=not args.public):
        raise TuningError(refusal)
    try:
        result = publish_folder(lambda repo_id: repo_files(folder, facts=facts, repo_id=repo_id),
                                repo_id=args.repo_id, token=os.environ.get(args.token_env), branch=args.branch,
                                private=not args.public, commit_message=args.message or f"Publish {folder.name}",
                                on_phase=lambda phase: print(phase, file=sys.stderr))
    except PublishCancelled:
        return 3
    print(json.dumps({"repo_id": result.repo_id, "branch": result.branch, "commit": result.commit_sha,
                      "commit_url": result.commit_url, "url": result.repo_url, "uploaded": result.uploaded,
                      "unchanged": result.unchanged}))
    return 0


def _prepare_bundled(args) -> int:
    from tuning.models import prepare_bundled_model

    print(prepare_bundled_model(args.dest))
    return 0


def _consolidate(args) -> int:
    from pathlib import Path

    from tuning.checkpoints import consolidate

    print(consolidate(Path(args.checkpoint), Path(args.dest)))
    return 0


def _methods(args) -> int:
    from tuning.methods import METHODS, describe

    rows = [describe(method) for method in METHODS.values()]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            gpu = " (needs a CUDA GPU)" if row["needs_cuda"] else ""
            print(f"{row['name']:<14} {row['group']:<10} {row['label']}: {row['description']}{gpu}")
        from tuning.optimizers import OPTIMIZERS

        print("\nOptimizers (the `optimizer` setting; GaLore for the methods that train the model's own weights):")
        for choice in OPTIMIZERS.values():
            gpu = " (needs a CUDA GPU)" if choice.needs_cuda else ""
            print(f"{choice.name:<14} {choice.label} {choice.paper}{gpu}")
    return 0


def _merge_methods(args) -> int:
    from tuning.merge import MERGE_METHODS, describe

    rows = [describe(method) for method in MERGE_METHODS.values()]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            presets = f" Presets: {', '.join(row['presets'])}." if row["presets"] else ""
            print(f"{row['name']:<22} {row['group']:<9} {row['label']}: {row['description']}{presets}")
    return 0


def _quantize_schemes(args) -> int:
    from tuning.quantize import QUANT_SCHEMES, describe

    rows = [describe(scheme) for scheme in QUANT_SCHEMES.values()]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            unavailable = f" (unavailable here: {row['unavailable_reason']})" if row["unavailable_reason"] else ""
            presets = "".join(f"\n{'':<19}preset {name}: {preset['trade']} {preset['settings']}"
                              for name, preset in row["presets"].items())
            print(f"{row['name']:<18} {row['label']}: {row['description']}{unavailable}{presets}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tuning", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="fine-tune a model from a YAML config")
    train.add_argument("config")
    train.set_defaults(handler=_train)
    for name, handler, help_text in (("merge", _merge, "merge adapters or models from a YAML config"),
                                     ("merge-search", _merge_search,
                                      "search a merge's coefficients against an evaluate score from a YAML config"),
                                     ("quantize", _quantize, "quantize or export a model from a YAML config"),
                                     ("evaluate", _evaluate, "score an artifact on a dataset from a YAML config"),
                                     ("judge", _judge, "judge two models' answers pairwise from a YAML config"),
                                     ("forgetting", _forgetting, "check a tune for forgetting from a YAML config")):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("config")
        command.set_defaults(handler=handler)
    publish = commands.add_parser("publish", help="publish an adapter or model folder to the Hub (HF_ENDPOINT)")
    publish.add_argument("folder")
    publish.add_argument("repo_id", help="owner/name, or a name under the token's user")
    publish.add_argument("--branch", default="main")
    publish.add_argument("--public", action="store_true", help="create the repo public (default: private)")
    publish.add_argument("--message", default="", help="commit message")
    publish.add_argument("--base-model", default="", help="the base model's hub id, for the card")
    publish.add_argument("--license", default="", help="the licence for the card (default: the folder's card's)")
    publish.add_argument("--token-env", default="HF_TOKEN", help="environment variable holding the token")
    publish.set_defaults(handler=_publish)
    bundled = commands.add_parser("prepare-bundled", help="convert the bundled model to safetensors")
    bundled.add_argument("dest")
    bundled.set_defaults(handler=_prepare_bundled)
    consolidated = commands.add_parser("consolidate", help="a fully sharded (FSDP2) run's checkpoint as one "
                                                           "model folder (config.json, model.safetensors)")
    consolidated.add_argument("checkpoint")
    consolidated.add_argument("dest")
    consolidated.set_defaults(handler=_consolidate)
    for name, handler, help_text in (("methods", _methods, "list the fine-tuning methods"),
                                     ("merge-methods", _merge_methods, "list the merge methods"),
                                     ("quantize-schemes", _quantize_schemes, "list the quantization schemes")):
        listing = commands.add_parser(name, help=help_text)
        listing.add_argument("--json", action="store_true")
        listing.set_defaults(handler=handler)
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except TuningError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
