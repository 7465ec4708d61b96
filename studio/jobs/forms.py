"""The new-job form, generated from the config dataclasses' field metadata
(the same declaration the CLI and validation read)."""

from __future__ import annotations

from django import forms

from studio.datasets.selectors import dataset_training_blocker
from tuning.config import GRPO_FIELDS, PREFERENCE_FIELDS, REWARD_FIELDS, TrainConfig
from tuning.fields import field_specs
from tuning.methods import GROUPS, METHODS, Method
from tuning.methods.eigenlora import FIELD as SOURCES_FIELD
from tuning.preference import PREFERENCE_LOSSES

# Settings the studio fills in itself, never typed by a user.
SYSTEM_FIELDS = {"base_model", "base_model_name", "dataset_path", "dataset_name", "dataset_sha256", "output_dir",
                 "trust_remote_code", "method", "resume_from", "cache_dir"}
# Drawn beside the dataset and base model rather than with the settings: the task decides which methods apply.
TOP_FIELDS = ("task",)
TASK_LABELS = {"sft": "Instructions / chat (SFT)", "pretrain": "Continued pre-training",
               "classify": "Classification", "preference": "Preference (DPO, LN-DPO, IPO, ORPO, SimPO, CPO, KTO)",
               "reward": "Reward model (from preference pairs)",
               "grpo": "GRPO / ReMax (prompts with reference answers, rewards without code)"}
METHOD_PREFIX = "method__"
DEFAULT_METHOD = "lora"
NO_GPU = "needs a CUDA GPU worker; none is registered"


def method_unavailable_reason(method: Method, *, task: str, gpu_pools) -> str:
    """Why ``method`` cannot be picked for ``task`` on this studio ("" when it can)."""
    if method.needs_cuda and not gpu_pools:
        return NO_GPU
    if task not in method.tasks:
        return f"not for the {task} task (supports {', '.join(method.tasks)})"
    return ""


def method_to_draw(name: str, *, task: str, gpu_pools) -> tuple[Method, str]:
    """The method a new form is drawn for, and a notice when ``name`` cannot
    be used (unknown, GPU-only, another task) and a usable one is drawn instead."""
    method = METHODS.get(name) or METHODS[DEFAULT_METHOD]
    reason = method_unavailable_reason(method, task=task, gpu_pools=gpu_pools)
    if not reason:
        return method, ""
    usable = [m for m in [METHODS[DEFAULT_METHOD], *METHODS.values()]
              if not method_unavailable_reason(m, task=task, gpu_pools=gpu_pools)]
    return usable[0], f"{method.label} is unavailable: {reason}. Showing {usable[0].label} instead."


def form_field(spec) -> forms.Field:
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
    if spec.multiline:
        return forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), **common)
    return forms.CharField(**common)


class DatasetSelect(forms.Select):
    """The list of dataset versions: one that cannot be trained on stays listed, greyed out (disabled), with
    the reason beside its name, so the user sees why it is not offered rather than wonder where it went."""

    def create_option(self, name, value, label, selected, index, subindex=None, attrs=None):
        option = super().create_option(name, value, label, selected, index, subindex, attrs)
        reason = dataset_training_blocker(value.instance) if hasattr(value, "instance") else ""
        if reason:
            option["label"] = f"{label} — {reason}"
            option["attrs"].update(disabled=True, title=reason)
            option["attrs"]["data-refused"] = "1"
        return option


class TrainJobForm(forms.Form):
    """Dataset, base model, task and method, then the run's settings. Values
    are checked again by ``TrainConfig.from_dict`` in the service. ``method``
    says whose parameter fields the form has; ``task`` and ``gpu_pools``
    which methods can be picked."""

    name = forms.CharField(label="Job name", required=False, max_length=200,
                           help_text="Optional; defaults to method and dataset.")
    dataset = forms.ModelChoiceField(queryset=None, empty_label=None, widget=DatasetSelect,
                                     help_text="A greyed-out version cannot be trained on yet; the reason is "
                                               "beside it.")
    base_model = forms.ModelChoiceField(queryset=None, empty_label=None)
    method = forms.ChoiceField(choices=[])  # drawn as cards by jobs/_method_picker.html
    golden_prompts = forms.CharField(
        label="Golden prompts", required=False, max_length=20000, widget=forms.Textarea(attrs={"rows": 3}),
        help_text="One per line (at most 8): answered before training and at every checkpoint, shown on the "
                  "job page next to each other.")

    def __init__(self, *args, datasets, base_models, method: str = DEFAULT_METHOD, task: str = "sft",
                 gpu_pools=(), adapters=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["dataset"].queryset = datasets
        self.fields["base_model"].queryset = base_models
        self.fields["method"].choices = [(m.name, m.label) for m in METHODS.values()]
        self.chosen = METHODS.get(method) or METHODS[DEFAULT_METHOD]
        self.chosen_task, self.gpu_pools = task, gpu_pools
        self.basic_names, self.advanced_names, self.setting_names, self.preference_names = [], [], [], []
        for spec in field_specs(self.chosen.params):
            self._add(METHOD_PREFIX + spec.name, spec)
        for spec in field_specs(TrainConfig):
            # The preference settings are drawn in their own section, for the preference task only; the
            # reward model's, for the reward task only.
            if spec.name not in SYSTEM_FIELDS and (spec.name not in PREFERENCE_FIELDS or task == "preference") and (
                    spec.name not in REWARD_FIELDS or task == "reward") and (
                    spec.name not in GRPO_FIELDS or task == "grpo"):
                self._add(spec.name, spec)
        self.fields["task"].choices = [(key, TASK_LABELS.get(key, key)) for key, _ in self.fields["task"].choices]
        sources = METHOD_PREFIX + SOURCES_FIELD
        if adapters and sources in self.fields:  # EigenLoRAx: ticked among the team's adapters (ids typed if none)
            self.fields[sources] = forms.MultipleChoiceField(
                label=self.fields[sources].label, help_text=self.fields[sources].help_text, required=False,
                widget=forms.CheckboxSelectMultiple,
                choices=[(a.pk, f"#{a.pk} {a.name} (on {a.base_model or 'an unknown base'})") for a in adapters])

    def _add(self, name, spec):
        self.fields[name] = form_field(spec)
        self.setting_names.append(name)
        if name in PREFERENCE_FIELDS:
            self.preference_names.append(name)
        elif name not in TOP_FIELDS:
            (self.basic_names if spec.basic else self.advanced_names).append(name)

    def unavailable(self, method: Method) -> str:
        return method_unavailable_reason(method, task=self.chosen_task, gpu_pools=self.gpu_pools)

    def method_groups(self) -> list[tuple[str, list[tuple[Method, str]]]]:
        """[(group heading, [(method, reason it is disabled or "")])] in GROUPS order."""
        groups = [(heading, [(m, self.unavailable(m)) for m in METHODS.values() if m.group == key])
                  for key, heading in GROUPS.items()]
        return [(heading, rows) for heading, rows in groups if rows]

    def basic_fields(self):
        return [self[name] for name in self.basic_names]

    def advanced_fields(self):
        return [self[name] for name in self.advanced_names]

    def preference_fields(self):
        return [self[name] for name in self.preference_names]

    def preference_losses(self):
        return list(PREFERENCE_LOSSES.values())

    def clean_method(self):
        method = METHODS[self.cleaned_data["method"]]
        reason = self.unavailable(method)
        if reason:
            raise forms.ValidationError(f"{method.label} is unavailable: {reason}.")
        return method.name

    def method_params(self) -> dict:
        """The method's parameters from cleaned data, blanks left to defaults."""
        return {name.removeprefix(METHOD_PREFIX): ",".join(value) if isinstance(value, list) else value
                for name, value in self._filled().items() if name.startswith(METHOD_PREFIX)}

    def run_settings(self) -> tuple[dict, dict]:
        """(train settings, method params) from cleaned data, blanks left to defaults."""
        values = {name: value for name, value in self._filled().items() if not name.startswith(METHOD_PREFIX)}
        values["method"] = self.cleaned_data["method"]
        prompts = [line.strip() for line in self.cleaned_data.get("golden_prompts", "").splitlines() if line.strip()]
        if prompts:
            values["golden_prompts"] = prompts
        return values, self.method_params()

    def _filled(self) -> dict:
        return {name: self.cleaned_data[name] for name in self.setting_names
                if self.cleaned_data.get(name) not in (None, "")}

    def add_config_errors(self, errors: dict[str, str]) -> None:
        for key, message in errors.items():
            name = METHOD_PREFIX + key.removeprefix("method_params.") if key.startswith("method_params.") else key
            self.add_error(name if name in self.fields else None, f"{key}: {message}" if name not in self.fields
                           else message)


def initial_from_query(query, *, method: Method, preset: str = "") -> dict:
    """Initial values for a redrawn form: what the browser sent (the form's
    own fields, so the user's edits survive a change of method or task),
    then the chosen preset.

    ``fields_for`` names the method whose parameter fields the browser had:
    another method's parameters are dropped, since the same name (rank …)
    can mean something else. A field missing from a sent form is an
    unchecked checkbox."""
    sent_form = "fields_for" in query
    same_method = query.get("fields_for") == method.name
    specs = {spec.name: spec for spec in field_specs(TrainConfig) if spec.name not in SYSTEM_FIELDS}
    if same_method or not sent_form:
        specs |= {METHOD_PREFIX + spec.name: spec for spec in field_specs(method.params)}
    initial = {name: query[name] for name in ("name", "dataset", "base_model", "golden_prompts") if query.get(name)}
    for name, spec in specs.items():
        if name in query:  # the ticked source adapters are several values of one name
            initial[name] = query.getlist(name) if name == METHOD_PREFIX + SOURCES_FIELD else query[name]
        elif sent_form and spec.type is bool:
            initial[name] = False
    if preset in method.presets:
        initial |= preset_values(method, preset)
    return initial


def preset_values(method: Method, preset: str) -> dict:
    """Form values for a preset. Every field any of the method's presets sets
    starts from its default, so that "balanced" (epochs) after "quick"
    (max steps) does not keep quick's step limit."""
    defaults = {spec.name: spec.default for spec in field_specs(TrainConfig)}
    defaults |= {METHOD_PREFIX + spec.name: spec.default for spec in field_specs(method.params)}
    values = {name: defaults.get(name) for settings_ in method.presets.values() for name in _flat(settings_)}
    return values | _flat(method.presets[preset])


def _flat(settings_: dict) -> dict:
    """A preset as form values: method parameters get the field prefix."""
    values = {key: value for key, value in settings_.items() if key != "method_params"}
    return values | {METHOD_PREFIX + key: value for key, value in settings_.get("method_params", {}).items()}
