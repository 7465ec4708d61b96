"""The Models page: every base model the user's teams may use, with its
facts and what uses it; adding one from the hub (a download job) or from a
folder on the server (a checking job)."""

from __future__ import annotations

from django.conf import settings
from django.shortcuts import redirect, render

from studio.accounts.policy import Action, allows
from studio.accounts.selectors import team_for_new_work, team_ids_for_user, team_roles_for_user
from studio.catalog.forms import FolderModelForm, HubModelForm
from studio.catalog.selectors import base_model_list, base_model_usage, team_secrets
from studio.catalog.services import MODEL_ADD_KIND, model_download_request, model_folder_request
from studio.jobs.models import Job
from studio.jobs.pages import job_start
from studio.storage.services import may_delete

READ_ONLY = "You have view-only access to this team; ask a team admin for the member role."


def model_list(request):
    team_ids = team_ids_for_user(user=request.user)
    team = team_for_new_work(user=request.user)
    secrets = list(team_secrets(team_id=team.pk)) if team else []
    hub_form = HubModelForm(secrets=secrets, staff=request.user.is_staff)
    folder_form = FolderModelForm()
    status = 200
    if request.method == "POST":
        which = request.POST.get("add")
        if which == "hub":
            hub_form = HubModelForm(request.POST, secrets=secrets, staff=request.user.is_staff)
            form, create = hub_form, lambda data: model_download_request(
                user=request.user, team=team, repo_id=data["repo_id"], revision=data["revision"],
                token=data["token"], secret_id=data["secret"], allow_pickle=data.get("allow_pickle", False))
        else:
            folder_form = FolderModelForm(request.POST)
            form, create = folder_form, lambda data: model_folder_request(user=request.user, team=team,
                                                                          path=data["path"])
        if team is None or not allows(user=request.user, action=Action.CREATE, team_id=team.pk):
            form.add_error(None, READ_ONLY)
        elif form.is_valid():
            jobs, errors = job_start(request, team=team, create=lambda: create(form.cleaned_data),
                                     model_error_field="repo_id")
            if jobs:
                return redirect(jobs[0])
            for field, message in errors.items():
                form.add_error(field if field in form.fields else None, message)
        status = 400
    models = list(base_model_list(team_ids=team_ids).select_related("team").order_by("name"))
    usage = base_model_usage(team_ids=team_ids)
    adding = Job.objects.filter(team_id__in=team_ids, kind=MODEL_ADD_KIND).exclude(status__in=Job.FINISHED)
    roles = team_roles_for_user(user=request.user)  # one lookup for every row's Delete… link
    return render(request, "catalog/models.html", {
        "rows": [(model, usage.get(model.pk, {}), may_delete(user=request.user, obj=model, roles=roles))
                 for model in models], "hub_form": hub_form,
        "folder_form": folder_form, "folders_allowed": bool(settings.MODEL_FOLDER_ROOTS), "adding": adding,
        "hub_endpoint": settings.HF_ENDPOINT or "https://huggingface.co"}, status=status)
