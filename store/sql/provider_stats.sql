SELECT provider, paused_until, tat, waited_ms FROM provider_state ORDER BY provider
