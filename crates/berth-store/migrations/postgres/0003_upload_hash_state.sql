-- The hash state of an upload after its first `hash_size` bytes, saved between chunks so
-- that the next chunk can resume hashing on another replica; valid only while
-- `size` = `hash_size`.
ALTER TABLE uploads ADD COLUMN IF NOT EXISTS hash_state BYTEA;
ALTER TABLE uploads ADD COLUMN IF NOT EXISTS hash_size BIGINT;
