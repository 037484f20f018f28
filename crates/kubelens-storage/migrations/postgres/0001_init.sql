-- KubeLens storage schema v1 (PostgreSQL). Times are milliseconds since the Unix epoch, line
-- timestamps nanoseconds. Expiry is a column checked on every read plus a purge job.

CREATE TABLE kubelens_sessions (
    subject       TEXT    PRIMARY KEY NOT NULL,
    data          BYTEA   NOT NULL,
    version       BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT
);
CREATE INDEX kubelens_sessions_expiry ON kubelens_sessions (expires_at_ms)
    WHERE expires_at_ms IS NOT NULL;

CREATE TABLE kubelens_log_sources (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    namespace        TEXT    NOT NULL,
    pod              TEXT    NOT NULL,
    pod_uid          TEXT    NOT NULL,
    container        TEXT    NOT NULL,
    instance         BIGINT NOT NULL,
    meta             TEXT    NOT NULL,
    created_at_ms    BIGINT NOT NULL,
    terminated_at_ms BIGINT,
    expires_at_ms    BIGINT,
    line_count       BIGINT NOT NULL DEFAULT 0,
    byte_count       BIGINT NOT NULL DEFAULT 0,
    dropped          BIGINT NOT NULL DEFAULT 0,
    UNIQUE (namespace, pod, pod_uid, container, instance)
);
CREATE INDEX kubelens_log_sources_expiry ON kubelens_log_sources (expires_at_ms)
    WHERE expires_at_ms IS NOT NULL;

-- (source_id, position) is the idempotency key: re-appending a position is a no-op.
CREATE TABLE kubelens_log_lines (
    source_id BIGINT NOT NULL REFERENCES kubelens_log_sources (id) ON DELETE CASCADE,
    position  BIGINT NOT NULL,
    ts_ns     BIGINT NOT NULL,
    truncated BOOLEAN NOT NULL,
    line      BYTEA   NOT NULL,
    PRIMARY KEY (source_id, position)
);
CREATE INDEX kubelens_log_lines_ts ON kubelens_log_lines (source_id, ts_ns);
