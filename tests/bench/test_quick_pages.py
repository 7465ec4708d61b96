"""The pages bench scripts at their quick sizes (tests/bench/quick.py)."""

import pytest

from tests.bench.quick import GROUPS, check_quick


@pytest.mark.parametrize("name", GROUPS["pages"])
def test_the_script_runs_and_reports_each_row(name):
    check_quick(name)


def test_every_bench_with_a_quick_size_is_in_a_group():
    from tests.bench.quick import run_all_module

    quick = {bench.name for bench in run_all_module().BENCHES if bench.quick is not None}
    assert quick == {name for names in GROUPS.values() for name in names}
