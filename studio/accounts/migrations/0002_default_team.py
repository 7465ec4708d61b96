"""Every piece of work belongs to a team from the start: create the default one."""

from django.db import migrations


def create_default_team(apps, schema_editor):
    Team = apps.get_model("accounts", "Team")
    Team.objects.get_or_create(slug="default", defaults={"name": "Default team"})


class Migration(migrations.Migration):
    dependencies = [("accounts", "0001_initial")]
    operations = [migrations.RunPython(create_default_team, migrations.RunPython.noop)]
