from django.contrib import admin

from studio.jobs.models import TeamQuota


@admin.register(TeamQuota)
class TeamQuotaAdmin(admin.ModelAdmin):
    """Quotas are set by the instance's staff; the queue page shows their effect."""

    list_display = ("team", "max_running_jobs", "gpu_hours_per_month", "storage_gb")
