"""``run_quantize(config, sink)``: quantize or export one model, top to bottom.

1. refuse an unavailable scheme or an unusable source before any work;
2. an adapter source is merged into its base in memory (peft
   ``merge_and_unload``) and written once as a plain safetensors directory
   beside the output, removed at the end: every scheme then reads the same
   kind of source, and GGUF streams tensors from it;
3. the scheme writes ``<output_dir>.partial``; tokenizer files (with the
   chat template), the report and a README model card are added; the
   directory is renamed to ``output_dir`` only when complete.

``sink.should_stop()`` is checked between phases and between tensors; a
cancelled run leaves no output behind.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from tuning.errors import ConfigError, ModelError
from tuning.events import ArtifactEvent, EventSink, LogEvent, ProgressEvent
from tuning.quantize import QUANT_SCHEMES, QuantScheme
from tuning.quantize.common import Cancelled, SchemeContext, copy_tokenizer_files, weights_size
from tuning.quantize.config import QuantizeConfig
from tuning.quantize.modelcard import write_quantized_card
from tuning.quantize.report import build_report, report_parts
from tuning.unfoldable import unfoldable_refusal


@dataclass
class QuantizeResult:
    status: str  # "succeeded" or "cancelled"
    output_path: str  # "" when cancelled (nothing is kept)
    scheme: str
    size_bytes: int = 0  # weight files of the output
    report: dict | None = None


def _is_adapter(path: Path) -> bool:
    return (path / "adapter_config.json").exists()


def _source_model_config(config: QuantizeConfig) -> dict:
    """config.json of the model that will be quantized (the base, for an adapter)."""
    source = Path(config.source_path)
    if _is_adapter(source):
        from tuning.models import load_model_config

        return load_model_config(config.base_model, trust_remote_code=config.trust_remote_code).to_dict()
    return json.loads((source / "config.json").read_text())


def check_quantize_source(config: QuantizeConfig, *, on_worker: bool = True) -> None:
    """Refuse a source the scheme cannot use, reading config files only
    (cheap enough for the web process). Raises ConfigError naming the field.

    Whether the scheme can run on this machine (a CUDA GPU, a package) is
    checked only ``on_worker``: the web machine is not where the job runs."""
    scheme = QUANT_SCHEMES.get(config.scheme)
    if scheme is None:
        raise ConfigError({"scheme": f"unknown scheme '{config.scheme}'; known: {', '.join(QUANT_SCHEMES)}"})
    if on_worker and (reason := scheme.unavailable_reason()):
        raise ConfigError({"scheme": f"{scheme.label} {reason}" if reason.startswith("needs") else reason})
    source = Path(config.source_path).expanduser()
    if not source.is_dir():
        raise ConfigError({"source_path": f"directory not found: {config.source_path}"})
    if refusal := unfoldable_refusal(source, "quantized"):
        raise ConfigError({"source_path": refusal})
    if scheme.delta:
        if not config.base_model:
            raise ConfigError({"base_model": f"{scheme.label} compresses the change of {config.source_path} from "
                                             f"its base model: name the base model it was fine-tuned from"})
        from tuning.quantize.delta import check_base

        if reason := check_base(source, config.base_model):
            raise ConfigError({"base_model": reason})
    if _is_adapter(source):
        if not config.base_model:
            raise ConfigError({"base_model": f"{config.source_path} is an adapter: name the base model it was "
                                             f"trained on, so it can be merged before quantizing"})
    elif not (source / "config.json").exists():
        raise ConfigError({"source_path": f"{config.source_path} is neither a model directory (no config.json) "
                                          f"nor an adapter (no adapter_config.json)"})
    try:
        model_config = _source_model_config(config)
    except ModelError as exc:
        raise ConfigError({"base_model" if _is_adapter(source) else "source_path": str(exc)}) from None
    if reason := scheme.model_refusal(model_config):
        raise ConfigError({"scheme": reason})


def _merged_source(config: QuantizeConfig, dest: Path, sink: EventSink) -> Path:
    """Merge the adapter into its base and save the result as safetensors at ``dest``."""
    from peft import PeftModel

    from tuning.models import load_causal_lm, load_tokenizer

    sink.emit(LogEvent(message=f"Merging the adapter {config.source_path} into {config.base_model}"))
    # dtype "auto": the merged model keeps the base model's stored precision
    base = load_causal_lm(config.base_model, dtype="auto", trust_remote_code=config.trust_remote_code)
    merged = PeftModel.from_pretrained(base, config.source_path).merge_and_unload()
    shutil.rmtree(dest, ignore_errors=True)
    merged.save_pretrained(dest, safe_serialization=True)
    del merged, base
    adapter = Path(config.source_path)
    tokenizer_ref = str(adapter) if (adapter / "tokenizer_config.json").exists() else config.base_model
    load_tokenizer(tokenizer_ref, trust_remote_code=config.trust_remote_code).save_pretrained(dest)
    return dest


def _emitter(sink: EventSink, phase: str, unit: str):
    started = time.monotonic()

    def progress(done: int, total: int, unit_here: str | None = None) -> None:
        elapsed = time.monotonic() - started
        eta = elapsed / done * (total - done) if done else None
        sink.emit(ProgressEvent(phase=phase, done=done, total=total, unit=unit_here or unit,
                                elapsed_s=round(elapsed, 3), eta_s=None if eta is None else round(eta, 1)))
    return progress


def _check_stop(sink: EventSink) -> None:
    if sink.should_stop():
        raise Cancelled


def run_quantize(config: QuantizeConfig, sink: EventSink) -> QuantizeResult:
    scheme: QuantScheme | None = QUANT_SCHEMES.get(config.scheme)
    check_quantize_source(config)  # raises ConfigError (unavailable scheme included) before any work
    import transformers

    transformers.utils.logging.disable_progress_bar()  # progress goes through events, not stderr bars
    output_dir = Path(config.output_dir)
    partial = output_dir.with_name(output_dir.name + ".partial")
    merged_dir = output_dir.with_name(output_dir.name + ".merged-source")
    shutil.rmtree(partial, ignore_errors=True)
    started = time.monotonic()
    try:
        _check_stop(sink)
        adapter = _is_adapter(Path(config.source_path))
        source_dir = _merged_source(config, merged_dir, sink) if adapter else Path(config.source_path)
        source_label = (f"{config.base_model} + adapter {config.source_path}" if adapter
                        else config.source_path)
        _check_stop(sink)

        sink.emit(LogEvent(message=f"{scheme.label}: writing {output_dir.name} from {source_label}"))
        context = SchemeContext(progress=_emitter(sink, f"Writing {scheme.label}", "tensors"),
                                should_stop=sink.should_stop, log=lambda message: sink.emit(LogEvent(message=message)),
                                trust_remote_code=config.trust_remote_code,
                                name=config.model_name or Path(config.source_path).name,
                                base_model=config.base_model, params=config.scheme_params,
                                validation_path=config.validation_dataset_path, validation_rows=config.eval_rows,
                                validation_max_length=config.eval_max_length)
        # a delta scheme reads the source as it is (an adapter stays an adapter); the merged copy is the report's
        scheme.run(Path(config.source_path) if scheme.delta else source_dir, partial, context)
        copy_tokenizer_files(source_dir, partial, trust_remote_code=config.trust_remote_code)
        _check_stop(sink)

        report = None
        if config.report:
            measured = ", ".join(("sizes",) + report_parts(config))
            sink.emit(LogEvent(message=f"Comparing the output with the source: {measured}"))
            report = build_report(config=config, scheme=scheme, source_dir=source_dir, out_dir=partial,
                                  progress_for=lambda phase, unit: _emitter(sink, phase, unit),
                                  should_stop=sink.should_stop)
            (partial / "quantize_report.json").write_text(json.dumps(report, indent=2))
        write_quantized_card(partial, scheme=scheme, source=source_label, report=report, name=config.model_name)
        _check_stop(sink)
        shutil.rmtree(output_dir, ignore_errors=True)  # an earlier output of the same job
        partial.rename(output_dir)
    except Cancelled:
        shutil.rmtree(partial, ignore_errors=True)
        sink.emit(LogEvent(message="Cancelled; the partial output was removed"))
        return QuantizeResult(status="cancelled", output_path="", scheme=config.scheme)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(merged_dir, ignore_errors=True)

    size = weights_size(output_dir)
    # a delta scheme given an adapter writes an adapter: the studio loads it on its base
    kind = "adapter" if _is_adapter(output_dir) else "model"
    sink.emit(ArtifactEvent(artifact_kind=kind, path=str(output_dir),
                            metadata={"scheme": scheme.name, "format": scheme.format, "size_bytes": size,
                                      "report": report, "source": source_label,
                                      "gguf_file": scheme.gguf_file or None, "how_to_load": scheme.how_to_load}))
    sink.emit(LogEvent(message=f"Wrote {output_dir} ({size / 2**20:.1f} MiB of weights) in "
                               f"{time.monotonic() - started:.1f} s"))
    return QuantizeResult(status="succeeded", output_path=str(output_dir), scheme=scheme.name, size_bytes=size,
                          report=report)
