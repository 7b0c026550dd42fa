DELETE FROM snapshots WHERE name = $1
