import gc
import weakref

from workers.gcfreeze import refreeze


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
