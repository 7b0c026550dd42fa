//! The SQL texts, one file per operation under `store/sql/`; an operation
//! whose dialects differ has one file per backend under `sql/sqlite/` and
//! `sql/postgres/`.

use crate::Backend;

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

/// `template` (a `sql/` text written for many rows, with no placeholder of
/// its own) with its `{rows}` marker replaced by `rows` groups of `width`
/// placeholders: `($1, $2), ($3, $4)` on Postgres, `(?, ?), (?, ?)` on
/// SQLite. SQLite finds a numbered placeholder's slot by walking the list of
/// the statement's names, when it parses and again when each value is
/// bound: n numbered placeholders cost n² steps, a third of the SQLite
/// connection's time in a batch of 64 Puts. Anonymous ones are numbered in
/// the order they appear, which is the order of the groups.
pub(crate) fn with_rows(backend: Backend, template: &str, rows: usize, width: usize) -> String {
    match backend {
        Backend::Postgres => with_rows_after(template, 0, rows, width),
        Backend::Sqlite => template.replace("{rows}", &anonymous_groups(rows, width)),
    }
}

/// As [`with_rows`], for a text whose first `fixed` placeholders (`$1` to
/// `$fixed`) are its own: the groups are numbered from `$fixed + 1`.
pub(crate) fn with_rows_after(template: &str, fixed: usize, rows: usize, width: usize) -> String {
    template.replace("{rows}", &groups(fixed, rows, width))
}

/// `rows` groups of `width` anonymous placeholders: `(?, ?), (?, ?)`.
fn anonymous_groups(rows: usize, width: usize) -> String {
    let group = format!("({})", vec!["?"; width].join(", "));
    vec![group; rows].join(", ")
}

/// As [`with_rows`] on SQLite, with the cell `column` of every group the
/// expression `cell`, which holds that column's one placeholder:
/// `(?, ? + 1), (?, ? + 1)`.
pub(crate) fn sqlite_rows_with(
    template: &str,
    rows: usize,
    width: usize,
    column: usize,
    cell: &str,
) -> String {
    let cells: Vec<&str> = (0..width)
        .map(|at| if at == column { cell } else { "?" })
        .collect();
    let group = format!("({})", cells.join(", "));
    template.replace("{rows}", &vec![group; rows].join(", "))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_numbered_on_postgres_and_anonymous_on_sqlite() {
        let template = "INSERT INTO t (a, b) VALUES {rows}";
        assert_eq!(
            with_rows(Backend::Postgres, template, 2, 2),
            "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4)"
        );
        assert_eq!(
            with_rows(Backend::Sqlite, template, 2, 2),
            "INSERT INTO t (a, b) VALUES (?, ?), (?, ?)"
        );
        assert_eq!(
            with_rows_after("UPDATE t SET x = $1 FROM (VALUES {rows})", 1, 2, 1),
            "UPDATE t SET x = $1 FROM (VALUES ($2), ($3))"
        );
        assert_eq!(
            sqlite_rows_with(template, 2, 2, 1, "? + 1"),
            "INSERT INTO t (a, b) VALUES (?, ? + 1), (?, ? + 1)"
        );
    }
}
