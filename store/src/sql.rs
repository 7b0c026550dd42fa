//! The SQL texts, one file per operation under `store/sql/`.

/// Includes `store/sql/NAME.sql`.
macro_rules! sql {
    ($name:literal) => {
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/sql/", $name, ".sql"))
    };
}
pub(crate) use sql;
