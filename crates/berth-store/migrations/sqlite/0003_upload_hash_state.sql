-- The hash state of an upload after its first `hash_size` bytes, saved between chunks so
-- that the next chunk can resume hashing in another process (replicas); valid only while
-- `size` = `hash_size`.
ALTER TABLE uploads ADD COLUMN hash_state BLOB;
ALTER TABLE uploads ADD COLUMN hash_size INTEGER;
