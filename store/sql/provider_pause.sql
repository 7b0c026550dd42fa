-- Pauses a provider until $2: no claim before then (paused_until), and its
-- rate budget restarts from then (tat). A pause is only ever extended.
INSERT INTO provider_state (provider, paused_until, tat) VALUES ($1, $2, $2)
ON CONFLICT (provider) DO UPDATE SET
    paused_until = CASE WHEN excluded.paused_until > provider_state.paused_until
                        THEN excluded.paused_until ELSE provider_state.paused_until END,
    tat = CASE WHEN excluded.tat > provider_state.tat THEN excluded.tat ELSE provider_state.tat END
