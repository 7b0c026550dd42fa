UPDATE roadie_revision SET value = $1 WHERE id = 1
