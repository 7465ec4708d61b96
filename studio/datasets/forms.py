"""Forms of the dataset pages. Parsing only: the checks of the data itself
live in tuning.data and run in services (upload) or on workers (the rest)."""

from django import forms

from studio.catalog.models import BaseModel
from studio.catalog.selectors import base_model_list
from tuning.data.chat_templates import AUTO, CHAT_TEMPLATES
from tuning.data.diet import DIET_OPERATIONS

UPLOAD_HELP = "JSONL, JSON, CSV/TSV, Parquet, plain text or a .zip of those; pick several files to make one dataset."
MAX_FILES = 20  # files per upload: each is checked in full before anything is stored


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleFileField(forms.FileField):
    """A file input that accepts several files (Django's documented recipe)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("widget", MultipleFileInput())
        super().__init__(*args, **kwargs)

    def clean(self, data, initial=None):
        files = data if isinstance(data, (list, tuple)) else [data]
        files = [f for f in files if f]
        if not files:
            raise forms.ValidationError("Pick a file to upload.", code="required")
        if len(files) > MAX_FILES:
            raise forms.ValidationError(f"Upload at most {MAX_FILES} files at once (got {len(files)}); zip them.")
        return [super(MultipleFileField, self).clean(f, initial) for f in files]


class DatasetUploadForm(forms.Form):
    # Empty files reach the reader, whose message names the file and says what to do.
    file = MultipleFileField(allow_empty_file=True, help_text=UPLOAD_HELP)
    name = forms.CharField(required=False, max_length=200, help_text="Optional; defaults to the (first) file name.")


def column_mapping_form(*, fields: list[dict], columns: list[str], data=None, initial: dict | None = None):
    """A form with one select per canonical field (``fields``: {name, required, help} from the schema
    detector), each offering the dataset's columns."""
    choices = [("", "— none —")] + [(column, column) for column in columns]
    form = forms.Form(data, initial=initial or {})
    for field in fields:
        form.fields[field["name"]] = forms.ChoiceField(
            choices=choices, required=field.get("required", False), label=field["name"],
            help_text=field.get("help", ""))
    return form


class AnalysisForm(forms.Form):
    base_model = forms.ModelChoiceField(queryset=BaseModel.objects.all(), empty_label=None,
                                        help_text="Its chat template and tokenizer render the preview.")
    max_length = forms.IntegerField(min_value=8, max_value=131072, initial=512,
                                    help_text="Tokens per row in training; longer rows are cut.")
    loss_on_prompt = forms.BooleanField(required=False, label="Loss on everything",
                                        help_text="Train on the prompt too, not only the responses.")
    chat_template = forms.ChoiceField(
        choices=[(AUTO, "the model's own (or a plain instruction format when it has none)"),
                 *((name, template.label) for name, template in CHAT_TEMPLATES.items())],
        initial=AUTO, required=False, help_text="How rows become the model's prompt; a job's chat_template setting "
                                                "picks the same.")

    def clean_chat_template(self):
        return self.cleaned_data.get("chat_template") or AUTO

    def __init__(self, *args, dataset, **kwargs):
        super().__init__(*args, **kwargs)
        # The models the dataset's team may use (shared ones and its own).
        self.fields["base_model"].queryset = base_model_list(team_ids=[dataset.team_id])


def diet_form(operation_name: str, data=None, *, merge_choices=None, base_models=None):
    """The form of one diet operation, built from its entry in DIET_OPERATIONS."""
    operation = DIET_OPERATIONS[operation_name]
    form = forms.Form(data, prefix=operation_name)
    for param in operation.params:
        kwargs = {"required": param.default is not None and param.kind != "bool", "help_text": param.help,
                  "initial": param.default, "label": param.name.replace("_", " ")}
        if param.kind == "bool":
            field = forms.BooleanField(**{**kwargs, "required": False})
        elif param.kind == "int":
            field = forms.IntegerField(min_value=param.min, max_value=param.max, **kwargs)
        elif param.kind == "float":
            field = forms.FloatField(min_value=param.min, max_value=param.max, **kwargs)
        elif param.kind == "choice":
            field = forms.ChoiceField(choices=[(c, c) for c in param.choices], **kwargs)
        else:
            field = forms.CharField(max_length=200, **kwargs)
        form.fields[param.name] = field
    if operation_name == "merge":
        form.fields["others"] = forms.ModelMultipleChoiceField(
            queryset=merge_choices, label="merge with", help_text="Versions of the same schema to append.")
    if "tokenizer" in operation.needs and base_models is not None:
        form.fields["base_model"] = forms.ModelChoiceField(
            queryset=base_models, required=False, label="base model",
            help_text="Whose tokenizer counts tokens (unit: tokens).")
    return form


def diet_parameters(operation_name: str, cleaned: dict) -> dict:
    """The cleaned values the operation takes (blank optional fields left out, so defaults apply)."""
    names = {p.name for p in DIET_OPERATIONS[operation_name].params}
    return {key: value for key, value in cleaned.items() if key in names and value not in (None, "")}
