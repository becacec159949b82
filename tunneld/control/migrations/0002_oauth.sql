-- 0002: the OAuth 2.1 authorization server and browser login sessions.
-- Every secret is stored only as a BLAKE2b-256 hash (personalised per kind): session
-- ids, client secrets, authorization codes, access and refresh tokens, and `state`.

-- Browser login sessions (the cookie holds the random id; only its hash is here).
CREATE TABLE browser_sessions (
    id_hash    BLOB PRIMARY KEY,
    user_id    INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    revoked_at REAL
);
CREATE INDEX browser_sessions_user ON browser_sessions(user_id);

CREATE TABLE oauth_clients (
    id            TEXT PRIMARY KEY,           -- client_id, public
    secret_hash   BLOB,                       -- NULL: a public client (auth method none)
    name          TEXT NOT NULL,
    redirect_uris TEXT NOT NULL,              -- JSON list, matched exactly
    auth_method   TEXT NOT NULL CHECK (auth_method IN
                    ('none', 'client_secret_basic', 'client_secret_post')),
    scope         TEXT NOT NULL,              -- space-separated scopes it may be granted
    introspect    INTEGER NOT NULL DEFAULT 0, -- 1: may call /oauth2/introspect
    origin        TEXT NOT NULL CHECK (origin IN ('cli', 'dynamic')),
    created_at    REAL NOT NULL
);

-- A family is everything one authorization code led to: its access tokens and the
-- chain of rotated refresh tokens. Replaying the code or a rotated refresh token
-- revokes the whole family (RFC 9700 section 4.14.2, OAuth 2.1 section 4.1.3).
CREATE TABLE oauth_codes (
    code_hash      BLOB PRIMARY KEY,
    family         TEXT NOT NULL,
    client_id      TEXT NOT NULL REFERENCES oauth_clients(id) ON DELETE CASCADE,
    user_id        INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    redirect_uri   TEXT NOT NULL,
    scope          TEXT NOT NULL,
    resource       TEXT,                      -- RFC 8707; becomes the tokens' audience
    code_challenge TEXT NOT NULL,             -- S256 only
    state_hash     BLOB,
    created_at     REAL NOT NULL,
    expires_at     REAL NOT NULL,
    used_at        REAL
);

CREATE TABLE oauth_tokens (
    token_hash BLOB PRIMARY KEY,
    kind       TEXT NOT NULL CHECK (kind IN ('access', 'refresh')),
    family     TEXT NOT NULL,
    client_id  TEXT NOT NULL REFERENCES oauth_clients(id) ON DELETE CASCADE,
    user_id    INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    scope      TEXT NOT NULL,
    audience   TEXT,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    revoked_at REAL,
    rotated_at REAL                           -- refresh tokens: when it was exchanged
);
CREATE INDEX oauth_tokens_family ON oauth_tokens(family);
CREATE INDEX oauth_tokens_client ON oauth_tokens(client_id);
