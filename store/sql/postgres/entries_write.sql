-- A batch's rows in one statement on Postgres, of one text whatever the
-- batch's size, so each connection prepares it once and planning it costs
-- little: the rows come as JSON ($1, the last write of each key, in key
-- order), their values as one bytea ($2, each row naming its slice), and
-- the change rows as JSON ($3, one per landed write). It writes the
-- revision counter (`counter`), the rows (`entry_upsert`, reading
-- `input`), the old tags of the keys written that their new tags no longer
-- name, the new tags, and the change rows. The sub-statements see one
-- snapshot and touch disjoint rows: the tags that go are never the ones
-- that come. SQLite runs the same steps one by one, as lists of
-- placeholders.
--
-- `counter` yields the base the rows' revisions are added to. Under the
-- revision lock (taken by an earlier statement) it sets the counter to the
-- batch's last revision ($4) and yields 0: the rows carry their revisions.
-- A batch of unconditional writes takes the lock here instead, one round
-- trip less: the counter moves by the batch's count ($4), and the rows
-- carry 1, 2, ... Every other sub-statement reads `counter` before it
-- writes a row, so the lock is always the statement's first, as in every
-- other writer (no two writers wait on each other in a circle). A worker's
-- finish puts its job rows before it, as every finish does: the marker
-- after WITH is `jobs_end_gate.sql` or nothing, the marker after `logged`
-- adds the finish's change notification (its last revision, sent at the
-- commit, as the committer's notifier would send it one statement later)
-- or nothing, and the marker after the last FROM joins in both
-- notifications or is empty. A `counter` that yields
-- no row (the gate closed) writes nothing.
WITH {ending}counter AS (
{counter}
), input AS (
    -- The columns of `entry_upsert`, in its order.
    SELECT r.key, substring($2::bytea FROM r.value_at + 1 FOR r.value_len),
           r.media_type, r.policy, r.tags, r.confidence, r.fingerprint,
           r.metadata, r.negative, r.created_at, r.updated_at, r.expires_at,
           (SELECT base FROM counter) + r.revision, r.provider,
           r.upstream_status, r.etag, r.last_modified, r.size_bytes,
           r.encoding, r.raw_bytes, r.accessed_at, r.access_count
    FROM json_to_recordset($1::json) AS r(
        key text, value_at int, value_len int, media_type text, policy text,
        tags text, confidence bigint, fingerprint text, metadata text,
        negative boolean, created_at bigint, updated_at bigint,
        expires_at bigint, revision bigint, provider text,
        upstream_status bigint, etag text, last_modified text,
        size_bytes bigint, encoding text, raw_bytes bigint,
        accessed_at bigint, access_count bigint
    )
    WHERE EXISTS (SELECT 1 FROM counter)
), upserted AS (
{upsert}
RETURNING key, tags, created_at
), tags_gone AS (
    -- The keys as one array, not a join: the planner cannot count the
    -- rows a JSON array holds (it takes 100), and a join planned for 100
    -- keys scans every tag of every entry; an array of keys is looked up
    -- in the index.
    DELETE FROM entry_tags t
    WHERE t.key = ANY (ARRAY(SELECT key FROM upserted))
      AND NOT EXISTS (
          SELECT 1 FROM upserted u, json_array_elements_text(u.tags::json) AS kept
          WHERE u.key = t.key AND kept = t.tag
      )
), tags_added AS (
    -- A tag named twice is skipped by ON CONFLICT, not by DISTINCT: the
    -- planner takes the JSON to hold 100 rows of 100 tags, and a DISTINCT
    -- built a 400 kB hash table for them in every batch, tags or none.
    INSERT INTO entry_tags (tag, key)
    SELECT tag, i.key
    FROM input i, json_array_elements_text(i.tags::json) AS tag
    WHERE EXISTS (SELECT 1 FROM counter)
    ON CONFLICT DO NOTHING
), logged AS (
    INSERT INTO changes (revision, kind, key, policy, tags, provider, at)
    SELECT (SELECT base FROM counter) + c.revision, c.kind, c.key, c.policy,
           c.tags, c.provider, c.at
    FROM json_to_recordset($3::json) AS c(
        revision bigint, kind text, key text, policy text, tags text,
        provider text, at bigint
    )
    WHERE EXISTS (SELECT 1 FROM counter)
){changed}
-- One row per entry written: the base and the row's created_at.
SELECT counter.base, upserted.key, upserted.created_at FROM counter, upserted{announced}
