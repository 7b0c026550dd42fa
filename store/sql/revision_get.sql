SELECT value FROM roadie_revision WHERE id = 1
