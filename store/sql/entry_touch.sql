UPDATE entries SET accessed_at = $2, access_count = access_count + $3 WHERE key = $1
