from django.db import migrations, models


def count_blocking_rows(apps, schema_editor):
    """Analyses made before the field: count from their findings, as dataset_analysis_save does now (a copy
    of services_work.blocking_row_count: a migration must not change when the code does)."""
    def blocking_row_count(findings):
        return len({row for f in findings if f.get("severity") == "blocking"
                    for row in f.get("all_rows", f["rows"])})

    DatasetAnalysis = apps.get_model("datasets", "DatasetAnalysis")
    for analysis in DatasetAnalysis.objects.exclude(findings=[]).only("pk", "findings").iterator():
        count = blocking_row_count(analysis.findings)
        if count:
            DatasetAnalysis.objects.filter(pk=analysis.pk).update(blocking_rows=count)


class Migration(migrations.Migration):
    dependencies = [("datasets", "0006_analysis_chat_template")]

    operations = [
        migrations.AddField(
            model_name="datasetanalysis", name="blocking_rows",
            field=models.PositiveIntegerField(
                default=0, help_text="Rows the blocking findings list, each counted once (a row can have two "
                                     "problems).")),
        migrations.RunPython(count_blocking_rows, migrations.RunPython.noop),
    ]
