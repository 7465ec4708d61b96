from django.db import migrations, models
import django.db.models.deletion


class Migration(migrations.Migration):

    dependencies = [
        ('jobs', '0011_job_pool_status'),
    ]

    operations = [
        migrations.AddIndex(
            model_name='job',
            index=models.Index(fields=['status', 'device_pool', 'team', 'owner', 'deletion', 'priority',
                                       'queue_order', 'depends_on', 'progress_total'], name='job_queue_cover'),
        ),
        migrations.AddIndex(
            model_name='job',
            index=models.Index(fields=['team', 'deletion', 'created_at'], name='job_team_list'),
        ),
        migrations.CreateModel(
            name='QueuePool',
            fields=[
                ('pool', models.CharField(max_length=50, primary_key=True, serialize=False)),
                ('version', models.PositiveBigIntegerField(default=0)),
                ('ranked_version', models.PositiveBigIntegerField(default=0)),
                ('basis', models.CharField(blank=True, max_length=100)),
                ('ranked_at', models.DateTimeField(null=True)),
            ],
        ),
        migrations.CreateModel(
            name='QueueTurn',
            fields=[
                ('job', models.OneToOneField(db_constraint=False, on_delete=django.db.models.deletion.CASCADE,
                                             primary_key=True, related_name='queue_turn', serialize=False,
                                             to='jobs.job')),
                ('device_pool', models.CharField(max_length=50)),
                ('turn', models.PositiveIntegerField()),
                ('team_id', models.BigIntegerField()),
                ('owner_id', models.BigIntegerField(null=True)),
                ('priority', models.IntegerField()),
                ('queue_order', models.FloatField()),
                ('waiting', models.PositiveSmallIntegerField(
                    help_text='1: a chain step whose step before has not succeeded.')),
                ('progress_total', models.PositiveBigIntegerField()),
            ],
            options={
                'indexes': [models.Index(fields=['device_pool', 'turn'], name='turn_pool_turn'),
                            models.Index(fields=['device_pool', 'team_id', 'turn'], name='turn_pool_team_turn')],
            },
        ),
    ]
