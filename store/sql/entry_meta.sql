-- Read under the revision lock, so it cannot change before the write.
SELECT revision, confidence FROM entries WHERE key = $1
