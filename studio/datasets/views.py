from django.conf import settings
from django.shortcuts import redirect, render
from django.template.defaultfilters import filesizeformat
from django.views.decorators.http import require_http_methods

from studio.accounts.selectors import team_for_new_work
from studio.datasets.forms import DatasetUploadForm
from studio.datasets.selectors import dataset_get_for_user, dataset_list_for_user
from studio.datasets.services import dataset_create_from_upload
from tuning.errors import DatasetError


@require_http_methods(["GET", "POST"])
def dataset_list(request):
    """The team's datasets and the upload form (posted with htmx)."""
    form = DatasetUploadForm(request.POST or None, request.FILES or None)
    if request.method == "POST":
        team = team_for_new_work(user=request.user)
        if getattr(request, "upload_too_large", False):
            form = DatasetUploadForm(request.POST)
            form.add_error("file", f"The file is larger than the {filesizeformat(settings.UPLOAD_MAX_BYTES)} "
                                   f"upload limit; split it or upload a sample.")
        elif team is None:
            form.add_error(None, "You have view-only access; ask a team admin for the member role to upload.")
        elif form.is_valid():
            try:
                dataset = dataset_create_from_upload(team=team, user=request.user, upload=form.cleaned_data["file"],
                                                     name=form.cleaned_data["name"])
            except DatasetError as exc:
                form.add_error("file", str(exc))
            else:
                if request.htmx:
                    response = render(request, "datasets/_upload_form.html", {"form": DatasetUploadForm()})
                    response["HX-Redirect"] = dataset.get_absolute_url()
                    return response
                return redirect(dataset)
        if request.htmx:
            # htmx swaps only 2xx responses by default; the partial carries the errors.
            return render(request, "datasets/_upload_form.html", {"form": form})
    context = {"form": form, "datasets": dataset_list_for_user(user=request.user),
               "upload_limit": settings.UPLOAD_MAX_BYTES}
    return render(request, "datasets/list.html", context, status=400 if form.errors else 200)


def dataset_detail(request, dataset_id: int):
    dataset = dataset_get_for_user(user=request.user, dataset_id=dataset_id)
    return render(request, "datasets/detail.html", {"dataset": dataset})
