-- Stream tickets and stream credentials (only used by several replicas, which sqlite does not
-- serve; the table exists so every backend passes the same conformance suite). `id` is a kind
-- prefix plus the SHA-256 of the secret (never the secret itself).
CREATE TABLE kubelens_credentials (
    id            TEXT    PRIMARY KEY NOT NULL,
    value         BLOB    NOT NULL,
    expires_at_ms INTEGER NOT NULL
);
CREATE INDEX kubelens_credentials_expiry ON kubelens_credentials (expires_at_ms);
