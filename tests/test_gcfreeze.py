import gc
import weakref

from workers.gcfreeze import freeze_new, has_grown, refreeze


class Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the collector frees it


def test_frozen_objects_are_skipped_until_the_next_refreeze():
    node = Node()
    ref = weakref.ref(node)
    try:
        assert refreeze() > 0
        del node
        gc.collect()
        assert ref() is not None, "a frozen cycle is out of the collector's reach"
        refreeze()
        assert ref() is None, "the refresh collects what died while frozen"
    finally:
        gc.unfreeze()


def test_freeze_new_keeps_what_was_frozen_before():
    try:
        refreeze()
        before = gc.get_freeze_count()
        kept = [Node() for _ in range(100)]
        assert freeze_new() >= before + len(kept)
    finally:
        gc.unfreeze()


def test_growth_is_measured_against_what_is_frozen():
    assert has_grown(25_000, 0)
    assert not has_grown(15_000, 700_000), "a few seconds of promotions"
    # The gateways a worker loaded since its last freeze, at 10,000 gateways.
    assert has_grown(60_000, 700_000)
    assert not has_grown(60_000, 5_000_000)
