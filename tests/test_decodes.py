"""A decode group kept as requests join it prices what the worker's loop computes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from scheduler.decodes import DecodeRows, padded_positions

ROWS = st.lists(st.tuples(st.integers(1, 12), st.integers(1, 4000), st.integers(1, 4)),
                min_size=1, max_size=24)


@given(ROWS)
def test_joining_one_by_one_is_the_whole_groups_sum_exactly(rows) -> None:
    group = DecodeRows.of(rows[0])
    for row in rows[1:]:
        group = group.join(row)
    # the worker's order: longest first, requests of equal steps in the order they came
    ordered = sorted(rows, key=lambda r: -r[0])
    assert group.rows == tuple(ordered)
    assert (group.positions, float(group.work)) == padded_positions(ordered)
    assert group.mixed == (len({kv for _, kv, _ in rows}) > 1)


def test_a_join_leaves_the_group_it_joined_as_it_was() -> None:
    group = DecodeRows.of((4, 100, 1)).join((1, 50, 1))
    before = (group.rows, group.positions, group.work, group.mixed)
    group.join((9, 400, 2))
    assert (group.rows, group.positions, group.work, group.mixed) == before
    assert before == (((4, 100, 1), (1, 50, 1)), padded_positions(before[0])[0], 5, True)
