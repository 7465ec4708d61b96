"""The compare page: 2 to 8 jobs' loss curves on one chart, their final
figures, their benchmark scores beside the base's, and the configuration keys where they differ."""

from django.http import Http404
from django.shortcuts import render
from django.urls import reverse

from studio.jobs.selectors import job_list_for_user
from studio.jobs.selectors_charts import compare_ids_parse, config_diff, job_compare_curves
from studio.jobs.selectors_scores import compare_harness_rows, harness_for_compared

# One colour per compared job, in the chart and beside its row in the tables.
COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"]


def job_compare(request):
    ids, message = compare_ids_parse(request.GET.getlist("ids"))
    if message:  # the page itself, with the reason and a way back, not an error page
        return render(request, "jobs/compare.html", {"message": message}, status=400)
    found = job_list_for_user(user=request.user).in_bulk(ids)
    if len(found) != len(ids):
        raise Http404  # another team's job reads the same as a job that does not exist
    jobs = [found[job_id] for job_id in ids]
    curves = [{**curve, "color": color} for curve, color in zip(job_compare_curves(jobs=jobs), COLORS)]
    outputs = [artifact for job in jobs if (artifact := job.artifacts.order_by("-created_at").first())]
    judge_link = (f"{reverse('job-new-judge')}?a={outputs[0].pk}&b={outputs[1].pk}" if len(outputs) >= 2 else "")
    harness = harness_for_compared(jobs)
    return render(request, "jobs/compare.html", {
        "jobs": jobs, "curves": curves, "diff": config_diff([job.config for job in jobs]),
        "judge_link": judge_link, "judge_pair": outputs[:2],
        "harness": harness, "harness_rows": compare_harness_rows(harness)})
