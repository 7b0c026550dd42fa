SELECT paused_until FROM provider_state WHERE provider = $1
