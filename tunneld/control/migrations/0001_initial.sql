-- 0001: users, tokens, nodes, tunnels, grants.
-- Times are seconds since the Unix epoch (REAL). Applied once, in a transaction;
-- the version is recorded in schema_migrations by the migration runner.

CREATE TABLE users (
    id            INTEGER PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    password_hash TEXT,                    -- argon2id (libsodium string), NULL = no password
    created_at    REAL NOT NULL
);

CREATE TABLE tokens (
    id           TEXT PRIMARY KEY,         -- public prefix, shown by `token list`
    user_id      INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    agent        TEXT,                     -- NULL: a client token; else the one agent it may be
    secret_hash  BLOB NOT NULL,            -- BLAKE2b-256 of the whole token string
    created_at   REAL NOT NULL,
    expires_at   REAL,                     -- NULL: never
    revoked_at   REAL,
    last_used_at REAL
);
CREATE INDEX tokens_user ON tokens(user_id);

CREATE TABLE nodes (
    id         TEXT PRIMARY KEY,           -- derived by the coordinator from the token
    user_id    INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    kind       TEXT NOT NULL CHECK (kind IN ('client', 'agent')),
    name       TEXT NOT NULL,
    node_key   BLOB NOT NULL,
    endpoints  TEXT NOT NULL DEFAULT '[]', -- JSON list of "ip:port"
    home_relay TEXT,                       -- JSON {"region", "url"} or NULL
    as_of      REAL NOT NULL,
    last_seen  REAL NOT NULL,
    online     INTEGER NOT NULL DEFAULT 0,
    token_id   TEXT
);
CREATE INDEX nodes_key ON nodes(node_key);
CREATE INDEX nodes_owner_name ON nodes(user_id, kind, name);

CREATE TABLE tunnels (
    src_node_id TEXT NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
    dst_node_id TEXT NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
    created_at  REAL NOT NULL,
    PRIMARY KEY (src_node_id, dst_node_id)
);

-- ACL extensions: grantee may reach agent_name ('*' = every agent) of agent_owner.
CREATE TABLE grants (
    id            INTEGER PRIMARY KEY,
    grantee_id    INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    owner_id      INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    agent_name    TEXT NOT NULL,
    created_at    REAL NOT NULL,
    UNIQUE (grantee_id, owner_id, agent_name)
);
