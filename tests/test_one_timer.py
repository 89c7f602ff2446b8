"""One timer for every measurement (atspeed.timing.Timer): the original API's `beamsd4timing.Timer`,
recommend(), the benchmarks' `compare` and the trie benchmark all use it."""

from __future__ import annotations

import importlib
import time

import atspeed.beamsd4timing
import atspeed.benchmarking
from atspeed.timing import Timer


def test_the_original_api_exports_the_one_timer():
    assert atspeed.beamsd4timing.Timer is Timer and "Timer" in atspeed.beamsd4timing.__all__


def test_recommend_and_the_benchmarks_time_with_it():
    recommend_module = importlib.import_module("atspeed.rec.recommend")  # `atspeed.rec.recommend` is the function
    assert recommend_module.Timer is Timer and atspeed.benchmarking.Timer is Timer


def test_a_timer_for_a_cpu_device_measures_the_block():
    with Timer("cpu") as timer:
        time.sleep(0.01)
    assert 0.01 <= timer.time_cost < 5.0
