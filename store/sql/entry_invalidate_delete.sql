-- SELECTOR is replaced by the same condition entry_invalidate_log used.
DELETE FROM entries WHERE SELECTOR
