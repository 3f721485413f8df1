"""System metrics sampled where a trial runs, with MLflow's own monitors and names."""

import time

from ffdi_tune.tracking import SystemSampler, system_metric_rows


def test_samples_come_at_once_and_then_every_interval_under_mlflows_names():
    with SystemSampler(interval_s=0.05) as sampler:
        time.sleep(0.3)
        first = sampler.drain()
        time.sleep(0.15)
        later = sampler.drain()
    assert len(first) >= 3 and later  # the first at once, then one per interval
    times = [t for t, _ in first + later]
    assert times == sorted(times) and abs(times[0] / 1000 - time.time()) < 60
    for _, values in first:
        assert 0 <= values["system/cpu_utilization_percentage"] <= 100 * 64
        assert values["system/system_memory_usage_megabytes"] > 0
        assert (
            "system/disk_usage_megabytes" in values and "system/network_receive_megabytes" in values
        )


def test_stopping_ends_the_thread_and_a_report_without_samples_has_none():
    with SystemSampler(interval_s=30) as sampler:
        pass  # left at once: the thread is not kept waiting out its interval
    assert not sampler._thread.is_alive()
    assert len(sampler.drain()) == 1
    assert system_metric_rows({"epoch": 1}) == []
    rows = system_metric_rows({"system_metrics": [[1000, {"system/a": 1}]]})
    assert rows == [(1000, {"system/a": 1})]
