SELECT version FROM _sqlx_migrations ORDER BY version
