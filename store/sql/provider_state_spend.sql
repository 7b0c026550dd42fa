UPDATE provider_state SET tat = $2, waited_ms = waited_ms + $3 WHERE provider = $1
