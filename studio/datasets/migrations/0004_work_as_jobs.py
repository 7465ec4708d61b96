"""Dataset analyses and operations run as jobs of the one job system: each
row points at its Job, which holds status, progress and failure. Existing
rows get a Job with what they recorded, so nothing stored is lost."""

import django.db.models.deletion
from django.db import migrations, models

LABELS = {"analyse": "Analyse", "diet": "Dataset step"}


def attach_jobs(apps, schema_editor):
    Job = apps.get_model("jobs", "Job")
    for model_name, kind in (("DatasetAnalysis", "analyse"), ("DatasetOperation", "diet")):
        for row in apps.get_model("datasets", model_name).objects.select_related("dataset"):
            status = row.status if row.status in ("queued", "running", "succeeded", "failed") else "failed"
            if status in ("queued", "running"):  # the old worker task is gone: it will not run now
                status, row.message = "failed", "Not run: the studio was upgraded meanwhile; start it again"
            failed = status == "failed"
            config = ({"max_length": row.max_length, "loss_on_prompt": row.loss_on_prompt} if kind == "analyse"
                      else {"operation": row.operation, "parameters": row.parameters})
            row.job = Job.objects.create(
                team_id=row.dataset.team_id, owner_id=row.created_by_id, kind=kind, status=status,
                name=f"{LABELS[kind]}: {row.dataset.name}"[:200], dataset_id=row.dataset_id,
                base_model_id=row.base_model_id, config=config, failure_kind="user_error" if failed else "",
                failure_message=row.message if failed else "", finished_at=row.finished_at,
                progress_phase=row.phase[:100])
            if kind == "analyse" and not failed:
                row.notice = row.message
            row.save()
    if schema_editor.connection.vendor == "postgresql":
        # The rows above leave foreign-key checks pending until the commit, and Postgres refuses to ALTER a table
        # with pending trigger events (the AlterFields below): run the checks now, then defer them again.
        schema_editor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        schema_editor.execute("SET CONSTRAINTS ALL DEFERRED")


class Migration(migrations.Migration):
    dependencies = [
        ("datasets", "0003_versions_analysis_operations"),
        ("jobs", "0005_kinds_table"),
    ]

    operations = [
        migrations.AddField(
            model_name="datasetanalysis", name="job",
            field=models.OneToOneField(null=True, on_delete=django.db.models.deletion.CASCADE,
                                       related_name="%(class)s", to="jobs.job")),
        migrations.AddField(
            model_name="datasetoperation", name="job",
            field=models.OneToOneField(null=True, on_delete=django.db.models.deletion.CASCADE,
                                       related_name="%(class)s", to="jobs.job")),
        migrations.AddField(
            model_name="datasetanalysis", name="notice",
            field=models.TextField(blank=True, help_text="What a finished analysis could not show, and why.")),
        migrations.RunPython(attach_jobs, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="datasetanalysis", name="job",
            field=models.OneToOneField(on_delete=django.db.models.deletion.CASCADE,
                                       related_name="%(class)s", to="jobs.job")),
        migrations.AlterField(
            model_name="datasetoperation", name="job",
            field=models.OneToOneField(on_delete=django.db.models.deletion.CASCADE,
                                       related_name="%(class)s", to="jobs.job")),
    ] + [
        migrations.RemoveField(model_name=model, name=field)
        for model in ("datasetanalysis", "datasetoperation")
        for field in ("status", "phase", "progress_done", "progress_total", "message", "finished_at")
    ]
