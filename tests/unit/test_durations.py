"""Operation durations (pymongosync.durations): the histograms /metrics shows and the
``Operation duration stats`` figures, per interval, that Mongosync Insights plots."""

from __future__ import annotations

import pytest
from prometheus_client.core import HistogramMetricFamily

from pymongosync.api import duration_families
from pymongosync.durations import BUCKETS, OperationDurations, OperationKind


def test_histogram_buckets_are_cumulative_and_end_with_every_operation() -> None:
    durations = OperationDurations()
    for seconds in (0.0005, 0.001, 0.003, 0.2, 45.0):
        durations.record(OperationKind.CEA_DESTINATION_WRITE, seconds)
    histogram = durations.histogram(OperationKind.CEA_DESTINATION_WRITE)
    buckets = dict(histogram.cumulative())
    assert buckets["0.001"] == 2  # a bound holds the operations that took exactly as long
    assert buckets["0.0025"] == 2 and buckets["0.005"] == 3
    assert buckets["0.25"] == 4 and buckets[str(BUCKETS[-1])] == 4
    assert buckets["+Inf"] == histogram.count == 5
    assert histogram.total == pytest.approx(45.2045)
    assert durations.histogram(OperationKind.CEA_SOURCE_READ).count == 0


def test_recent_figures_cover_the_interval_since_the_last_line() -> None:
    durations = OperationDurations()
    durations.record(OperationKind.COPY_SOURCE_READ, 0.010)
    durations.record(OperationKind.COPY_SOURCE_READ, 0.030)
    durations.record(OperationKind.HOT_DOC_APPLY, 0.5)  # a metric only, not in the line
    assert durations.take_recent() == {"CollectionCopySourceRead": {
        "averageDurationMs": 20.0, "maximumDurationMs": 30.0, "numOperations": 2}}
    assert durations.take_recent() == {}  # nothing since
    durations.record(OperationKind.CEA_SOURCE_READ, 0.004)
    assert durations.take_recent() == {"CEASourceRead": {
        "averageDurationMs": 4.0, "maximumDurationMs": 4.0, "numOperations": 1}}
    # The histograms keep everything since the process started.
    assert durations.histogram(OperationKind.COPY_SOURCE_READ).count == 2


def test_a_failed_operation_is_timed_too() -> None:
    durations = OperationDurations()
    with pytest.raises(RuntimeError), durations.timing(OperationKind.HOT_DOC_REFETCH):
        raise RuntimeError("the source did not answer")
    assert durations.histogram(OperationKind.HOT_DOC_REFETCH).count == 1


def test_metrics_have_one_histogram_per_kind_named_as_mongosync_names_them() -> None:
    durations = OperationDurations()
    durations.record(OperationKind.HOT_DOC_STATES_READ, 0.002)
    families = {family.name: family for family in duration_families(durations)}
    assert set(families) == {
        "mongosync_collection_copy_source_read_op_duration",
        "mongosync_collection_copy_destination_write_op_duration",
        "mongosync_cea_source_read_op_duration", "mongosync_cea_destination_write_op_duration",
        "mongosync_hot_doc_states_read_op_duration", "mongosync_hot_doc_refetch_op_duration",
        "mongosync_hot_doc_apply_op_duration"}
    states = families["mongosync_hot_doc_states_read_op_duration"]
    assert isinstance(states, HistogramMetricFamily)
    samples = {(sample.name, sample.labels.get("le")): sample.value for sample in states.samples}
    assert samples[("mongosync_hot_doc_states_read_op_duration_count", None)] == 1
    assert samples[("mongosync_hot_doc_states_read_op_duration_bucket", "0.001")] == 0
    assert samples[("mongosync_hot_doc_states_read_op_duration_bucket", "0.0025")] == 1
    assert samples[("mongosync_hot_doc_states_read_op_duration_sum", None)] == 0.002
