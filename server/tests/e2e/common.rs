//! Starting and stopping test servers.

use std::{net::SocketAddr, time::Duration};

use roadie_client::{Client, ConnectOptions};
use roadie_server::{App, ServerError, config::Settings};
use roadie_store::{Backend, Store, testing::TestDb};
use tokio::{sync::oneshot, task::JoinHandle};

/// A server on a free loopback port, with a connected client.
pub struct TestServer {
    pub client: Client,
    pub addr: SocketAddr,
    pub app: App,
    /// The database, dropped at `stop` (none for a second server on it).
    pub db: Option<TestDb>,
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<Result<(), ServerError>>,
}

impl TestServer {
    /// Starts a server over a fresh database of `backend`; `None` when the
    /// test Postgres is unreachable and not required.
    pub async fn start(backend: Backend, tweak: impl FnOnce(&mut Settings)) -> Option<TestServer> {
        let db = TestDb::new(backend).await?;
        Some(TestServer::start_on(db, tweak).await)
    }

    /// Starts a server over an existing test database.
    pub async fn start_on(db: TestDb, tweak: impl FnOnce(&mut Settings)) -> TestServer {
        let mut server = TestServer::start_at(&db.url, tweak).await;
        server.db = Some(db);
        server
    }

    /// Starts another server on the database at `url`, owned elsewhere.
    pub async fn start_at(url: &str, tweak: impl FnOnce(&mut Settings)) -> TestServer {
        TestServer::start_guarded(
            url,
            tweak,
            "http",
            &ConnectOptions::new(Duration::from_secs(5)),
        )
        .await
    }

    /// Starts a server over a fresh database of `backend` whose client
    /// connects with `scheme` ("https" for a server with TLS) and `options`.
    pub async fn start_tls(
        backend: Backend,
        tweak: impl FnOnce(&mut Settings),
        options: &ConnectOptions,
    ) -> Option<TestServer> {
        let db = TestDb::new(backend).await?;
        let mut server = TestServer::start_guarded(&db.url, tweak, "https", options).await;
        server.db = Some(db);
        Some(server)
    }

    async fn start_guarded(
        url: &str,
        tweak: impl FnOnce(&mut Settings),
        scheme: &str,
        options: &ConnectOptions,
    ) -> TestServer {
        let mut settings = Settings::default();
        settings.store.url = url.to_owned();
        settings.server.shutdown_grace = Duration::from_secs(5);
        tweak(&mut settings);
        settings.validate().expect("test settings are valid");
        let app = App::open(settings).await.expect("open the server");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(app.clone().serve(listener, async {
            let _ = stopped.await;
        }));
        let client = Client::connect_with(format!("{scheme}://{addr}"), options)
            .await
            .expect("connect to the test server");
        TestServer {
            client,
            addr,
            app,
            db: None,
            stop: Some(stop),
            handle,
        }
    }

    /// The server's store, for arranging state the API cannot (old entries).
    pub fn store(&self) -> &Store {
        self.app.store()
    }

    /// Stops the server, waits for it, and drops the database.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.handle
            .await
            .expect("server task")
            .expect("server stopped cleanly");
        if let Some(db) = self.db.take() {
            db.finish().await;
        }
    }
}

/// Declares each named `async fn(Backend)` as a test on SQLite and on Postgres.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(roadie_store::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(roadie_store::Backend::Postgres).await;
                }
            )*
        }
    };
}
pub(crate) use on_both_backends;

/// Starts a server or returns from the test (Postgres absent and not required).
macro_rules! start {
    ($backend:expr) => {
        start!($backend, |_| {})
    };
    ($backend:expr, $tweak:expr) => {
        match crate::common::TestServer::start($backend, $tweak).await {
            Some(server) => server,
            None => return,
        }
    };
}
pub(crate) use start;

/// A Put request for `key` with `value`, everything else default.
pub fn put(key: &str, value: &str) -> roadie_client::proto::PutRequest {
    roadie_client::proto::PutRequest {
        key: key.to_owned(),
        value: value.as_bytes().to_vec().into(),
        ..Default::default()
    }
}

/// A Get request for `key`.
pub fn get(key: &str) -> roadie_client::proto::GetRequest {
    roadie_client::proto::GetRequest {
        key: key.to_owned(),
        ..Default::default()
    }
}

/// A protobuf duration of `secs` seconds.
pub fn secs(secs: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: secs,
        nanos: 0,
    }
}

/// Writes an entry straight into the store, e.g. one that expired earlier.
pub fn stored(key: &str, expires_at: Option<i64>, negative: bool) -> roadie_store::EntryPut {
    roadie_store::EntryPut {
        key: key.to_owned(),
        value: b"old".to_vec(),
        media_type: "text/plain".to_owned(),
        policy: "generic".to_owned(),
        tags: vec![],
        confidence: 50,
        fingerprint: None,
        metadata: Default::default(),
        negative,
        expires_at,
        provenance: None,
        keep_higher_confidence: false,
        if_revision: None,
        kind: roadie_store::ChangeKind::Put,
        now: roadie_store::now_ms(),
    }
}

/// Runs `roadie ARGS…` against `server` with `stdin`; returns exit, stdout, stderr.
pub async fn roadie(
    server: &TestServer,
    args: &[&str],
    stdin: &str,
) -> (roadie_client::cli::Exit, String, String) {
    let url = format!("http://{}", server.addr);
    let mut argv = vec!["roadie", "--server", url.as_str()];
    argv.extend_from_slice(args);
    let cli = <roadie_client::cli::Cli as clap::Parser>::try_parse_from(argv)
        .expect("valid command line");
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let exit = roadie_client::cli::run(cli, &mut stdin.as_bytes(), &mut out, &mut err).await;
    (
        exit,
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}
