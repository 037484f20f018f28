-- KubeLens storage schema v1 (sqlite). Times are milliseconds since the Unix epoch, line
-- timestamps nanoseconds. Expiry is a column checked on every read plus a purge job.

CREATE TABLE kubelens_sessions (
    subject       TEXT    PRIMARY KEY NOT NULL,
    data          BLOB    NOT NULL,
    version       INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER
);
CREATE INDEX kubelens_sessions_expiry ON kubelens_sessions (expires_at_ms)
    WHERE expires_at_ms IS NOT NULL;

CREATE TABLE kubelens_log_sources (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    namespace        TEXT    NOT NULL,
    pod              TEXT    NOT NULL,
    pod_uid          TEXT    NOT NULL,
    container        TEXT    NOT NULL,
    instance         INTEGER NOT NULL,
    meta             TEXT    NOT NULL,
    created_at_ms    INTEGER NOT NULL,
    terminated_at_ms INTEGER,
    expires_at_ms    INTEGER,
    line_count       INTEGER NOT NULL DEFAULT 0,
    byte_count       INTEGER NOT NULL DEFAULT 0,
    dropped          INTEGER NOT NULL DEFAULT 0,
    UNIQUE (namespace, pod, pod_uid, container, instance)
);
CREATE INDEX kubelens_log_sources_expiry ON kubelens_log_sources (expires_at_ms)
    WHERE expires_at_ms IS NOT NULL;

-- (source_id, position) is the idempotency key: re-appending a position is a no-op.
CREATE TABLE kubelens_log_lines (
    source_id INTEGER NOT NULL REFERENCES kubelens_log_sources (id) ON DELETE CASCADE,
    position  INTEGER NOT NULL,
    ts_ns     INTEGER NOT NULL,
    truncated INTEGER NOT NULL,
    line      BLOB    NOT NULL,
    PRIMARY KEY (source_id, position)
) WITHOUT ROWID;
CREATE INDEX kubelens_log_lines_ts ON kubelens_log_lines (source_id, ts_ns);

-- One row rewritten by every readiness ping: proves the file is still writable (a read-only
-- file or full disk would otherwise only show up on the next real write).
CREATE TABLE kubelens_heartbeat (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    at_ms INTEGER NOT NULL
);
