-- Postgres is the source of truth for consumer progress: each batch writes the partition's next
-- offset in the same transaction as its rows. Not tenant-owned (no tenant data), so no RLS.
CREATE TABLE consumer_offsets (
    consumer_group text   NOT NULL,
    topic          text   NOT NULL,
    partition      int    NOT NULL,
    next_offset    bigint NOT NULL CHECK (next_offset >= 0),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);

GRANT SELECT, INSERT, UPDATE ON consumer_offsets TO tenantstream_worker;
