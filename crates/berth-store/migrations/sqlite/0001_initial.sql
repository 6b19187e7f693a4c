-- The schema berth created before versioned migrations. IF NOT EXISTS throughout: a
-- database made by that code already matches it and is recorded as version 1 unchanged.
CREATE TABLE IF NOT EXISTS blobs(
    digest TEXT PRIMARY KEY, size INTEGER NOT NULL, created_at INTEGER NOT NULL,
    last_access INTEGER, verified_at INTEGER);
CREATE TABLE IF NOT EXISTS repositories(
    name TEXT PRIMARY KEY, kind TEXT NOT NULL DEFAULT 'hosted', upstream TEXT,
    created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS repo_blobs(
    repo TEXT NOT NULL, digest TEXT NOT NULL, created_at INTEGER NOT NULL,
    PRIMARY KEY(repo, digest));
CREATE INDEX IF NOT EXISTS repo_blobs_digest ON repo_blobs(digest);
CREATE TABLE IF NOT EXISTS manifests(
    repo TEXT NOT NULL, digest TEXT NOT NULL, media_type TEXT NOT NULL,
    artifact_type TEXT, subject TEXT, annotations TEXT, size INTEGER NOT NULL,
    body BLOB NOT NULL, pushed_at INTEGER NOT NULL, last_pulled INTEGER,
    PRIMARY KEY(repo, digest));
CREATE INDEX IF NOT EXISTS manifests_subject ON manifests(repo, subject) WHERE subject IS NOT NULL;
CREATE TABLE IF NOT EXISTS manifest_refs(
    repo TEXT NOT NULL, parent TEXT NOT NULL, child TEXT NOT NULL, kind TEXT NOT NULL,
    PRIMARY KEY(repo, parent, child, kind));
CREATE INDEX IF NOT EXISTS manifest_refs_child ON manifest_refs(repo, child);
CREATE INDEX IF NOT EXISTS manifest_refs_by_child ON manifest_refs(child);
CREATE TABLE IF NOT EXISTS tags(
    repo TEXT NOT NULL, name TEXT NOT NULL, digest TEXT NOT NULL,
    updated_at INTEGER NOT NULL, upstream_checked_at INTEGER,
    PRIMARY KEY(repo, name));
CREATE INDEX IF NOT EXISTS tags_digest ON tags(repo, digest);
CREATE TABLE IF NOT EXISTS uploads(
    id TEXT PRIMARY KEY, repo TEXT NOT NULL, size INTEGER NOT NULL,
    started_at INTEGER NOT NULL, last_activity INTEGER NOT NULL);
