"""The adapters a training method builds on (EigenLoRAx's sources), picked
by artifact id on the form and in the API: each must be an adapter of the
caller's team trained on the run's base model. The ids become the
artifacts' directories, which is what the method reads; a directory is kept
only where it is such an artifact's (a resumed job's stored settings)."""

from __future__ import annotations

from studio.accounts.selectors import team_for_new_work
from studio.artifacts.models import Artifact
from tuning.errors import ConfigError
from tuning.fields import field_specs
from tuning.methods import Method
from tuning.methods.eigenlora import FIELD


def with_source_adapters(method: Method, method_params: dict, *, team, base_model) -> tuple[dict, list[int]]:
    """(``method_params`` with its source adapters as directories, the
    artifacts' ids: the job's inputs, so its output's lineage names them);
    ConfigError naming the field for one that is not the team's adapter of ``base_model``."""
    chosen = str(method_params.get(FIELD) or "")
    if not chosen.strip() or FIELD not in {spec.name for spec in field_specs(method.params)}:
        return method_params, []
    field, paths, ids = f"method_params.{FIELD}", [], []
    for part in (part.strip() for part in chosen.split(",")):
        if not part:
            continue
        artifacts = Artifact.objects.filter(team=team, kind=Artifact.Kind.ADAPTER).select_related("base_model")
        artifact = (artifacts.filter(pk=int(part)) if part.isdigit() else artifacts.filter(path=part)).first()
        if artifact is None:
            raise ConfigError({field: f"no adapter #{part} in this team: give the ids of the team's LoRA adapters"})
        if base_model is not None and artifact.base_model_id != base_model.pk:
            raise ConfigError({field: f"adapter #{artifact.pk} ({artifact.name}) was trained on "
                                      f"{artifact.base_model or 'another model'}, not on {base_model}: the source "
                                      f"adapters must share the run's base model"})
        paths.append(artifact.path)
        ids.append(artifact.pk)
    return {**method_params, FIELD: ",".join(paths)}, ids


def source_adapter_choices(*, user):
    """The adapters the form offers as sources: those of the team new jobs go to, newest first."""
    team = team_for_new_work(user=user)
    if team is None:
        return Artifact.objects.none()
    return Artifact.objects.filter(team=team, kind=Artifact.Kind.ADAPTER).select_related("base_model")
