from django.db import migrations, models


class Migration(migrations.Migration):
    """Job.kind takes any kind registered in studio.jobs.kinds (dataset work included)."""

    dependencies = [
        ("jobs", "0004_queue"),
    ]

    operations = [
        migrations.AlterField(
            model_name="job",
            name="kind",
            field=models.CharField(db_index=True, default="train", help_text="A name of studio.jobs.kinds.JOB_KINDS.",
                                   max_length=20),
        ),
    ]
