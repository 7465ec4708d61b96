"""The settings of a quantization or export job."""

from __future__ import annotations

from dataclasses import dataclass, field

from tuning.fields import config_from_dict, setting
from tuning.quantize import QUANT_SCHEMES  # defined before this module is imported

DEFAULT_PROMPTS = (
    "Explain in two sentences what a neural network is.",
    "Write a short, friendly email declining a meeting invitation.",
    "What is 17 + 25? Answer with the number.",
)


# The settings that choose what the before/after report measures (the quantize page's "Report" box, the API's
# "report" object, a CLI config's keys).
REPORT_SETTINGS = ("report", "report_answers", "report_agreement", "report_speed", "eval_rows", "max_new_tokens")


@dataclass(frozen=True, kw_only=True)
class QuantizeConfig:
    """Quantize or export one model. ``source_path`` is a full model
    directory, or an adapter directory (then ``base_model`` is required and
    the adapter is merged into it in memory first)."""

    scheme: str = setting(help="Quantization scheme or export format (tuning.quantize.QUANT_SCHEMES).",
                          choices=tuple(QUANT_SCHEMES), basic=True)
    source_path: str = setting(help="Model directory to quantize, or an adapter directory (with base model).",
                               basic=True, label="Source")
    base_model: str = setting("", help="Base model the adapter was trained on (adapter sources only).")
    output_dir: str = setting(help="Directory the quantized model is written to (replaced if it exists).")
    eval_dataset_path: str = setting("", help="Optional JSONL/CSV of instruction/response rows: the report "
                                              "compares perplexity on them before and after.")
    validation_dataset_path: str = setting("", help="ComPEFT's α search only: JSONL/CSV of instruction/response "
                                                    "rows each candidate α is scored on (loss of its first eval_rows "
                                                    "rows); keep it apart from the evaluation file, which then "
                                                    "reports the chosen α's change without having picked it.")
    # Rows and tokens: a CPU scores about 16 rows of the bundled model in seconds; 64 took minutes.
    eval_rows: int = setting(16, help="Rows of the evaluation file used for perplexity (and of the validation "
                                      "split, for an α search).", min=1, max=100_000)
    eval_max_length: int = setting(256, help="Tokens per evaluation row; longer rows are truncated.", min=8,
                                   max=131072)
    # Prompts answered before and after, side by side in the report. A list,
    # so (like TrainConfig.method_params) it has no form metadata and is
    # validated in from_dict.
    prompts: list = field(default_factory=lambda: list(DEFAULT_PROMPTS))
    # The scheme's own settings (ComPEFT's density and alpha, Delta-CoMe's bits), checked by the scheme's
    # ``check_params`` in from_dict and stored with its defaults filled in.
    scheme_params: dict = field(default_factory=dict)
    max_new_tokens: int = setting(32, help="Tokens generated per prompt in the report.", min=1, max=4096)
    report: bool = setting(True, help="Compare the written output with the source (sizes, and the parts below).")
    # Off by default: answering is most of a report's time on a CPU (bench/quantize_export_time.py)
    report_answers: bool = setting(False, label="Answers before and after",
                                   help="Answer the prompts with both models, side by side (all prompts in one "
                                        "batch). The slowest part on a CPU.")
    report_agreement: bool = setting(True, label="Next-token agreement",
                                     help="How often the output picks the same next token as the source, and the "
                                          "KL divergence between them, over the prompts (and answers): one pass "
                                          "per model.")
    report_speed: bool = setting(False, label="Generation speed",
                                 help="Tokens per second before and after on this worker. GGUF files run "
                                      "dequantized here, so their speed is not llama.cpp's.")
    model_name: str = setting("", help="The model's name written into the output (GGUF general.name, the model "
                                       "card's title); empty: the source directory's name.")
    trust_remote_code: bool = setting(False, help="Run model code shipped with the model (off unless an admin "
                                                  "allows it).")

    @classmethod
    def from_dict(cls, data: dict) -> "QuantizeConfig":
        from tuning.errors import ConfigError

        data = dict(data)
        prompts = data.pop("prompts", None)
        scheme_params = data.pop("scheme_params", None) or {}
        errors: dict[str, str] = {}
        config = None
        try:
            config = config_from_dict(cls, data)
        except ConfigError as exc:
            errors.update(exc.errors)
        if prompts is not None and (not isinstance(prompts, (list, tuple)) or not prompts
                                    or not all(isinstance(p, str) and p.strip() for p in prompts)):
            errors["prompts"] = "must be a list of one or more non-empty texts"
        if not isinstance(scheme_params, dict):
            errors["scheme_params"] = "must be a mapping of the scheme's settings to values"
        elif config is not None:
            try:
                scheme_params = QUANT_SCHEMES[config.scheme].check_params(scheme_params)
            except ConfigError as exc:
                errors.update(exc.errors)
            if scheme_params.get("alpha_grid") and not config.validation_dataset_path:
                errors["validation_dataset_path"] = ("ComPEFT's α search scores each α by loss on a validation "
                                                     "split: pick one, or clear alpha_grid")
        if errors:
            raise ConfigError(errors)
        import dataclasses

        config = dataclasses.replace(config, scheme_params=scheme_params)
        if prompts is not None:
            config = dataclasses.replace(config, prompts=list(prompts))
        return config
