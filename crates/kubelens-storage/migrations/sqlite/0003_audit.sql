-- The stored copy of the audit trail (`audit.store`). `data` is the event's JSON exactly as
-- the API returns it; the other columns exist to filter and page without parsing it.
CREATE TABLE kubelens_audit (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    time_ms   INTEGER NOT NULL,
    audit     TEXT    NOT NULL,
    user_name TEXT,
    namespace TEXT,
    data      TEXT    NOT NULL
);
CREATE INDEX kubelens_audit_time ON kubelens_audit (time_ms);
CREATE INDEX kubelens_audit_user ON kubelens_audit (user_name, id);
CREATE INDEX kubelens_audit_namespace ON kubelens_audit (namespace, id);
