-- Pauses a provider until $2; a pause is only ever extended, never shortened.
INSERT INTO provider_state (provider, paused_until) VALUES ($1, $2)
ON CONFLICT (provider) DO UPDATE SET paused_until =
    CASE WHEN excluded.paused_until > provider_state.paused_until
         THEN excluded.paused_until ELSE provider_state.paused_until END
