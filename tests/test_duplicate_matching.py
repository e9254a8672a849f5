"""The fault suite counts duplicates at the device by matching each request to the slot it
was for (`tests.faults.harness.second_polls`): pure logic, so tested by cases."""

from __future__ import annotations

from polling.schedule import Grid
from tests.faults.harness import second_polls

GRID = Grid(0, 1000)
RECORDED = {0, 1000, 2000, 3000}


def test_one_request_per_slot_is_no_duplicate():
    assert second_polls([5, 1003, 2010, 3002], GRID, RECORDED) == []


def test_a_late_request_belongs_to_the_slot_before_when_that_one_has_none():
    # slot 1000's poll began in time but reached the device 20 ms into slot 2000
    assert second_polls([5, 2020, 2050, 3002], GRID, RECORDED) == []


def test_two_requests_in_one_slot_are_a_duplicate():
    assert second_polls([5, 1003, 1500, 2010], GRID, RECORDED) == [1000]


def test_a_duplicate_right_after_the_first_slot_is_not_hidden_by_a_shift():
    # The first request is early in the first recorded slot; nothing before it was
    # recorded, so it cannot be taken for a late poll of slot -1000.
    assert second_polls([5, 1004, 1600, 2004], GRID, RECORDED) == [1000]


def test_requests_a_few_ms_early_by_the_device_clock_still_match():
    assert second_polls([-2, 998, 1999, 2997], GRID, RECORDED) == []
