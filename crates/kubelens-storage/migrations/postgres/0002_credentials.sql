-- Stream tickets and stream credentials shared by replicas. `id` is a kind prefix plus the
-- SHA-256 of the secret (never the secret itself); `value` a serialized principal.
CREATE TABLE kubelens_credentials (
    id            TEXT   PRIMARY KEY NOT NULL,
    value         BYTEA  NOT NULL,
    expires_at_ms BIGINT NOT NULL
);
CREATE INDEX kubelens_credentials_expiry ON kubelens_credentials (expires_at_ms);
