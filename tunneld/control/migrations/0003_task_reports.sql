-- 0003: task reports (what an AI agent says it is doing: `report_task`).
-- Validated by the API before they get here (tunneld/control/_tasks.py); the CHECKs
-- are the last line of defence. Each user keeps at most its newest 1000 reports
-- (pruned on insert by SqliteDatabase.add_task_report).

CREATE TABLE task_reports (
    id             INTEGER PRIMARY KEY,
    user_id        INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,  -- reporter's user
    token_id       TEXT NOT NULL,          -- the token that reported (its id, never the secret)
    reporter_agent TEXT,                   -- the token's agent name; NULL for a client token
    agent          TEXT NOT NULL,          -- whose task: the agent the report is about
    state          TEXT NOT NULL CHECK (state IN ('working', 'complete', 'idle', 'failure')),
    summary        TEXT NOT NULL CHECK (length(summary) BETWEEN 1 AND 160),
    link           TEXT,                   -- http(s) URL or NULL
    created_at     REAL NOT NULL
);
CREATE INDEX task_reports_user ON task_reports(user_id, id);
