//! The SQL texts, one file per operation under `store/sql/`; an operation
//! whose dialects differ has one file per backend under `sql/sqlite/` and
//! `sql/postgres/`.

/// `sql!("name")` includes `store/sql/name.sql`; `sql!(backend, "name")`
/// picks `store/sql/<backend>/name.sql`.
macro_rules! sql {
    ($name:literal) => {
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/sql/", $name, ".sql"))
    };
    ($backend:expr, $name:literal) => {
        match $backend {
            crate::Backend::Sqlite => {
                include_str!(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/sql/sqlite/",
                    $name,
                    ".sql"
                ))
            }
            crate::Backend::Postgres => {
                include_str!(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/sql/postgres/",
                    $name,
                    ".sql"
                ))
            }
        }
    };
}
pub(crate) use sql;
