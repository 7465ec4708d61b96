"""Template tags of the job list: each job paired with its loss sparkline."""

from django import template

from studio.jobs.selectors_charts import job_loss_sparklines

register = template.Library()


@register.simple_tag
def jobs_with_sparklines(jobs) -> list[tuple]:
    """[(job, polyline points or "")] for the listed jobs, read in one query
    (the list view stays as it is: it passes ``jobs`` only)."""
    jobs = list(jobs)
    sparklines = job_loss_sparklines(job_ids=[job.pk for job in jobs])
    return [(job, sparklines.get(job.pk, "")) for job in jobs]


@register.filter
def duration(seconds) -> str:
    """3725.0 -> "1h 02m", 200 -> "3m 20s", 12.4 -> "12s"; "" for None."""
    if seconds is None:
        return ""
    seconds = round(seconds)
    hours, minutes, rest = seconds // 3600, seconds // 60 % 60, seconds % 60
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {rest:02d}s" if minutes else f"{rest}s"
