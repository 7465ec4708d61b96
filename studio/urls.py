from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path

from studio.artifacts import views as artifacts
from studio.datasets import views as datasets
from studio.jobs import views as jobs
from studio.jobs import views_compare

urlpatterns = [
    path("", jobs.job_list, name="home"),
    path("accounts/login/", auth_views.LoginView.as_view(template_name="accounts/login.html"), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("datasets/", datasets.dataset_list, name="dataset-list"),
    path("datasets/<int:dataset_id>/", datasets.dataset_detail, name="dataset-detail"),
    path("jobs/new/", jobs.job_new, name="job-new"),
    path("jobs/new/method-fields/", jobs.job_new_method_fields, name="job-new-method-fields"),
    path("jobs/new/estimate/", jobs.job_new_estimate, name="job-new-estimate"),
    path("jobs/compare/", views_compare.job_compare, name="job-compare"),
    path("jobs/<int:job_id>/", jobs.job_detail, name="job-detail"),
    path("jobs/<int:job_id>/status/", jobs.job_status, name="job-status"),
    path("jobs/<int:job_id>/cancel/", jobs.job_cancel_view, name="job-cancel"),
    path("jobs/<int:job_id>/resume/", jobs.job_resume_view, name="job-resume"),
    path("jobs/<int:job_id>/events/", jobs.job_events, name="job-events"),
    path("artifacts/<int:artifact_id>/download/", artifacts.artifact_download, name="artifact-download"),
    path("admin/", admin.site.urls),
]
