"""Prometheus metrics of a worker, served by Faust's web server at ``/metrics``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

EVENTS_CONSUMED = Counter("reco_events_consumed", "Records consumed, per topic", ["topic"], registry=REGISTRY)
EVENTS_PRODUCED = Counter("reco_events_produced", "Records produced, per topic", ["topic"], registry=REGISTRY)
DEAD_LETTERS = Counter("reco_dead_letters", "Records sent to dead letters, per source topic and reason",
                       ["topic", "reason"], registry=REGISTRY)
REDELIVERED = Counter("reco_redelivered_records", "Records delivered again within one consumer generation (e.g. "
                      "after a seek back) and dropped by the offset guard before parsing", registry=REGISTRY)
DUPLICATES = Counter("reco_duplicate_events", "Redelivered/duplicate behaviour events skipped (not re-applied)",
                     registry=REGISTRY)
UNKNOWN_IMAGE = Counter("reco_unknown_image_events",
                        "Behaviour events on images not in the index (counted as seen, no taste update)",
                        registry=REGISTRY)
REDIS_WRITES = Counter("reco_redis_writes", "Redis result writes, by outcome (written|stale)", ["outcome"],
                       registry=REGISTRY)
REDIS_RETRIES = Counter("reco_redis_retries", "Redis write attempts that failed and were retried", registry=REGISTRY)
REDIS_REPOPULATED = Counter("reco_redis_repopulated", "Users republished after Redis lost results (flush/restart)",
                            registry=REGISTRY)
REVOKED_SKIPPED = Counter("reco_revoked_skipped", "Buffered records dropped because their partition was revoked "
                          "(reprocessed by the new owner)", registry=REGISTRY)
OFFSET_HOLES = Counter("reco_offset_holes", "Holes in a partition's delivered offsets repaired by seeking back",
                       registry=REGISTRY)
COMMIT_HOLES = Counter("reco_commit_holes", "Holes before a partition's first acked offset read from the log by "
                       "the commit, by verdict: gap (no record there: booked, the commit moves past it), records "
                       "(a record not applied yet: the commit waits), unknown (could not read)", ["verdict"],
                       registry=REGISTRY)
RECOVERY_RESEEKS = Counter("reco_recovery_reseeks", "Changelog partitions table recovery waited on while the Kafka "
                           "client was past them (records fetched and dropped), sought back", registry=REGISTRY)
PUSH_REFRESHES = Counter("reco_push_refreshes", "Recommendation refreshes triggered by new images",
                         registry=REGISTRY)
QUIET_REFRESHES = Counter("reco_quiet_refreshes", "Replayable mode: results refreshed because their partition went "
                          "quiet", registry=REGISTRY)
SHARD_REBUILDS = Counter("reco_shard_rebuilds", "Replayable mode: partition shards rebuilt from the log",
                         registry=REGISTRY)
IMAGE_TO_CATALOG = Histogram(
    "reco_image_to_catalog_seconds", "Upload (new-images record timestamp) to its catalog record being sent",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0), registry=REGISTRY)
IMAGE_SEARCHABLE = Histogram(
    "reco_image_searchable_seconds", "Upload (catalog record timestamp = upload time) to searchable in this "
    "worker's index replica", buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0), registry=REGISTRY)
EVENT_TO_REDIS = Histogram(
    "reco_event_to_redis_seconds", "Time from a behaviour event's Kafka timestamp to its result in Redis",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0), registry=REGISTRY)
LOOP_DELAY = Histogram(
    "reco_event_loop_delay_seconds", "How late the worker's event loop woke a 0.1 s sleep: time the loop was "
    "blocked (long batches, imports, GIL-heavy threads); every batch, /ready and /metrics wait that long",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0), registry=REGISTRY)
BATCH_SIZE = Histogram("reco_batch_size", "Behaviour events per processed batch",
                       buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 5000), registry=REGISTRY)
CONSUMER_LAG = Gauge("reco_consumer_lag", "Worker group lag (end offset - committed), per topic/partition",
                     ["topic", "partition"], registry=REGISTRY)
INDEX_SIZE = Gauge("reco_index_size", "Images in this worker's index replica", registry=REGISTRY)
INDEX_REPLICA_LAG = Gauge("reco_index_replica_lag", "Catalog records not yet applied to this worker's index",
                          registry=REGISTRY)
USER_TABLE_SIZE = Gauge("reco_user_table_size", "Users in this worker's share of the user table", registry=REGISTRY)
LAST_PROGRESS = Gauge("reco_last_progress_timestamp_seconds", "Wall time of the last finished batch",
                      registry=REGISTRY)
