"""Command line: the same runs the worker performs, without Django or Redis.

    python -m tuning train CONFIG.yaml      # events as JSON lines on stdout
    python -m tuning prepare-bundled DIR    # convert the bundled model once
    python -m tuning methods [--json]       # the method catalogue
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
    result = run_train(config, StdoutSink())
    return 0 if result.status == "succeeded" else 3


def _prepare_bundled(args) -> int:
    from tuning.models import prepare_bundled_model

    print(prepare_bundled_model(args.dest))
    return 0


def _methods(args) -> int:
    from tuning.methods import METHODS, describe

    rows = [describe(method) for method in METHODS.values()]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            gpu = " (needs a CUDA GPU)" if row["needs_gpu"] else ""
            print(f"{row['name']:<14} {row['group']:<10} {row['label']}: {row['description']}{gpu}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tuning", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="fine-tune a model from a YAML config")
    train.add_argument("config")
    train.set_defaults(handler=_train)
    bundled = commands.add_parser("prepare-bundled", help="convert the bundled model to safetensors")
    bundled.add_argument("dest")
    bundled.set_defaults(handler=_prepare_bundled)
    methods = commands.add_parser("methods", help="list the fine-tuning methods")
    methods.add_argument("--json", action="store_true")
    methods.set_defaults(handler=_methods)
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except TuningError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
