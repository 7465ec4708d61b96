import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("jobs", "0009_job_devices_and_holds"),
    ]

    operations = [
        migrations.CreateModel(
            name="MergeSearchCandidate",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("index", models.PositiveIntegerField(help_text="0-based, in the order proposed.")),
                ("generation", models.PositiveIntegerField()),
                ("coefficients", models.JSONField(help_text='{coefficient: value}, e.g. {"weight.0": 0.7}.')),
                ("recipe", models.JSONField(help_text="What the candidate merges: method, a weight per source, "
                                                      "settings.")),
                ("score", models.FloatField(blank=True, null=True)),
                ("outcome", models.CharField(blank=True, max_length=10)),
                ("message", models.TextField(blank=True)),
                ("reported", models.BooleanField(default=False,
                                                 help_text="Its candidate event is in the search's events.")),
                ("weights_deleted", models.BooleanField(
                    default=False, help_text="Not the best: its merged model was deleted.")),
                ("evaluate_job", models.ForeignKey(null=True, on_delete=django.db.models.deletion.SET_NULL,
                                                   related_name="+", to="jobs.job")),
                ("merge_job", models.ForeignKey(null=True, on_delete=django.db.models.deletion.SET_NULL,
                                                related_name="+", to="jobs.job")),
                ("search", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE,
                                             related_name="search_candidates", to="jobs.job")),
            ],
            options={
                "ordering": ["search", "index"],
                "constraints": [models.UniqueConstraint(fields=("search", "index"), name="one_candidate_per_index")],
            },
        ),
    ]
