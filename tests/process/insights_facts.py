"""What MongoDB's Mongosync Insights reads from a migration: the metadata on the destination, the
log and the metrics log. Facts only, gathered by reading its source (the public repository
mongodb/support-tools, folder migration/mongosync_insights/; ``INSIGHTS`` below abbreviates
that path); none of its code. Each fact names the file it comes from.

Where a fact is not Insights' but a mongosync line of spec §17 that the project's issue asks for
(``Preflight checks completed.``, ``Index creation progress``), it says so.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field

from bson.binary import Binary
from bson.timestamp import Timestamp

INSIGHTS = "mongodb/support-tools: migration/mongosync_insights/"
SPEC = "the project's spec §17 (mongosync's lines; Insights does not parse them)"

# lib/app_config.py: INTERNAL_DB_NAME defaults to mongosync_reserved_for_internal_use;
# resolve_internal_db_name() takes __mdb_internal_mongosync when that database exists (mongosync
# ≥ 1.20), else the default. Either name is found; pymongosync uses the first one.
METADATA_DATABASES = ("__mdb_internal_mongosync", "mongosync_reserved_for_internal_use")
# lib/app_config.py: MONGOSYNC_LOG_PATTERN (^mongosync\.log$ | ^mongosync-...) and
# MONGOSYNC_METRICS_PATTERN (^mongosync_metrics\.log$) decide which parser reads a file.
LOG_FILE_PATTERN = r"^mongosync\.log$|^mongosync-(?!metrics).*"
METRICS_FILE_PATTERN = r"^mongosync_metrics\.log$|^mongosync_metrics-.*"
# lib/logs_metrics.py and lib/otel_metrics.py: every time is read as its first 26 characters
# in this format (microseconds; milliseconds and an offset fail to parse).
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%f"

# lib/logs_metrics.py: the copy's progress, read from the message itself (copied / total).
PARTITIONS_WRITTEN = r"Completed writing (\d+) / (\d+) partitions to destination cluster"

TIMES = (Timestamp, datetime.datetime)
NUMBERS = (int, float)


@dataclass(frozen=True)
class MetadataField:
    """A field of a metadata collection: its dotted path (``[]`` steps into every element of
    an array), the types it may have, the values Insights recognises (None: any)."""

    collection: str
    path: str
    types: tuple[type, ...]
    source: str
    values: frozenset[object] | None = None


@dataclass(frozen=True)
class Query:
    """How Insights finds the documents of a collection."""

    collection: str
    filter: dict[str, object]
    source: str


QUERIES = (
    # lib/live_metadata_status.py fetch_metadata_status(); lib/live_migration_metrics.py
    # gatherMetrics(): the coordinator's resume data, by this _id.
    Query("resumeData", {"_id": "coordinator"}, "lib/live_metadata_status.py"),
    # Same files: globalState.find_one({}) — the collection's one document.
    Query("globalState", {}, "lib/live_metadata_status.py"),
    # lib/live_metadata_status.py: aggregations over every document of partitions.
    Query("partitions", {}, "lib/live_metadata_status.py"),
    # lib/live_metadata_status.py fetch_index_correction_status(): indexCorrection grouped by
    # _id.collUUID; uuidMap looked up by _id (the collection UUID).
    Query("indexCorrection", {}, "lib/live_metadata_status.py"),
    Query("uuidMap", {}, "lib/live_metadata_status.py"),
    # migration/mongosync_metrics/mongosync_plot_metadata.py (Insights' predecessor in the same
    # repository): statistics documents with _id.fieldName "collectionStats".
    Query("statistics", {"_id.fieldName": "collectionStats"},
          "migration/mongosync_metrics/mongosync_plot_metadata.py"),
)

# The syncPhase texts Insights knows: lib/live_metadata_status.py (_BEFORE_CEA_PHASES and the
# phase gating; anything else counts as "during or after change event application").
SYNC_PHASES_BEFORE_CEA = frozenset({"uninitialized", "initializing collections and indexes",
                                    "collection copy",
                                    "waiting to start change event application"})
# Start and finish of a migration: phaseTransitions entries with exactly these phase texts
# (lib/live_metadata_status.py fetch_metadata_status: get_phase_timestamp).
START_PHASE, FINISH_PHASE = "initializing collections and indexes", "commit completed"
# partitions.partitionPhase: the three values merged into its counts
# (lib/live_metadata_status.py _COLLECTION_COPY_PIPELINE, fetch_partition_phase_totals).
PARTITION_PHASES = frozenset({"not started", "in progress", "done"})

METADATA_FIELDS = (
    # -- resumeData: lib/live_metadata_status.py fetch_metadata_status, compute_lag_time_seconds;
    #    lib/live_migration_metrics.py gatherMetrics (state colours) --
    MetadataField("resumeData", "state", (str,), "lib/live_migration_metrics.py",
                  frozenset({"RUNNING", "IDLE", "PAUSED", "COMMITTED"})),
    MetadataField("resumeData", "syncPhase", (str,), "lib/live_metadata_status.py"),
    MetadataField("resumeData", "phaseTransitions[].phase", (str,),
                  "lib/live_metadata_status.py"),
    MetadataField("resumeData", "phaseTransitions[].ts", TIMES,
                  "lib/live_metadata_status.py (_parse_phase_ts)"),
    MetadataField("resumeData", "crudChangeStreamResumeInfo.lastEventTs", TIMES,
                  "lib/live_metadata_status.py (_parse_last_event_ts)"),
    MetadataField("resumeData", "ddlChangeStreamResumeInfo.lastEventTs", TIMES,
                  "lib/live_metadata_status.py (_parse_last_event_ts)"),
    MetadataField("resumeData", "directionMapping.Source", (str,),
                  "lib/live_metadata_status.py (directionMapping source/Source)"),
    MetadataField("resumeData", "directionMapping.Destination", (str,),
                  "lib/live_metadata_status.py (directionMapping destination/Destination)"),
    # -- globalState: lib/live_metadata_status.py fetch_metadata_status and its format_*
    #    helpers; lib/live_migration_metrics.py gatherMetrics --
    MetadataField("globalState", "reversible", (bool,), "lib/live_metadata_status.py"),
    MetadataField("globalState", "writeBlockingMode", (str,), "lib/live_metadata_status.py",
                  frozenset({"destinationOnly", "sourceAndDestination", "none"})),
    MetadataField("globalState", "buildIndexes", (str,), "lib/live_metadata_status.py",
                  frozenset({"afterDataCopy", "beforeDataCopy", "excludeHashed",
                             "excludeHashedAfterCopy", "never"})),
    MetadataField("globalState", "detectRandomId", (bool,), "lib/live_metadata_status.py"),
    MetadataField("globalState", "verificationMode", (str,), "lib/live_metadata_status.py",
                  frozenset({"disabled", "startAtCEA"})),
    MetadataField("globalState", "namespaceFilter", (dict,), "lib/live_metadata_status.py"),
    MetadataField("globalState", "copyInNaturalOrderFilter.selectAll", (bool,),
                  "lib/live_metadata_status.py (parse_copy_in_natural_order_filter)"),
    MetadataField("globalState", "copyInNaturalOrderFilter.dbsAndColls", (dict,),
                  "lib/live_metadata_status.py (parse_copy_in_natural_order_filter)"),
    # -- partitions: lib/live_metadata_status.py pipelines ($concat of the namespace parts,
    #    $sum of the byte counts) --
    MetadataField("partitions", "namespace.db", (str,), "lib/live_metadata_status.py"),
    MetadataField("partitions", "namespace.coll", (str,), "lib/live_metadata_status.py"),
    MetadataField("partitions", "partitionPhase", (str,), "lib/live_metadata_status.py",
                  PARTITION_PHASES),
    MetadataField("partitions", "copiedByteCount", NUMBERS, "lib/live_metadata_status.py"),
    MetadataField("partitions", "totalByteCount", NUMBERS, "lib/live_metadata_status.py"),
    # -- indexCorrection and uuidMap: lib/live_metadata_status.py
    #    (_INDEX_CORRECTION_BY_COLLECTION_PIPELINE, _scan_destination_verified_built_...);
    #    tests/test_index_correction_totals.py shows the document shapes --
    MetadataField("indexCorrection", "_id.dbName", (str,), "lib/live_metadata_status.py"),
    MetadataField("indexCorrection", "_id.collUUID", (Binary,), "lib/live_metadata_status.py"),
    MetadataField("indexCorrection", "_id.indexName", (str,), "lib/live_metadata_status.py"),
    MetadataField("indexCorrection", "shouldCorrectCounter", NUMBERS,
                  "lib/live_metadata_status.py"),
    MetadataField("indexCorrection", "lastCorrectedCounter", NUMBERS,
                  "lib/live_metadata_status.py"),
    MetadataField("uuidMap", "_id", (Binary,), "lib/live_metadata_status.py"),
    MetadataField("uuidMap", "dbName", (str,), "lib/live_metadata_status.py"),
    MetadataField("uuidMap", "dstCollName", (str,), "lib/live_metadata_status.py"),
    MetadataField("uuidMap", "dstDBName", (str,),
                  "migration/mongosync_metrics/mongosync_plot_metadata.py"),
    # -- statistics: migration/mongosync_metrics/mongosync_plot_metadata.py ($lookup from
    #    _id.uuid into uuidMap, completion from the partition counts, bytes) --
    MetadataField("statistics", "_id.uuid", (Binary,),
                  "migration/mongosync_metrics/mongosync_plot_metadata.py"),
    MetadataField("statistics", "numPartitions", NUMBERS,
                  "migration/mongosync_metrics/mongosync_plot_metadata.py"),
    MetadataField("statistics", "numCompletedPartitions", NUMBERS,
                  "migration/mongosync_metrics/mongosync_plot_metadata.py"),
    MetadataField("statistics", "estimatedCopiedBytes", NUMBERS,
                  "migration/mongosync_metrics/mongosync_plot_metadata.py"),
    MetadataField("statistics", "estimatedTotalBytes", NUMBERS,
                  "migration/mongosync_metrics/mongosync_plot_metadata.py"),
)


# lib/logs_metrics.py extract_metrics(): the operations of ``Operation duration stats`` it
# plots, each read as averageDurationMs, maximumDurationMs and numOperations.
OPERATION_DURATION_KINDS = ("CollectionCopySourceRead", "CollectionCopyDestinationWrite",
                            "CEASourceRead", "CEADestinationWrite")


@dataclass(frozen=True)
class LogLine:
    """A log line Insights picks by searching ``message`` (case-insensitive) for
    ``pattern``, and the keys it then reads from the line (dotted for nested ones)."""

    pattern: str
    fields: tuple[str, ...]
    source: str
    # Keys read when present, whose absence Insights tolerates.
    optional: tuple[str, ...] = field(default=())


LOG_LINES = (
    # lib/logs_metrics.py upload_file(): the single pass over the log and what each list
    # feeds; "time" is read from every matched line.
    LogLine("Replication progress", ("time", "totalEventsApplied", "lagTimeSeconds",
                                     "eventApplicationRatePerSecond"),
            "lib/logs_metrics.py", optional=("estimatedOplogTimeRemaining",)),
    LogLine("Version info", ("version", "os", "arch"), "lib/logs_metrics.py"),
    LogLine("Mongosync Options", (), "lib/logs_metrics.py"),
    LogLine("Mongosync HiddenFlags", (), "lib/logs_metrics.py"),
    LogLine("Operation duration stats", ("time", "sourcePingLatencyMs",
                                         "destinationPingLatencyMs"),
            "lib/logs_metrics.py", optional=OPERATION_DURATION_KINDS),
    # The /progress answers: body is a JSON string; progress.collectionCopy's two figures.
    LogLine("sent response", ("time", "body"), "lib/logs_metrics.py"),
    # The phase chart of a standalone mongosync: these messages, with their times.
    LogLine("Starting initializing collections and indexes phase", ("time",),
            "lib/logs_metrics.py"),
    LogLine("Starting initializing partitions phase", ("time",), "lib/logs_metrics.py"),
    LogLine("Starting collection copy phase", ("time",), "lib/logs_metrics.py"),
    LogLine("Starting change event application phase", ("time",), "lib/logs_metrics.py"),
    LogLine("Commit handler called", ("time",), "lib/logs_metrics.py"),
    # The /start body, when uri is /api/v1/start (body: a JSON string).
    LogLine("Received request", ("uri", "body"), "lib/logs_metrics.py"),
    # Copy progress: the two numbers of the message itself.
    LogLine(PARTITIONS_WRITTEN, ("time",), "lib/logs_metrics.py"),
    # The partition summary, per collection.
    LogLine("Creating a single partition for whole collection",
            ("time", "database", "collection", "reason"), "lib/logs_metrics.py"),
    LogLine("Creating initial partitions for non-capped collection",
            ("time", "database", "collection", "expectedSizePerPartition"),
            "lib/logs_metrics.py"),
    LogLine("Pre-sampling information",
            ("database", "collection", "sampler", "collectionDocCount", "numIDsToSample"),
            "lib/logs_metrics.py"),
    LogLine("Persisted a new partition after sampling",
            ("time", "collection", "partition.partition.db"), "lib/logs_metrics.py"),
    # Not Insights': mongosync lines the issue names (spec §17).
    LogLine("Preflight checks completed.", ("time",), SPEC),
    LogLine("Index creation progress", ("time",), SPEC),
)

# lib/logs_metrics.py: from the last "sent response" whose body has "progress", it reads
# progress.collectionCopy.estimatedTotalBytes and .estimatedCopiedBytes without a guard.
SENT_RESPONSE_BODY_FIELDS = ("progress.collectionCopy.estimatedTotalBytes",
                             "progress.collectionCopy.estimatedCopiedBytes")

# lib/otel_metrics.py: each line of the metrics log is {"time", "message"}, the message being
# Prometheus text; mongosync_metrics.json names the series it charts, of which pymongosync
# writes these (the others are mongosync internals pymongosync does not have).
METRICS_LOG_SERIES = ("mongosync_phase", "mongosync_lag_time",
                      "mongosync_collection_copy_copied_bytes_count",
                      "mongosync_collection_copy_copied_docs_count",
                      "mongosync_collection_copy_partitions_completed_count",
                      "mongosync_cea_total_events_applied")
