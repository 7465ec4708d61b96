"""The forms of the merge and evaluate pages, shared with the API
(studio/api/views_steps.py), so that both check a request the same way:
fields generated from the config dataclasses' metadata, as the new-job form."""

from __future__ import annotations

from django import forms

from studio.jobs.forms import form_field
from tuning.fields import field_specs

PARAM_PREFIX = "param__"
# Filled in by the studio (paths, the base of an adapter), never typed by a user.
EVALUATE_SYSTEM_FIELDS = {"artifact_path", "base_model", "dataset_path", "dataset_name", "trust_remote_code"}


def merge_params_form(params_class, data, preset: dict | None = None) -> forms.Form:
    """Bound form fields for a merge method's parameters (same metadata as the CLI);
    an unbound form starts from ``preset``'s values where one is chosen."""
    initial = {PARAM_PREFIX + name: value for name, value in (preset or {}).items()}
    form = forms.Form(data, prefix=None, initial=initial)  # data None: unbound (the page before its first POST)
    for spec in field_specs(params_class):
        form.fields[PARAM_PREFIX + spec.name] = form_field(spec)
    return form


def filled_params(form) -> dict:
    return {name.removeprefix(PARAM_PREFIX): value for name, value in form.cleaned_data.items()
            if value not in (None, "")}


def evaluate_form(data) -> forms.Form:
    from tuning.scoring import EvaluateConfig

    form = forms.Form(data)
    for spec in field_specs(EvaluateConfig):
        if spec.name not in EVALUATE_SYSTEM_FIELDS:
            form.fields[spec.name] = form_field(spec)
    return form


def quantize_report_form(data) -> forms.Form:
    """What the quantize report measures (QuantizeConfig's REPORT_SETTINGS but
    the master switch, which the API alone offers): the page's "Report" box."""
    from tuning.quantize.config import REPORT_SETTINGS, QuantizeConfig

    form = forms.Form(data)
    for spec in field_specs(QuantizeConfig):
        if spec.name in REPORT_SETTINGS and spec.name != "report":
            form.fields[spec.name] = form_field(spec)
    return form
