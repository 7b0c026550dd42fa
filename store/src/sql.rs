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

/// The most parameters one statement binds (SQLite allows 32 766).
pub(crate) const MAX_PARAMS: usize = 30_000;

/// `template` (a `sql/` text written for many rows) with its `{rows}` marker
/// replaced by `rows` groups of `width` placeholders numbered from `$1`:
/// `($1, $2), ($3, $4)`.
pub(crate) fn with_rows(template: &str, rows: usize, width: usize) -> String {
    with_rows_after(template, 0, rows, width)
}

/// As [`with_rows`], for a text whose first `fixed` placeholders (`$1` to
/// `$fixed`) are its own: the groups are numbered from `$fixed + 1`.
pub(crate) fn with_rows_after(template: &str, fixed: usize, rows: usize, width: usize) -> String {
    template.replace("{rows}", &groups(fixed, rows, width))
}

/// `rows` groups of `width` placeholders numbered from `$fixed + 1`:
/// `($1, $2), ($3, $4)`.
fn groups(fixed: usize, rows: usize, width: usize) -> String {
    let mut groups = String::with_capacity(rows * width * 5);
    for row in 0..rows {
        groups.push_str(if row == 0 { "(" } else { ", (" });
        for column in 0..width {
            if column > 0 {
                groups.push_str(", ");
            }
            groups.push('$');
            groups.push_str(&(fixed + row * width + column + 1).to_string());
        }
        groups.push(')');
    }
    groups
}
