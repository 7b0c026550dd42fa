-- Serialises claims for one provider across every worker on every host.
SELECT paused_until, tat FROM provider_state WHERE provider = $1 FOR UPDATE
