"""What every ASGI process (gateway, web) does to itself when it starts."""

from __future__ import annotations

import gc

from django.conf import settings


def test_an_asgi_process_freezes_what_it_loaded_and_collects_young_objects_less_often():
    import tesseract_web.asgi  # noqa: F401  (the process's entry point)

    assert settings.TESSERACT_GC_FREEZE
    assert gc.get_freeze_count() > 10_000  # Django and the apps, out of the collector's sight
    assert gc.get_threshold() == settings.TESSERACT_GC_THRESHOLDS == (10_000, 20, 20)


def test_the_collector_still_frees_cycles_made_after_start_up():
    import tesseract_web.asgi  # noqa: F401

    class Node:
        pass

    a, b = Node(), Node()
    a.other, b.other = b, a
    del a, b
    assert gc.collect() >= 2  # the two nodes (and their dicts)
