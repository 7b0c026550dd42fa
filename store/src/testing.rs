//! Test databases: a temporary SQLite file, or a fresh Postgres database per
//! test, created on the server named by `ROADIE_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`).
//!
//! When that Postgres cannot be reached, Postgres tests fail if `CI` or
//! `ROADIE_REQUIRE_POSTGRES` is set; otherwise they print a loud SKIPPED line
//! to stderr and return, so a laptop without Postgres can still run the rest.

use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::{AnyConnection, Connection, Executor};

use crate::{Backend, Store, StoreOptions};

/// The default admin URL of the test Postgres.
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A database that exists for one test.
#[derive(Debug)]
pub struct TestDb {
    /// The URL to hand to [`Store::connect`] or to a server's `store.url`.
    pub url: String,
    backend: Backend,
    postgres: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    /// A database of `backend`, or `None` when Postgres is not reachable and
    /// not required (see the module docs).
    pub async fn new(backend: Backend) -> Option<TestDb> {
        match backend {
            Backend::Sqlite => Some(TestDb::sqlite()),
            Backend::Postgres => TestDb::postgres().await,
        }
    }

    /// A SQLite file in a fresh temporary directory.
    pub fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let url = format!("sqlite://{}", dir.path().join("roadie.db").display());
        TestDb {
            url,
            backend: Backend::Sqlite,
            postgres: None,
            _dir: Some(dir),
        }
    }

    /// A fresh, empty Postgres database.
    pub async fn postgres() -> Option<TestDb> {
        sqlx::any::install_default_drivers();
        let admin = std::env::var("ROADIE_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned());
        let mut conn = match AnyConnection::connect(&admin).await {
            Ok(conn) => conn,
            Err(error) => {
                let required = std::env::var_os("CI").is_some()
                    || std::env::var_os("ROADIE_REQUIRE_POSTGRES").is_some();
                assert!(
                    !required,
                    "Postgres is required but {admin} is unreachable: {error}"
                );
                eprintln!(
                    "\n*** SKIPPED: Postgres test, {admin} is unreachable ({error}); \
                     set ROADIE_TEST_POSTGRES_URL, or CI=1 to make this fail ***\n"
                );
                return None;
            }
        };
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "roadie_test_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        );
        conn.execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("create a test database");
        let url = match admin.rsplit_once('/') {
            Some((server, _)) => format!("{server}/{name}"),
            None => panic!("ROADIE_TEST_POSTGRES_URL needs a database path: {admin}"),
        };
        Some(TestDb {
            url,
            backend: Backend::Postgres,
            postgres: Some((admin, name)),
            _dir: None,
        })
    }

    /// This Postgres database's URL through a loopback port where nothing
    /// listens yet, and that port: the database as a process started before
    /// it sees it. [`TestDb::relay`] makes the port lead to the database.
    pub fn url_through_closed_port(&self) -> (String, u16) {
        let port = std::net::TcpListener::bind(("127.0.0.1", 0))
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let (before, after) = self
            .url
            .split_once('@')
            .expect("a Postgres URL has user@host");
        let (_, path) = after
            .split_once('/')
            .expect("a Postgres URL has a database");
        (format!("{before}@127.0.0.1:{port}/{path}"), port)
    }

    /// Relays `port` on 127.0.0.1 to this database's server from now on.
    pub async fn relay(&self, port: u16) {
        let after = self.url.split_once('@').expect("user@host").1;
        let server = after.split_once('/').expect("a database").0.to_owned();
        let relay = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the relay");
        tokio::spawn(async move {
            while let Ok((mut client, _)) = relay.accept().await {
                let server = server.clone();
                tokio::spawn(async move {
                    if let Ok(mut postgres) = tokio::net::TcpStream::connect(&server).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut postgres).await;
                    }
                });
            }
        });
    }

    /// The backend of this database.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Opens (and migrates) the database.
    pub async fn store(&self) -> Store {
        self.store_with(|_| {}).await
    }

    /// A store on this database with options of the test's own.
    pub async fn store_with(&self, adjust: impl FnOnce(&mut StoreOptions)) -> Store {
        let mut options = StoreOptions::new(&self.url);
        adjust(&mut options);
        Store::connect(&options).await.expect("open the test store")
    }

    /// Drops a Postgres database (a SQLite directory goes with `self`).
    pub async fn finish(self) {
        if let Some((admin, name)) = &self.postgres
            && let Ok(mut conn) = AnyConnection::connect(admin).await
        {
            let _ = conn
                .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                .await;
        }
    }
}
