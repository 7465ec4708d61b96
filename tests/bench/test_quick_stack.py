"""The stack bench scripts at their quick sizes (tests/bench/quick.py)."""

import pytest

from tests.bench.quick import GROUPS, check_quick


@pytest.mark.parametrize("name", GROUPS["stack"])
def test_the_script_runs_and_reports_each_row(name):
    check_quick(name)
