//! TLS (server-only and mutual, with a CA made here), certificate reload,
//! and tokens with roles on every RPC.

use std::time::Duration;

use clap::Parser;
use roadie_client::{
    Client, ClientError, ConnectOptions,
    cli::{self, Cli, Exit},
    proto::{self, FetchMode},
};
use roadie_config::{Reflection, Role, TokenSettings};
use roadie_store::Backend;
use tonic::Code;

use crate::{
    common::{TestServer, get, on_both_backends, put, start},
    fetch::with_provider,
    pki::{Ca, write},
};

const TIMEOUT: Duration = Duration::from_secs(5);

fn trusting(ca: &Ca) -> ConnectOptions {
    let mut options = ConnectOptions::new(TIMEOUT);
    options.ca = Some(ca.pem().into_bytes());
    options
}

/// A server certificate from `ca` written to `dir`, and the settings naming it.
fn serve_tls(dir: &std::path::Path, ca: &Ca) -> impl FnOnce(&mut roadie_config::Settings) + use<> {
    let leaf = ca.server();
    let cert = write(dir, "server.pem", &leaf.cert);
    let key = write(dir, "server.key", &leaf.key);
    move |s| {
        s.server.tls.cert = Some(cert);
        s.server.tls.key = Some(key);
        s.server.tls.reload_interval = Duration::from_millis(100);
    }
}

/// A client of `ca`'s server certificate works; cleartext, the system's
/// roots and another CA do not, and `roadie --ca` does. Replacing the files
/// reloads them: new connections get the new certificate, the open one
/// keeps working.
async fn tls_with_a_self_made_ca(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("Roadie test CA");
    let Some(server) =
        TestServer::start_tls(backend, serve_tls(dir.path(), &ca), &trusting(&ca)).await
    else {
        return;
    };
    let url = format!("https://{}", server.addr);
    let client = &server.client;
    client
        .put(put("k", "over TLS"))
        .await
        .expect("put over TLS");
    assert_eq!(
        &client
            .get(get("k"))
            .await
            .expect("get")
            .entry
            .expect("hit")
            .value[..],
        b"over TLS"
    );

    let cleartext = Client::connect(format!("http://{}", server.addr), TIMEOUT).await;
    let refused = match cleartext {
        Err(error) => error.to_string(),
        Ok(client) => client
            .get(get("k"))
            .await
            .expect_err("no cleartext")
            .to_string(),
    };
    assert!(!refused.is_empty());
    let system_roots = Client::connect(url.clone(), TIMEOUT)
        .await
        .expect_err("an unknown issuer is refused");
    assert!(
        system_roots.to_string().contains("UnknownIssuer")
            || system_roots.to_string().contains("certificate"),
        "{system_roots}"
    );
    let other = Ca::new("another CA");
    assert!(
        Client::connect_with(url.clone(), &trusting(&other))
            .await
            .is_err()
    );

    let ca_file = write(dir.path(), "ca.pem", &ca.pem());
    let ca_arg = ca_file.display().to_string();
    let cli = Cli::try_parse_from(["roadie", "--server", &url, "--ca", &ca_arg, "get", "k"])
        .expect("valid command line");
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let exit = cli::run(cli, &mut &b""[..], &mut out, &mut err).await;
    assert_eq!(exit, Exit::Success, "{}", String::from_utf8_lossy(&err));
    assert!(String::from_utf8_lossy(&out).ends_with("\nover TLS\n"));

    // A new certificate from a new CA, written the way tools do.
    let mut reloads = server.app.tls_reloads().expect("TLS is on");
    let next = Ca::new("the next CA");
    let leaf = next.server();
    write(dir.path(), "server.key", &leaf.key);
    write(dir.path(), "server.pem", &leaf.cert);
    tokio::time::timeout(Duration::from_secs(10), async {
        while *reloads.borrow_and_update() == 0 {
            reloads.changed().await.expect("server running");
        }
    })
    .await
    .expect("the changed files are reloaded");
    let renewed = Client::connect_with(url.clone(), &trusting(&next))
        .await
        .expect("the new certificate is served");
    renewed.get(get("k")).await.expect("get");
    assert!(
        Client::connect_with(url.clone(), &trusting(&ca))
            .await
            .is_err(),
        "the old certificate is no longer served"
    );
    client
        .get(get("k"))
        .await
        .expect("the connection open before the reload still works");
    server.stop().await;
}

/// With `server.tls.client_ca`, only clients with a certificate from that
/// CA get an answer.
async fn mutual_tls(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("Roadie test CA");
    let clients = Ca::new("Roadie clients");
    let client_ca = write(dir.path(), "clients.pem", &clients.pem());
    let serve = serve_tls(dir.path(), &ca);
    let mut options = trusting(&ca);
    let leaf = clients.client("app");
    options.identity = Some((leaf.cert.into_bytes(), leaf.key.into_bytes()));
    let Some(server) = TestServer::start_tls(
        backend,
        |s| {
            serve(s);
            s.server.tls.client_ca = Some(client_ca);
        },
        &options,
    )
    .await
    else {
        return;
    };
    let url = format!("https://{}", server.addr);
    server
        .client
        .put(put("k", "v"))
        .await
        .expect("a client with a certificate");

    let refused = |client: Result<Client, ClientError>| async move {
        match client {
            Err(_) => true,
            Ok(client) => client.get(get("k")).await.is_err(),
        }
    };
    assert!(
        refused(Client::connect_with(url.clone(), &trusting(&ca)).await).await,
        "no client certificate"
    );
    let stranger = Ca::new("someone else").client("app");
    let mut strange = trusting(&ca);
    strange.identity = Some((stranger.cert.into_bytes(), stranger.key.into_bytes()));
    assert!(
        refused(Client::connect_with(url.clone(), &strange).await).await,
        "a certificate from another CA"
    );
    server.stop().await;
}

const READER: &str = "reader-token-0123456789abcdef";
const WRITER: &str = "writer-token-0123456789abcdef";
const ADMIN: &str = "admin-token-0123456789abcdef";

fn tokens(dir: &std::path::Path) -> Vec<TokenSettings> {
    let writer = write(dir, "writer.token", &format!("{WRITER}\n"));
    vec![
        TokenSettings {
            name: "reader".to_owned(),
            role: Role::Read,
            token_sha256: Some(roadie_server::token_digest(READER)),
            token_file: None,
        },
        TokenSettings {
            name: "writer".to_owned(),
            role: Role::Write,
            token_sha256: None,
            token_file: Some(writer),
        },
        TokenSettings {
            name: "admin".to_owned(),
            role: Role::Admin,
            token_sha256: Some(roadie_server::token_digest(ADMIN)),
            token_file: None,
        },
    ]
}

fn snapshot_header() -> proto::SnapshotHeader {
    proto::SnapshotHeader {
        name: "lib".to_owned(),
        library_mtime: Some(prost_types::Timestamp {
            seconds: 1,
            nanos: 0,
        }),
        processed_ids: Vec::new(),
    }
}

/// One call of every RPC, with the role it needs.
async fn call(client: &Client, rpc: &str) -> Result<(), ClientError> {
    let fetch = |path: &str| proto::FetchRequest {
        provider: "test".to_owned(),
        path: path.to_owned(),
        mode: FetchMode::Background.into(),
        ..Default::default()
    };
    match rpc {
        "Get" => client.get(get("cached")).await.map(drop),
        "BatchGet" => client
            .batch_get(proto::BatchGetRequest {
                keys: vec!["cached".to_owned()],
                ..Default::default()
            })
            .await
            .map(drop),
        "GetRandom" => client
            .get_random(proto::GetRandomRequest {
                tag: "t".to_owned(),
                ..Default::default()
            })
            .await
            .map(drop),
        "ListEntries" => client.list_entries(Default::default()).await.map(drop),
        "Stats" => client.stats(Default::default()).await.map(drop),
        "Watch" => client
            .watch_once(proto::WatchRequest::default())
            .await
            .map(drop),
        "Fetch cached" => client.fetch(fetch("cached")).await.map(drop),
        "BatchFetch" => client
            .batch_fetch(proto::BatchFetchRequest {
                items: vec![proto::BatchFetchItem {
                    provider: "test".to_owned(),
                    path: "batched".to_owned(),
                    ..Default::default()
                }],
                priority: 0,
            })
            .await
            .map(drop),
        "Fetch uncached" => client.fetch(fetch("new")).await.map(drop),
        "Put" => client.put(put("written", "v")).await.map(drop),
        "Delete" => client
            .delete(proto::DeleteRequest {
                key: "written".to_owned(),
                ..Default::default()
            })
            .await
            .map(drop),
        "Invalidate" => client
            .invalidate(proto::InvalidateRequest {
                selector: Some(proto::invalidate_request::Selector::Tag("none".to_owned())),
            })
            .await
            .map(drop),
        "PublishEvent" => client
            .publish_event(proto::PublishEventRequest {
                kind: proto::LibraryEventKind::TrackModified.into(),
                artist: "a".to_owned(),
                album: "b".to_owned(),
                ..Default::default()
            })
            .await
            .map(drop),
        "GetSnapshot" => client
            .get_snapshot(proto::GetSnapshotRequest {
                name: "lib".to_owned(),
                ..Default::default()
            })
            .await
            .map(drop),
        "GetSnapshotInfo" => client
            .get_snapshot_info(proto::GetSnapshotInfoRequest {
                name: "lib".to_owned(),
                validity: None,
            })
            .await
            .map(drop),
        "PutSnapshot" => client
            .put_snapshot(snapshot_header(), Vec::new())
            .await
            .map(drop),
        "MergeSnapshot" => client
            .merge_snapshot(snapshot_header(), Vec::new(), Vec::new())
            .await
            .map(drop),
        "DeleteSnapshot" => client.delete_snapshot("gone").await.map(drop),
        "GetJob" => client
            .get_job(proto::GetJobRequest { id: 1 })
            .await
            .map(drop),
        "ListJobs" => client.list_jobs(Default::default()).await.map(drop),
        "CancelJob" => client
            .cancel_job(proto::CancelJobRequest { id: 1 })
            .await
            .map(drop),
        "RetryJob" => client
            .retry_job(proto::RetryJobRequest { id: 1 })
            .await
            .map(drop),
        other => panic!("no call {other}"),
    }
}

/// Every RPC with no token, an unknown one, and each role: refused as
/// UNAUTHENTICATED, PERMISSION_DENIED naming the role needed, or allowed
/// (answered with anything else). Health needs no token.
async fn each_role_is_allowed_and_refused_on_every_rpc(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let configured = tokens(dir.path());
    let server = start!(backend, |s| {
        with_provider("127.0.0.1:9".parse().expect("addr"))(s);
        s.auth.tokens = configured;
    });
    let admin = server.client.clone().with_token(ADMIN).expect("token");
    // The key a Fetch of "cached" reads.
    let key = admin
        .fetch(proto::FetchRequest {
            provider: "test".to_owned(),
            path: "cached".to_owned(),
            mode: FetchMode::Background.into(),
            ..Default::default()
        })
        .await
        .expect("admin may fetch")
        .job
        .expect("a job")
        .url;
    admin.put(put(&key, "v")).await.expect("admin may put");
    admin.put(put("cached", "v")).await.expect("put");

    let needs: &[(&str, Role)] = &[
        ("Get", Role::Read),
        ("BatchGet", Role::Read),
        ("GetRandom", Role::Read),
        ("ListEntries", Role::Read),
        ("Stats", Role::Read),
        ("Watch", Role::Read),
        ("Fetch cached", Role::Read),
        ("Fetch uncached", Role::Write),
        ("Put", Role::Write),
        ("Delete", Role::Write),
        ("Invalidate", Role::Write),
        ("PublishEvent", Role::Write),
        ("BatchFetch", Role::Write),
        ("GetSnapshot", Role::Read),
        ("GetSnapshotInfo", Role::Read),
        ("PutSnapshot", Role::Write),
        ("MergeSnapshot", Role::Write),
        ("DeleteSnapshot", Role::Write),
        ("GetJob", Role::Admin),
        ("ListJobs", Role::Admin),
        ("CancelJob", Role::Admin),
        ("RetryJob", Role::Admin),
    ];
    let anonymous = server.client.clone();
    let stranger = server
        .client
        .clone()
        .with_token("not-a-token")
        .expect("token");
    for (rpc, _) in needs {
        for (who, client) in [("no token", &anonymous), ("unknown token", &stranger)] {
            let error = call(client, rpc).await.expect_err("refused");
            assert_eq!(
                error.code(),
                Some(Code::Unauthenticated),
                "{rpc} with {who}: {error}"
            );
        }
    }
    for (role, token) in [
        (Role::Read, READER),
        (Role::Write, WRITER),
        (Role::Admin, ADMIN),
    ] {
        let client = server.client.clone().with_token(token).expect("token");
        for (rpc, needed) in needs {
            let result = call(&client, rpc).await;
            if role >= *needed {
                if let Err(error) = &result {
                    assert!(
                        !matches!(
                            error.code(),
                            Some(Code::Unauthenticated | Code::PermissionDenied)
                        ),
                        "{rpc} as {role}: {error}"
                    );
                }
            } else {
                let error = result.expect_err("refused");
                assert_eq!(
                    error.code(),
                    Some(Code::PermissionDenied),
                    "{rpc} as {role}"
                );
                assert!(
                    error
                        .to_string()
                        .contains(&format!("needs the {needed} role")),
                    "{rpc} as {role}: {error}"
                );
            }
        }
    }
    assert_eq!(
        anonymous.health("").await.expect("health needs no token"),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    server.stop().await;
}

/// `roadie --token` and `ROADIE_TOKEN`'s flag carry the token; without one
/// the CLI says the server wants it.
async fn the_cli_sends_its_token(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let configured = tokens(dir.path());
    let server = start!(backend, |s| s.auth.tokens = configured);
    let url = format!("http://{}", server.addr);
    let run = |args: Vec<String>| async move {
        let cli = Cli::try_parse_from(args).expect("valid command line");
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let exit = cli::run(cli, &mut &b"v"[..], &mut out, &mut err).await;
        (exit, String::from_utf8_lossy(&err).into_owned())
    };
    let args = |extra: &[&str]| {
        let mut all = vec!["roadie".to_owned(), "--server".to_owned(), url.clone()];
        all.extend(extra.iter().map(|a| (*a).to_owned()));
        all
    };
    let (exit, err) = run(args(&["put", "k", "-"])).await;
    assert_eq!(exit, Exit::Error);
    assert!(
        err.contains("unauthenticated") && err.contains("--token"),
        "{err}"
    );
    let (exit, err) = run(args(&["--token", READER, "put", "k", "-"])).await;
    assert_eq!(exit, Exit::Error);
    assert!(err.contains("needs the write role"), "{err}");
    let (exit, err) = run(args(&["--token", WRITER, "put", "k", "-"])).await;
    assert_eq!(exit, Exit::Success, "{err}");
    server.stop().await;
}

on_both_backends!(
    tls_with_a_self_made_ca,
    mutual_tls,
    each_role_is_allowed_and_refused_on_every_rpc,
    the_cli_sends_its_token
);

/// Reflection needs a token by default once tokens are configured, is open
/// to anyone with `server.reflection = "open"`, and absent with "off".
#[tokio::test]
async fn reflection_follows_its_setting() {
    use tokio_stream::StreamExt;
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    for (reflection, expected) in [
        (Reflection::Read, Some(Code::Unauthenticated)),
        (Reflection::Open, None),
        (Reflection::Off, Some(Code::Unimplemented)),
    ] {
        let configured = tokens(dir.path());
        let server = start!(Backend::Sqlite, |s| {
            s.auth.tokens = configured;
            s.server.reflection = reflection;
        });
        let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.addr))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let answer = async {
            let mut responses = ServerReflectionClient::new(channel)
                .server_reflection_info(tokio_stream::iter([request]))
                .await?
                .into_inner();
            responses.next().await.transpose()
        }
        .await;
        match expected {
            None => assert!(answer.expect("open").is_some(), "{reflection:?}"),
            Some(code) => assert_eq!(
                answer.expect_err("refused").code(),
                if reflection == Reflection::Off && code == Code::Unimplemented {
                    // Off: the service is not there; without a token the
                    // unknown path is refused first.
                    Code::Unauthenticated
                } else {
                    code
                },
                "{reflection:?}"
            ),
        }
        server.stop().await;
    }
}

/// The binary reloads its certificate on SIGHUP (the files are checked
/// rarely here, so only the signal can explain the reload), keeps serving,
/// and says so in its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate() {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("Roadie test CA");
    let leaf = ca.server();
    let cert = write(dir.path(), "server.pem", &leaf.cert);
    let key = write(dir.path(), "server.key", &leaf.key);
    let port = crate::process::free_port();
    let mut server = tokio::process::Command::new(crate::process::BINARY)
        .env(
            "ROADIE__STORE__URL",
            format!("sqlite://{}/roadie.db", dir.path().display()),
        )
        .env("ROADIE__SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env("ROADIE__SERVER__TLS__CERT", &cert)
        .env("ROADIE__SERVER__TLS__KEY", &key)
        .env("ROADIE__SERVER__TLS__RELOAD_INTERVAL", "1h")
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn roadie-server");
    let mut lines = tokio::io::BufReader::new(server.stderr.take().expect("stderr")).lines();
    let mut until_logged = async |text: &str| {
        tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.expect("stderr") {
                if line.contains(text) {
                    return;
                }
            }
            panic!("the server ended before logging {text:?}");
        })
        .await
        .expect("logged in time");
    };
    until_logged("roadie-server listening").await;
    let url = format!("https://127.0.0.1:{port}");
    let before = Client::connect_with(url.clone(), &trusting(&ca))
        .await
        .expect("the first certificate");
    before.health("").await.expect("health");

    let next = Ca::new("the next CA");
    let leaf = next.server();
    write(dir.path(), "server.key", &leaf.key);
    write(dir.path(), "server.pem", &leaf.cert);
    let pid = server.id().expect("running").to_string();
    let sent = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("kill");
    assert!(sent.success());
    until_logged("TLS certificate and keys reloaded").await;
    let after = Client::connect_with(url.clone(), &trusting(&next))
        .await
        .expect("the new certificate after SIGHUP");
    after.health("").await.expect("health");
    before
        .health("")
        .await
        .expect("the open connection is kept");

    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(sent.success());
    let status = tokio::time::timeout(Duration::from_secs(20), server.wait())
        .await
        .expect("stops")
        .expect("wait");
    assert!(status.success(), "{status}");
}

/// A public listen address is accepted once tokens guard the port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_guard_a_public_port() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = crate::process::free_port();
    let config = write(
        dir.path(),
        "roadie.toml",
        &format!(
            "[server]\nlisten = \"0.0.0.0:{port}\"\n\n[store]\nurl = \"sqlite://{}/roadie.db\"\n\n\
             [[auth.tokens]]\nname = \"app\"\nrole = \"read\"\ntoken_sha256 = \"{}\"\n",
            dir.path().display(),
            roadie_server::token_digest(READER)
        ),
    );
    let mut server = tokio::process::Command::new(crate::process::BINARY)
        .arg("--config")
        .arg(&config)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn roadie-server");
    let addr = format!("127.0.0.1:{port}");
    crate::process::wait_until_serving(&addr).await;
    let client = Client::connect(format!("http://{addr}"), TIMEOUT)
        .await
        .expect("connect");
    let error = client.get(get("k")).await.expect_err("a token is needed");
    assert_eq!(error.code(), Some(Code::Unauthenticated));
    let reader = client.with_token(READER).expect("token");
    reader.get(get("k")).await.expect("the reader may read");
    server.start_kill().expect("kill");
    server.wait().await.expect("wait");
}
