-- Spends $4 requests of the provider's budget at $2 (`rate::budget_sql`)
-- and adds the claimed jobs' wait ($3), in the transaction that locked the
-- row.
UPDATE provider_state SET tat = {spend}, waited_ms = waited_ms + $3 WHERE provider = $1
