"""A kind of job that exists only in the tests: the whole of what a new kind
needs on the worker side (one function), registered with one line in
test_job_kinds.py."""

from tuning.events import LogEvent, ProgressEvent


def run_countdown(job, sink) -> tuple[str, str]:
    """Counts down from the job's config["start"], one progress event a number."""
    start = job.config["start"]
    for done in range(1, start + 1):
        if sink.should_stop():
            return "cancelled", f"Stopped at {start - done}"
        sink.emit(ProgressEvent(phase="counting down", done=done, total=start, unit="numbers"))
    sink.emit(LogEvent(message="lift-off"))
    return "succeeded", f"Counted down from {start}"
