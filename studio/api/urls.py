"""/api/v1/. Paths have no trailing slash, as in hosted fine-tuning APIs.
Every pattern here must appear in openapi.py (a test checks)."""

from django.urls import path, re_path

from studio.api import views_files as files
from studio.api import views_dataset_work as dataset_work
from studio.api import views_jobs as jobs
from studio.api import views_judge as judge
from studio.api import views_publish as publish
from studio.api import views_steps as steps
from studio.api import views_teams as teams

urlpatterns = [
    path("fine_tuning/jobs", jobs.jobs_collection, name="api-jobs"),
    path("fine_tuning/jobs/<int:job_id>", jobs.job_retrieve, name="api-job"),
    path("fine_tuning/jobs/<int:job_id>/cancel", jobs.job_cancel_api, name="api-job-cancel"),
    path("fine_tuning/jobs/<int:job_id>/events", jobs.job_events, name="api-job-events"),
    path("fine_tuning/jobs/<int:job_id>/checkpoints", jobs.job_checkpoints_api, name="api-job-checkpoints"),
    path("artifacts", files.artifacts_collection, name="api-artifacts"),
    path("artifacts/<int:artifact_id>", files.artifact_retrieve, name="api-artifact"),
    path("artifacts/<int:artifact_id>/content", files.artifact_content, name="api-artifact-content"),
    path("artifacts/<int:artifact_id>/scores", files.artifact_scores_api, name="api-artifact-scores"),
    path("artifacts/<int:artifact_id>/publish", publish.artifact_publish_api, name="api-artifact-publish"),
    path("models", files.models_collection, name="api-models"),
    path("datasets", files.datasets_collection, name="api-datasets"),
    path("datasets/<int:dataset_id>", files.dataset_retrieve, name="api-dataset"),
    path("merges", steps.merges_collection, name="api-merges"),
    path("merge-searches", steps.merge_searches_collection, name="api-merge-searches"),
    path("merge-searches/<int:job_id>", steps.merge_search_retrieve, name="api-merge-search"),
    path("quantizations", steps.quantizations_collection, name="api-quantizations"),
    path("evaluations", steps.evaluations_collection, name="api-evaluations"),
    path("judged-comparisons", judge.judged_comparisons_collection, name="api-judged-comparisons"),
    path("judged-comparisons/<int:job_id>", judge.judged_comparison_retrieve, name="api-judged-comparison"),
    path("forgetting-checks", judge.forgetting_checks_collection, name="api-forgetting-checks"),
    path("forgetting-checks/<int:job_id>", judge.forgetting_check_retrieve, name="api-forgetting-check"),
    path("datasets/<int:dataset_id>/mapping", dataset_work.dataset_mapping_api, name="api-dataset-mapping"),
    path("datasets/<int:dataset_id>/operations", dataset_work.dataset_operations_api, name="api-dataset-operations"),
    path("datasets/<int:dataset_id>/operations/<int:operation_id>", dataset_work.dataset_operation_api,
         name="api-dataset-operation"),
    path("datasets/<int:dataset_id>/analyses", dataset_work.dataset_analyses_api, name="api-dataset-analyses"),
    path("datasets/<int:dataset_id>/analyses/<int:analysis_id>", dataset_work.dataset_analysis_api,
         name="api-dataset-analysis"),
    path("teams/<str:team>/members", teams.members_collection, name="api-team-members"),
    path("teams/<str:team>/members/<int:user_id>", teams.member_detail, name="api-team-member"),
    path("teams/<str:team>/invitations", teams.invitations_collection, name="api-team-invitations"),
    path("invitations", teams.my_invitations, name="api-invitations"),
    path("invitations/<int:invitation_id>/accept", teams.my_invitation_accept, name="api-invitation-accept"),
    path("invitations/<int:invitation_id>/decline", teams.my_invitation_decline, name="api-invitation-decline"),
    path("openapi.json", files.openapi_json, name="api-openapi"),
    re_path(r"^(?P<rest>.*)$", files.api_not_found, name="api-not-found"),  # last: JSON 404 for the rest
]
