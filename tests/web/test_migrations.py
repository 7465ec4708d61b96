"""Upgrading a studio whose dataset analyses and operations predate the one
job system: each row gets a Job carrying what it recorded, nothing is lost."""

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE = [("datasets", "0003_versions_analysis_operations"), ("jobs", "0004_queue"), ("catalog", "0002_upstream_id")]
AFTER = [("datasets", "0004_work_as_jobs")]


@pytest.mark.django_db(transaction=True)
def test_work_rows_from_before_the_job_system_get_their_jobs():
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    old = executor.loader.project_state(BEFORE).apps
    team = old.get_model("accounts", "Team").objects.create(name="T", slug="t")
    user = old.get_model("auth", "User").objects.create(username="u")
    model = old.get_model("catalog", "BaseModel").objects.create(name="m", source="local", ref="/m")
    dataset = old.get_model("datasets", "Dataset").objects.create(
        team=team, created_by=user, name="qa", file="datasets/qa.jsonl", format="jsonl", row_count=2, sha256="0" * 64,
        size_bytes=10)
    analyses = old.get_model("datasets", "DatasetAnalysis").objects
    done = analyses.create(dataset=dataset, base_model=model, max_length=64, status="succeeded", created_by=user,
                           message="chat data only", findings=[{"code": "exact_duplicates"}])
    broken = old.get_model("datasets", "DatasetOperation").objects.create(
        dataset=dataset, operation="dedupe", status="failed", message="row 3: empty", created_by=user)
    waiting = analyses.create(dataset=dataset, base_model=model, max_length=64, status="queued", created_by=user)

    executor.loader.build_graph()
    executor.migrate(AFTER)
    new = executor.loader.project_state(AFTER).apps
    analysis = new.get_model("datasets", "DatasetAnalysis").objects.select_related("job").get(pk=done.pk)
    assert (analysis.job.kind, analysis.job.status, analysis.notice) == ("analyse", "succeeded", "chat data only")
    assert analysis.findings == [{"code": "exact_duplicates"}] and analysis.job.team_id == team.pk
    operation = new.get_model("datasets", "DatasetOperation").objects.select_related("job").get(pk=broken.pk)
    assert (operation.job.kind, operation.job.status, operation.job.failure_message) == ("diet", "failed",
                                                                                         "row 3: empty")
    # Work queued for the old task would never run now: it says so instead of waiting forever.
    stale = new.get_model("datasets", "DatasetAnalysis").objects.select_related("job").get(pk=waiting.pk)
    assert stale.job.status == "failed" and "start it again" in stale.job.failure_message

    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())  # back to the latest, for the tests after this one
