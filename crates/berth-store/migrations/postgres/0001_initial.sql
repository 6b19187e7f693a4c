-- The same tables as migrations/sqlite/0001_initial.sql. Names and digests compare
-- byte by byte (COLLATE "C"), as in SQLite, so pagination (`name > last ORDER BY name`)
-- gives the same pages whatever the database's locale. `tags.seq` stands in for
-- SQLite's rowid: the order tags were first created, kept by an upsert.
CREATE TABLE blobs(
    digest TEXT COLLATE "C" PRIMARY KEY, size BIGINT NOT NULL, created_at BIGINT NOT NULL,
    last_access BIGINT, verified_at BIGINT);
CREATE TABLE repositories(
    name TEXT COLLATE "C" PRIMARY KEY, kind TEXT NOT NULL DEFAULT 'hosted', upstream TEXT,
    created_at BIGINT NOT NULL);
CREATE TABLE repo_blobs(
    repo TEXT COLLATE "C" NOT NULL, digest TEXT COLLATE "C" NOT NULL, created_at BIGINT NOT NULL,
    PRIMARY KEY(repo, digest));
CREATE INDEX repo_blobs_digest ON repo_blobs(digest);
CREATE TABLE manifests(
    repo TEXT COLLATE "C" NOT NULL, digest TEXT COLLATE "C" NOT NULL, media_type TEXT NOT NULL,
    artifact_type TEXT, subject TEXT COLLATE "C", annotations TEXT, size BIGINT NOT NULL,
    body BYTEA NOT NULL, pushed_at BIGINT NOT NULL, last_pulled BIGINT,
    PRIMARY KEY(repo, digest));
CREATE INDEX manifests_subject ON manifests(repo, subject) WHERE subject IS NOT NULL;
CREATE TABLE manifest_refs(
    repo TEXT COLLATE "C" NOT NULL, parent TEXT COLLATE "C" NOT NULL,
    child TEXT COLLATE "C" NOT NULL, kind TEXT NOT NULL,
    PRIMARY KEY(repo, parent, child, kind));
CREATE INDEX manifest_refs_child ON manifest_refs(repo, child);
CREATE INDEX manifest_refs_by_child ON manifest_refs(child);
CREATE TABLE tags(
    repo TEXT COLLATE "C" NOT NULL, name TEXT COLLATE "C" NOT NULL, digest TEXT COLLATE "C" NOT NULL,
    updated_at BIGINT NOT NULL, upstream_checked_at BIGINT,
    seq BIGINT GENERATED ALWAYS AS IDENTITY,
    PRIMARY KEY(repo, name));
CREATE INDEX tags_digest ON tags(repo, digest);
CREATE TABLE uploads(
    id TEXT COLLATE "C" PRIMARY KEY, repo TEXT COLLATE "C" NOT NULL, size BIGINT NOT NULL,
    started_at BIGINT NOT NULL, last_activity BIGINT NOT NULL);
