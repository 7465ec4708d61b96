from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from studio.accounts import views_login, views_oidc, views_two_factor
from studio.accounts import views_teams as teams
from studio.api import views_docs as api_docs
from studio.artifacts import views as artifacts
from studio.artifacts import views_publish as artifacts_publish
from studio.catalog import views as catalog
from studio.datasets import views as datasets
from studio.jobs import views as jobs
from studio.jobs import views_compare, views_judge, views_queue, views_search, views_steps

urlpatterns = [
    path("", jobs.job_list, name="home"),
    path("accounts/login/", views_login.login_view, name="login"),
    path("accounts/login/code/", views_login.login_code, name="login-code"),
    # The admin's own login would skip the two-factor step: it goes through the studio's.
    path("admin/login/", views_login.login_view),
    # The identity provider (OpenID Connect); the names are mozilla-django-oidc's own.
    path("oidc/authenticate/", views_oidc.sign_in, name="oidc_authentication_init"),
    path("oidc/callback/", views_oidc.sign_in_callback, name="oidc_authentication_callback"),
    path("accounts/sign-in-refused/", views_oidc.sign_in_refused, name="sign-in-refused"),
    path("accounts/two-factor/", views_two_factor.two_factor_page, name="two-factor"),
    path("accounts/two-factor/start/", views_two_factor.two_factor_start, name="two-factor-start"),
    path("accounts/two-factor/confirm/", views_two_factor.two_factor_confirm, name="two-factor-confirm"),
    path("accounts/two-factor/recovery-codes/", views_two_factor.two_factor_recovery_codes,
         name="two-factor-recovery-codes"),
    path("accounts/two-factor/disable/", views_two_factor.two_factor_disable, name="two-factor-disable"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("datasets/", datasets.dataset_list, name="dataset-list"),
    path("datasets/<int:dataset_id>/", datasets.dataset_detail, name="dataset-detail"),
    path("datasets/<int:dataset_id>/mapping/", datasets.dataset_mapping, name="dataset-mapping"),
    path("datasets/<int:dataset_id>/analyse/", datasets.dataset_analyse, name="dataset-analyse"),
    path("datasets/<int:dataset_id>/analyses/<int:analysis_id>/", datasets.dataset_analysis, name="dataset-analysis"),
    path("datasets/<int:dataset_id>/analyses/<int:analysis_id>/drop/", datasets.dataset_drop_rows,
         name="dataset-drop-rows"),
    path("datasets/<int:dataset_id>/diet/<str:operation>/", datasets.dataset_diet, name="dataset-diet"),
    path("datasets/<int:dataset_id>/operations/<int:operation_id>/", datasets.dataset_operation,
         name="dataset-operation"),
    path("jobs/new/", jobs.job_new, name="job-new"),
    path("jobs/new/method-fields/", jobs.job_new_method_fields, name="job-new-method-fields"),
    path("jobs/new/estimate/", jobs.job_new_estimate, name="job-new-estimate"),
    path("jobs/compare/", views_compare.job_compare, name="job-compare"),
    path("jobs/queue/", views_queue.job_queue, name="job-queue"),
    path("jobs/queue/table/", views_queue.job_queue_table, name="job-queue-table"),
    path("jobs/<int:job_id>/queue-action/", views_queue.job_queue_action, name="job-queue-action"),
    path("jobs/<int:job_id>/", jobs.job_detail, name="job-detail"),
    path("jobs/<int:job_id>/status/", jobs.job_status, name="job-status"),
    path("jobs/<int:job_id>/cancel/", jobs.job_cancel_view, name="job-cancel"),
    path("jobs/<int:job_id>/resume/", jobs.job_resume_view, name="job-resume"),
    path("jobs/<int:job_id>/events/", jobs.job_events, name="job-events"),
    path("jobs/new/merge/", views_steps.job_new_merge, name="job-new-merge"),
    path("jobs/new/merge-search/", views_search.job_new_merge_search, name="job-new-merge-search"),
    path("jobs/new/quantize/", views_steps.job_new_quantize, name="job-new-quantize"),
    path("jobs/new/evaluate/", views_steps.job_new_evaluate, name="job-new-evaluate"),
    path("jobs/new/judge/", views_judge.job_new_judge, name="job-new-judge"),
    path("jobs/new/forgetting/", views_judge.job_new_forgetting, name="job-new-forgetting"),
    path("jobs/<int:job_id>/judged/", views_judge.judged_result, name="judged-result"),
    path("jobs/<int:job_id>/chain/", views_steps.job_chain, name="job-chain"),
    path("artifacts/", artifacts.artifact_list, name="artifact-list"),
    path("playground/", artifacts.playground, name="playground"),
    path("artifacts/<int:artifact_id>/", artifacts.artifact_detail, name="artifact-detail"),
    path("artifacts/<int:artifact_id>/scores.<str:fmt>", artifacts.artifact_scores, name="artifact-scores"),
    path("artifacts/<int:artifact_id>/download/", artifacts.artifact_download, name="artifact-download"),
    path("artifacts/<int:artifact_id>/files/<path:name>", artifacts.artifact_file, name="artifact-file"),
    path("artifacts/<int:artifact_id>/publish/", artifacts_publish.artifact_publish, name="artifact-publish"),
    path("artifacts/<int:artifact_id>/publish/<int:job_id>/again/", artifacts_publish.artifact_publish_again,
         name="artifact-publish-again"),
    path("notifications/", include("studio.notifications.urls")),
    path("audit/", include("studio.audit.urls")),
    path("workers/", include("studio.workers.urls")),
    path("storage/", include("studio.storage.urls")),
    path("models/", catalog.model_list, name="model-list"),
    path("team/", teams.team_page, name="team-current"),
    path("teams/switch/", teams.team_switch_view, name="team-switch"),
    path("teams/<slug:slug>/", teams.team_page, name="team-page"),
    path("teams/<slug:slug>/invite/", teams.team_invite, name="team-invite"),
    path("teams/<slug:slug>/invitations/<int:invitation_id>/revoke/", teams.team_invitation_revoke,
         name="team-invitation-revoke"),
    path("teams/<slug:slug>/members/<int:user_id>/role/", teams.team_member_role, name="team-member-role"),
    path("teams/<slug:slug>/members/<int:user_id>/remove/", teams.team_member_remove, name="team-member-remove"),
    path("join/<str:token>/", teams.team_join, name="team-join"),
    path("invitations/", teams.invitation_list, name="invitation-list"),
    path("invitations/<int:invitation_id>/<str:answer>/", teams.invitation_respond, name="invitation-respond"),
    path("admin/", admin.site.urls),
    path("api/docs/", api_docs.api_docs, name="api-docs"),
    path("api/v1/", include("studio.api.urls")),
    path("v1/", include("studio.api.urls_openai")),  # OpenAI-compatible serving
    path("accounts/webhooks/", include("studio.notifications.urls_webhooks")),
    path("accounts/", include("studio.accounts.urls")),
]
