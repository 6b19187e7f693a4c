-- Covers the per-repository push and pull times of a listing (the web UI) without
-- reading manifest bodies.
CREATE INDEX IF NOT EXISTS manifests_times ON manifests(repo, pushed_at, last_pulled);
