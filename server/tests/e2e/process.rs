//! The `roadie-server` binary: configuration errors before binding, health,
//! reflection, and a bounded shutdown on SIGTERM.

use std::{
    net::TcpListener,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use roadie_store::Backend;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::common::start;

pub(crate) const BINARY: &str = env!("CARGO_BIN_EXE_roadie-server");

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

#[test]
fn bad_configuration_exits_naming_the_setting_before_binding() {
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let output = Command::new(BINARY)
        .current_dir(dir.path())
        .env("ROADIE__SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env("ROADIE__POLICIES__GENERIC__TTL", "whenever")
        .output()
        .expect("run roadie-server");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("policies.generic.ttl"), "{stderr}");
    assert!(
        !dir.path().join("data").exists(),
        "nothing was created before the configuration was valid"
    );

    let file = dir.path().join("roadie.toml");
    std::fs::write(&file, "[store]\nurl = \"mysql://nope\"\n").expect("write");
    let output = Command::new(BINARY)
        .arg("--config")
        .arg(&file)
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("store.url"));
}

/// A port nothing guards is not opened on a public address unless the
/// operator says the network is trusted; with `server.insecure` it is.
#[tokio::test]
async fn an_unguarded_public_port_needs_server_insecure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}/roadie.db", dir.path().display());
    let port = free_port();
    let refused = Command::new(BINARY)
        .env("ROADIE__STORE__URL", &url)
        .env("ROADIE__SERVER__LISTEN", format!("0.0.0.0:{port}"))
        .output()
        .expect("run roadie-server");
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("server.listen") && stderr.contains("server.insecure = true"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("roadie.db").exists(),
        "refused before the store was opened"
    );

    let mut server = tokio::process::Command::new(BINARY)
        .env("ROADIE__STORE__URL", &url)
        .env("ROADIE__SERVER__LISTEN", format!("0.0.0.0:{port}"))
        .env("ROADIE__SERVER__INSECURE", "true")
        .kill_on_drop(true)
        .spawn()
        .expect("spawn roadie-server");
    wait_until_serving(&format!("127.0.0.1:{port}")).await;
    server.start_kill().expect("kill");
    server.wait().await.expect("wait");
}

/// `roadie-server migrate` applies the schema and exits; with
/// `store.migrate = "off"` a server starts on that database, and refuses one
/// without the schema, saying how to apply it.
#[tokio::test]
async fn migrations_are_a_step_of_their_own_when_asked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}/roadie.db", dir.path().display());
    let refused = Command::new(BINARY)
        .env("ROADIE__STORE__URL", &url)
        .env("ROADIE__STORE__MIGRATE", "off")
        .env(
            "ROADIE__SERVER__LISTEN",
            format!("127.0.0.1:{}", free_port()),
        )
        .output()
        .expect("run roadie-server");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("roadie-server migrate"), "{stderr}");

    let migrated = Command::new(BINARY)
        .arg("migrate")
        .env("ROADIE__STORE__URL", &url)
        .output()
        .expect("run roadie-server migrate");
    assert!(
        migrated.status.success(),
        "{}",
        String::from_utf8_lossy(&migrated.stderr)
    );
    assert!(String::from_utf8_lossy(&migrated.stderr).contains("up to date"));

    let port = free_port();
    let mut server = tokio::process::Command::new(BINARY)
        .env("ROADIE__STORE__URL", &url)
        .env("ROADIE__STORE__MIGRATE", "off")
        .env("ROADIE__SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn roadie-server");
    wait_until_serving(&format!("127.0.0.1:{port}")).await;
    server.kill().await.expect("kill");
}

/// A database migrated by a newer Roadie is refused, with or without
/// `store.migrate`, before anything is served.
#[tokio::test]
async fn a_schema_newer_than_the_binary_is_refused() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}/roadie.db", dir.path().display());
    let migrated = Command::new(BINARY)
        .arg("migrate")
        .env("ROADIE__STORE__URL", &url)
        .output()
        .expect("run roadie-server migrate");
    assert!(migrated.status.success());
    let mut conn = sqlx::sqlite::SqliteConnection::connect(&url)
        .await
        .expect("open the database");
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99990101000000, 'from a newer Roadie', TRUE, x'00', 0)",
    )
    .execute(&mut conn)
    .await
    .expect("record a newer migration");
    conn.close().await.expect("close");
    for migrate in ["auto", "off"] {
        let refused = Command::new(BINARY)
            .env("ROADIE__STORE__URL", &url)
            .env("ROADIE__STORE__MIGRATE", migrate)
            .env(
                "ROADIE__SERVER__LISTEN",
                format!("127.0.0.1:{}", free_port()),
            )
            .output()
            .expect("run roadie-server");
        assert!(!refused.status.success(), "store.migrate = {migrate}");
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            stderr.contains("newer than this binary knows"),
            "store.migrate = {migrate}: {stderr}"
        );
    }
}

#[test]
fn print_config_never_shows_a_password() {
    let output = Command::new(BINARY)
        .arg("--print-config")
        .env(
            "ROADIE__STORE__URL",
            "postgres://roadie:hunter2@db.example:5432/roadie",
        )
        .output()
        .expect("run roadie-server");
    assert!(output.status.success(), "{output:?}");
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        printed.contains("postgres://roadie:***@db.example:5432/roadie"),
        "{printed}"
    );
    assert!(!printed.contains("hunter2"), "{printed}");
}

/// Waits until the server at `addr` says SERVING: its port is tried until
/// it accepts (nothing else tells when a child process has bound it), then
/// its health Watch stream says when the store is ready; a stream that ends
/// (the server switching from its start-up health service to the full one)
/// is opened again.
pub(crate) async fn wait_until_serving(addr: &str) -> HealthClient<Channel> {
    let limit = Duration::from_secs(30);
    let serving = async {
        loop {
            let Ok(channel) = Channel::from_shared(format!("http://{addr}"))
                .expect("uri")
                .connect()
                .await
            else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let mut health = HealthClient::new(channel);
            let request = HealthCheckRequest {
                service: "roadie.v1.Cache".to_owned(),
            };
            let Ok(statuses) = health.watch(request).await else {
                continue;
            };
            let mut statuses = statuses.into_inner();
            while let Ok(Some(status)) = statuses.message().await {
                if status.status == ServingStatus::Serving as i32 {
                    return health;
                }
            }
        }
    };
    tokio::time::timeout(limit, serving)
        .await
        .unwrap_or_else(|_| panic!("roadie-server did not become healthy within {limit:?}"))
}

/// `roadie health --service SERVICE` against `addr`: the exit and what it printed.
async fn roadie_health(addr: &str, service: &str) -> (roadie_client::cli::Exit, String) {
    use clap::Parser;
    let url = format!("http://{addr}");
    let cli = roadie_client::cli::Cli::try_parse_from([
        "roadie",
        "--server",
        &url,
        "health",
        "--service",
        service,
    ])
    .expect("valid command line");
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let exit = roadie_client::cli::run(cli, &mut &b""[..], &mut out, &mut err).await;
    (exit, String::from_utf8_lossy(&out).into_owned())
}

/// A server started before its database binds at once, answers health
/// NOT_SERVING while it retries the store, and serves once the database
/// can be reached.
#[tokio::test]
async fn a_server_started_before_its_store_waits_for_it() {
    let Some(db) = roadie_store::testing::TestDb::new(Backend::Postgres).await else {
        return;
    };
    // The store's address answers nothing until the relay below starts.
    let (url, relay_port) = db.url_through_closed_port();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut server = tokio::process::Command::new(BINARY)
        .env("ROADIE__STORE__URL", &url)
        .env("ROADIE__STORE__CONNECT_TIMEOUT", "60s")
        // Each attempt gives up quickly, so the retries (and their log
        // lines) happen while the relay is down.
        .env("ROADIE__STORE__ACQUIRE_TIMEOUT", "200ms")
        .env("ROADIE__SERVER__LISTEN", &addr)
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn roadie-server");
    // The server's log, line by line: the test waits on what it says.
    let stderr = server.stderr.take().expect("stderr is piped");
    let (said, mut log) = tokio::sync::watch::channel(String::new());
    tokio::spawn(async move {
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stderr));
        while let Ok(Some(line)) = lines.next_line().await {
            said.send_modify(|log| {
                log.push_str(&line);
                log.push('\n');
            });
        }
    });
    let channel = loop {
        if let Ok(channel) = Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect()
            .await
        {
            break channel;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for service in ["", "roadie.v1.Cache"] {
        let status = HealthClient::new(channel.clone())
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .expect("health answers while the store is unreachable")
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::NotServing as i32, "{service:?}");
    }
    // What a container health check runs.
    assert_eq!(
        roadie_health(&addr, "").await,
        (roadie_client::cli::Exit::Miss, "NOT_SERVING\n".to_owned())
    );
    // Alive, though: what a liveness probe asks.
    assert_eq!(
        roadie_health(&addr, roadie_server::LIVENESS_SERVICE).await,
        (roadie_client::cli::Exit::Success, "SERVING\n".to_owned())
    );

    let retried = log.wait_for(|log| log.contains("the store cannot be reached yet"));
    tokio::time::timeout(Duration::from_secs(20), retried)
        .await
        .expect("the server logs its attempts")
        .expect("the log is read");
    db.relay(relay_port).await;
    wait_until_serving(&addr).await;
    let client = roadie_client::connect(format!("http://{addr}"), Duration::from_secs(5))
        .await
        .expect("connect");
    client.put(crate::common::put("k", "v")).await.expect("put");
    for service in ["", roadie_server::LIVENESS_SERVICE] {
        assert_eq!(
            roadie_health(&addr, service).await,
            (roadie_client::cli::Exit::Success, "SERVING\n".to_owned()),
            "{service:?}"
        );
    }

    server.start_kill().expect("kill");
    server.wait().await.expect("wait");
    db.finish().await;
}

#[tokio::test]
async fn sigterm_stops_the_server_within_its_grace_period() {
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = tokio::process::Command::new(BINARY)
        .current_dir(dir.path())
        .env("ROADIE__SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env("ROADIE__SERVER__SHUTDOWN_GRACE", "3s")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn roadie-server");
    let addr = format!("127.0.0.1:{port}");
    wait_until_serving(&addr).await;
    // The zero-set-up default: SQLite under ./data.
    assert!(dir.path().join("data/roadie.db").is_file());

    let client = roadie_client::connect(format!("http://{addr}"), Duration::from_secs(5))
        .await
        .expect("connect");
    client.put(crate::common::put("k", "v")).await.expect("put");

    let pid = child.id().expect("pid").to_string();
    let stopped_at = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("stopped within the grace period plus a margin")
        .expect("wait");
    assert!(exit.success(), "clean exit: {exit:?}");
    assert!(stopped_at.elapsed() < Duration::from_secs(5));
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        tokio::io::AsyncReadExt::read_to_string(&mut pipe, &mut stderr)
            .await
            .expect("stderr");
    }
    assert!(stderr.contains("roadie-server stopped"), "{stderr}");
    // The zero-set-up default works as it is: nothing to warn about.
    assert!(!stderr.contains("WARN"), "{stderr}");
}

#[tokio::test]
async fn health_and_reflection_v1_and_v1alpha() {
    let server = start!(Backend::Sqlite);
    let addr = server.addr.to_string();
    let mut health = wait_until_serving(&addr).await;
    let overall = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("check");
    assert_eq!(overall.into_inner().status, ServingStatus::Serving as i32);

    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    {
        use tonic_reflection::pb::v1::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut responses = ServerReflectionClient::new(channel.clone())
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .expect("reflection v1")
            .into_inner();
        let response = responses.next().await.expect("one answer").expect("ok");
        let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
            panic!("list")
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        for name in ["roadie.v1.Cache", "roadie.v1.Jobs", "grpc.health.v1.Health"] {
            assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
        }
    }
    {
        use tonic_reflection::pb::v1alpha::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "roadie.v1.Cache".to_owned(),
            )),
        };
        let mut responses = ServerReflectionClient::new(channel)
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .expect("reflection v1alpha")
            .into_inner();
        let response = responses.next().await.expect("one answer").expect("ok");
        let Some(MessageResponse::FileDescriptorResponse(files)) = response.message_response else {
            panic!("files")
        };
        assert!(!files.file_descriptor_proto.is_empty());
    }
    server.stop().await;
}

/// A SQLite store backed up with `roadie-server backup` while a server
/// writes to it: served again, the copy holds every entry written before the
/// backup with its confidence, and the change log up to its revision; later
/// writes are what it loses.
#[tokio::test]
async fn a_sqlite_backup_taken_online_restores_what_was_written_before_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}/roadie.db", dir.path().display());
    let server = crate::common::TestServer::start_at(&url, |_| {}).await;
    let mut kept = crate::common::put("artist:1", "kept");
    kept.confidence = 70;
    let written = server.client.put(kept).await.expect("put");

    let backup = dir.path().join("backup.db");
    let run = |path: &std::path::Path| {
        Command::new(BINARY)
            .arg("backup")
            .arg(path)
            .env("ROADIE__STORE__URL", &url)
            .output()
            .expect("run roadie-server backup")
    };
    let done = run(&backup);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let again = run(&backup);
    assert!(!again.status.success(), "a backup never overwrites a file");
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));

    server
        .client
        .put(crate::common::put("artist:2", "lost"))
        .await
        .expect("put");
    server.stop().await;

    let restored =
        crate::common::TestServer::start_at(&format!("sqlite://{}", backup.display()), |_| {})
            .await;
    let answer = restored
        .client
        .get(crate::common::get("artist:1"))
        .await
        .expect("get");
    let entry = answer.entry.expect("the entry written before the backup");
    assert_eq!((entry.value.as_ref(), entry.confidence), (&b"kept"[..], 70));
    let missing = restored
        .client
        .get(crate::common::get("artist:2"))
        .await
        .expect("get");
    assert!(missing.entry.is_none(), "written after the backup");
    assert_eq!(
        restored.store().revision_current().await.expect("revision"),
        written.revision
    );
    let changes = restored
        .store()
        .change_list_since(0, 10)
        .await
        .expect("changes");
    assert_eq!(
        changes.iter().map(|c| c.key.as_str()).collect::<Vec<_>>(),
        ["artist:1"]
    );
    restored.stop().await;
}

/// A Postgres store is backed up with `pg_dump` and restored with
/// `pg_restore` into a fresh database; `roadie-server backup` says so.
#[tokio::test]
async fn a_postgres_store_round_trips_through_pg_dump() {
    let Some(db) = roadie_store::testing::TestDb::new(Backend::Postgres).await else {
        return;
    };
    let url = db.url.clone();
    let server = crate::common::TestServer::start_at(&url, |_| {}).await;
    let mut kept = crate::common::put("artist:1", "kept");
    kept.confidence = 70;
    let written = server.client.put(kept).await.expect("put");

    let refused = Command::new(BINARY)
        .args(["backup", "/tmp/never-written.db"])
        .env("ROADIE__STORE__URL", &url)
        .output()
        .expect("run roadie-server backup");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("pg_dump"));

    let dir = tempfile::tempdir().expect("tempdir");
    let dump = dir.path().join("roadie.dump");
    let dumped = Command::new("pg_dump")
        .args(["--format=custom", "--no-owner", "--file"])
        .arg(&dump)
        .arg(&url)
        .output()
        .expect("pg_dump is installed (postgresql-client)");
    assert!(
        dumped.status.success(),
        "{}",
        String::from_utf8_lossy(&dumped.stderr)
    );
    server.stop().await;

    let Some(fresh) = roadie_store::testing::TestDb::new(Backend::Postgres).await else {
        return;
    };
    let restored = Command::new("pg_restore")
        .args(["--no-owner", "--dbname", &fresh.url])
        .arg(&dump)
        .output()
        .expect("pg_restore is installed");
    assert!(
        restored.status.success(),
        "{}",
        String::from_utf8_lossy(&restored.stderr)
    );
    let server = crate::common::TestServer::start_at(&fresh.url, |_| {}).await;
    let answer = server
        .client
        .get(crate::common::get("artist:1"))
        .await
        .expect("get");
    let entry = answer.entry.expect("the entry survives the dump");
    assert_eq!((entry.value.as_ref(), entry.confidence), (&b"kept"[..], 70));
    assert_eq!(
        server.store().revision_current().await.expect("revision"),
        written.revision
    );
    server.stop().await;
    fresh.finish().await;
    db.finish().await;
}
