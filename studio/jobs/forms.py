"""The new-job form, generated from the config dataclasses' field metadata
(the same declaration the CLI and validation read)."""

from __future__ import annotations

from django import forms

from tuning.config import TrainConfig, field_specs
from tuning.methods import METHODS

# Settings the studio fills in itself, never typed by a user.
SYSTEM_FIELDS = {"base_model", "base_model_name", "dataset_path", "dataset_name", "dataset_sha256", "output_dir",
                 "trust_remote_code", "method"}
METHOD_PREFIX = "method__"


def _form_field(spec) -> forms.Field:
    common = {"label": spec.label, "help_text": spec.help, "required": False, "initial": spec.default}
    if spec.choices:
        return forms.ChoiceField(choices=[(c, c) for c in spec.choices], **common)
    if spec.type is bool:
        return forms.BooleanField(**common)
    if spec.type is int:
        return forms.IntegerField(min_value=spec.min, max_value=spec.max, **common)
    if spec.type is float:
        field = forms.FloatField(min_value=spec.min, max_value=spec.max, **common)
        field.widget.attrs["step"] = "any"
        return field
    return forms.CharField(**common)


class TrainJobForm(forms.Form):
    """Dataset, base model, method, then the run's settings. Values are
    checked again by ``TrainConfig.from_dict`` in the service."""

    name = forms.CharField(required=False, max_length=200, help_text="Optional; defaults to method and dataset.")
    dataset = forms.ModelChoiceField(queryset=None, empty_label=None)
    base_model = forms.ModelChoiceField(queryset=None, empty_label=None)
    method = forms.ChoiceField(choices=[(m.name, f"{m.label} ({m.group})") for m in METHODS.values()])

    def __init__(self, *args, datasets, base_models, method: str = "lora", **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["dataset"].queryset = datasets
        self.fields["base_model"].queryset = base_models
        self.method = METHODS.get(method, METHODS["lora"])
        self.basic_names, self.advanced_names = [], []
        for spec in field_specs(self.method.params):
            self._add(METHOD_PREFIX + spec.name, spec)
        for spec in field_specs(TrainConfig):
            if spec.name not in SYSTEM_FIELDS:
                self._add(spec.name, spec)

    def _add(self, name, spec):
        self.fields[name] = _form_field(spec)
        (self.basic_names if spec.basic else self.advanced_names).append(name)

    def basic_fields(self):
        return [self[name] for name in self.basic_names]

    def advanced_fields(self):
        return [self[name] for name in self.advanced_names]

    def run_settings(self) -> tuple[dict, dict]:
        """(train settings, method params) from cleaned data, blanks left to defaults."""
        values, params = {}, {}
        for name in self.basic_names + self.advanced_names:
            value = self.cleaned_data.get(name)
            if value is None or value == "":
                continue
            if name.startswith(METHOD_PREFIX):
                params[name.removeprefix(METHOD_PREFIX)] = value
            else:
                values[name] = value
        values["method"] = self.cleaned_data["method"]
        return values, params

    def add_config_errors(self, errors: dict[str, str]) -> None:
        for key, message in errors.items():
            name = METHOD_PREFIX + key.removeprefix("method_params.") if key.startswith("method_params.") else key
            self.add_error(name if name in self.fields else None, f"{key}: {message}" if name not in self.fields
                           else message)
