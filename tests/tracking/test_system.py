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
    rows = system_metric_rows({"system_metrics": '[[1000, {"system/a": 1}]]'})
    assert rows == [(1000, {"system/a": 1})]


def test_a_reports_samples_travel_as_text_that_tunes_loggers_keep_as_it_is(tmp_path):
    with SystemSampler(interval_s=30) as sampler:
        pass
    entry = sampler.report_entry()
    assert isinstance(entry["system_metrics"], str)
    ((time_ms, values),) = system_metric_rows(entry)
    assert time_ms > 0 and "system/cpu_utilization_percentage" in values
    assert sampler.report_entry() == {"system_metrics": "[]"}  # drained
    # Tune's TensorBoard logger takes the report without a word (a list made it warn)
    from ray.tune.logger import TBXLoggerCallback

    class Trial:  # what the logger reads of a trial
        local_path = str(tmp_path)

        def init_local_path(self) -> None:
            pass

    import logging

    from ray.util.debug import reset_log_once

    said = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())
    tbx = logging.getLogger("ray.tune.logger.tensorboardx")
    tbx.addHandler(handler)
    try:
        for sent in ({"system_metrics": [[1, {"system/a": 1.0}]]}, entry):
            said.clear()
            reset_log_once("invalid_tbx_value")
            report = {"training_iteration": 1, "val_auc": 0.5, **sent}
            TBXLoggerCallback().log_trial_result(1, Trial(), report)
            warned = any("invalid value" in x for x in said)
            assert warned == isinstance(sent["system_metrics"], list)
    finally:
        tbx.removeHandler(handler)
