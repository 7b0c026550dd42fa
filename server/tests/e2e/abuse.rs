//! Transport abuse against the `roadie-server` binary: oversize length
//! prefixes, unknown encodings, huge headers, stalled request bodies on many
//! streams, idle and silent connections, descriptor exhaustion, and Watch
//! streams opened and dropped by the thousand. After each, the server still
//! answers, and its resident memory (from /proc) stays under a stated bound.

use std::{
    io::{BufRead, BufReader},
    process::Stdio,
    time::Duration,
};

use bytes::Bytes;
use roadie_client::{Client, proto};
use tokio::{io::AsyncReadExt, net::TcpStream};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::process::{BINARY, free_port, wait_until_serving};

/// A server process with the given settings (environment variables).
pub(crate) struct Server {
    child: tokio::process::Child,
    pub(crate) addr: String,
    _dir: tempfile::TempDir,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Server {
    pub(crate) async fn start(settings: &[(&str, &str)]) -> Server {
        Server::start_with(settings, None).await
    }

    /// `open_files`: the process's descriptor limit (`ulimit -n`).
    async fn start_with(settings: &[(&str, &str)], open_files: Option<u32>) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut command = match open_files {
            Some(limit) => {
                let mut shell = tokio::process::Command::new("bash");
                shell
                    .arg("-c")
                    .arg(format!("ulimit -n {limit} && exec \"$0\""))
                    .arg(BINARY);
                shell
            }
            None => tokio::process::Command::new(BINARY),
        };
        command
            .env(
                "ROADIE__STORE__URL",
                format!("sqlite://{}/roadie.db", dir.path().display()),
            )
            .env("ROADIE__SERVER__LISTEN", &addr)
            .env("ROADIE__LOG__LEVEL", "info")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (name, value) in settings {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("spawn roadie-server");
        let stderr = child.stderr.take().expect("stderr");
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        {
            let log = log.clone();
            let stderr = stderr.into_owned_fd().expect("fd");
            std::thread::spawn(move || {
                for line in BufReader::new(std::fs::File::from(stderr)).lines() {
                    let Ok(line) = line else { break };
                    log.lock().expect("log").push(line);
                }
            });
        }
        wait_until_serving(&addr).await;
        Server {
            child,
            addr,
            _dir: dir,
            log,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// A field of /proc/PID/status in MiB (VmRSS now, VmHWM the peak).
    fn memory(&self, field: &str) -> f64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("status");
        let kib: f64 = status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|rest| rest.trim_start_matches(':').split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .expect("a figure");
        kib / 1024.0
    }

    /// CPU seconds the process has used (user + system).
    fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("stat");
        let after_name = stat.rsplit_once(')').expect("comm").1;
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        // Fields 14 and 15 (utime, stime) are the 12th and 13th after the name.
        let ticks: f64 =
            fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
        ticks / 100.0
    }

    async fn client(&self) -> Client {
        roadie_client::connect(format!("http://{}", self.addr), Duration::from_secs(5))
            .await
            .expect("connect")
    }

    /// The server still answers: health SERVING and a Put/Get round trip.
    pub(crate) async fn assert_healthy(&self) {
        let client = self.client().await;
        let status = client.health("").await.expect("health");
        assert_eq!(status, ServingStatus::Serving);
        client
            .put(crate::common::put("after", "still here"))
            .await
            .expect("put");
        let got = client.get(crate::common::get("after")).await.expect("get");
        assert_eq!(&got.entry.expect("hit").value[..], b"still here");
    }

    fn logged(&self, text: &str) -> bool {
        self.log
            .lock()
            .expect("log")
            .iter()
            .any(|l| l.contains(text))
    }

    pub(crate) async fn stop(mut self) {
        let pid = self.pid().to_string();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status();
        let status = tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("stops")
            .expect("wait");
        assert!(status.success(), "{status}");
        let log = self.log.lock().expect("log");
        assert!(
            !log.iter().any(|l| l.contains("panicked")),
            "no panic: {log:?}"
        );
    }
}

/// An HTTP/2 connection speaking raw gRPC frames.
pub(crate) async fn h2_connect(addr: &str) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (send, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    send
}

pub(crate) fn grpc_request(addr: &str, path: &str, extra: &[(&str, String)]) -> http::Request<()> {
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in extra {
        request = request.header(*name, value.as_str());
    }
    request.body(()).expect("request")
}

/// The grpc-status of an answer (trailers-only, or in the trailers).
async fn grpc_status(response: h2::client::ResponseFuture) -> Option<i32> {
    let response = response.await.ok()?;
    if let Some(status) = response.headers().get("grpc-status") {
        return status.to_str().ok()?.parse().ok();
    }
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let _ = chunk.ok()?;
    }
    let trailers = body.trailers().await.ok()??;
    trailers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// A length prefix beyond the limit, an unknown `grpc-encoding` and a
/// header block beyond `server.transport.max_header_bytes` are each
/// refused at once, and the server goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_refused_at_once() {
    let server = Server::start(&[]).await;
    let mut send = h2_connect(&server.addr).await;

    let request = grpc_request(&server.addr, "/roadie.v1.Cache/Put", &[]);
    let (response, mut body) = send.send_request(request, false).expect("send");
    body.send_data(Bytes::from_static(&[0, 0x7f, 0xff, 0xff, 0xff]), false)
        .expect("prefix");
    let status = tokio::time::timeout(Duration::from_secs(5), grpc_status(response))
        .await
        .expect("refused at once, before any body");
    // tonic's own answer to a message over the decoding limit.
    assert_eq!(status, Some(tonic::Code::OutOfRange as i32));

    let request = grpc_request(
        &server.addr,
        "/roadie.v1.Cache/Get",
        &[("grpc-encoding", "br".to_owned())],
    );
    let (response, mut body) = send.send_request(request, false).expect("send");
    // The server may refuse at the headers and close the stream before the
    // body goes out (then sending it fails): the status is what counts.
    let _ = body.send_data(Bytes::from_static(&[1, 0, 0, 0, 0]), true);
    let status = grpc_status(response).await;
    assert_eq!(status, Some(tonic::Code::Unimplemented as i32));

    let huge = "x".repeat(200 * 1024);
    let request = grpc_request(&server.addr, "/roadie.v1.Cache/Get", &[("x-huge", huge)]);
    let refused = match send.send_request(request, true) {
        Err(_) => true,
        Ok((response, _)) => match response.await {
            Err(_) => true,
            Ok(response) => response.status() == http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        },
    };
    assert!(refused, "a 200 KiB header is not taken");

    server.assert_healthy().await;
    server.stop().await;
}

/// 4 connections × 50 streams, each sending all but the last byte of a
/// 1 MiB message: what the server holds is bounded by
/// `max_buffered_request_bytes` (streams beyond it fail RESOURCE_EXHAUSTED
/// at once), the stalled ones fail DEADLINE_EXCEEDED after
/// `request_stall_timeout`, and the peak resident memory stays within the
/// budget plus a fixed margin. `ROADIE_ABUSE_MESSAGE_MIB` and
/// `ROADIE_ABUSE_BUDGET_MIB` (default 1 and 32) replay the report's case
/// on the default budget (8 and 256).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_request_bodies_are_bounded_and_timed_out() {
    let mib = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|value| value.parse().ok())
            .unwrap_or(default)
    };
    let (message_mib, budget_mib) = (
        mib("ROADIE_ABUSE_MESSAGE_MIB", 1),
        mib("ROADIE_ABUSE_BUDGET_MIB", 32),
    );
    let server = Server::start(&[
        (
            "ROADIE__SERVER__TRANSPORT__MAX_BUFFERED_REQUEST_BYTES",
            &(budget_mib * 1024 * 1024).to_string(),
        ),
        ("ROADIE__SERVER__TRANSPORT__REQUEST_STALL_TIMEOUT", "2s"),
    ])
    .await;
    let before = server.memory("VmRSS");
    let message = message_mib * 1024 * 1024;
    let mut answers = Vec::new();
    let mut bodies = Vec::new();
    for _ in 0..4 {
        let mut send = h2_connect(&server.addr).await;
        for _ in 0..50 {
            send = send.ready().await.expect("stream capacity");
            let request = grpc_request(&server.addr, "/roadie.v1.Cache/Put", &[]);
            let (response, mut body) = send.send_request(request, false).expect("send");
            let mut frame = Vec::with_capacity(message);
            frame.push(0);
            frame.extend_from_slice(&u32::try_from(message).expect("size").to_be_bytes());
            frame.resize(message, b'x');
            // All but the last byte of the message.
            let _ = body.send_data(Bytes::from(frame), false);
            answers.push(tokio::spawn(grpc_status(response)));
            bodies.push(body);
        }
    }
    let mut codes = std::collections::BTreeMap::<Option<i32>, usize>::new();
    for answer in answers {
        let code = tokio::time::timeout(Duration::from_secs(30), answer)
            .await
            .expect("every stream is answered")
            .expect("task");
        *codes.entry(code).or_default() += 1;
    }
    drop(bodies);
    let peak = server.memory("VmHWM");
    eprintln!(
        "stalled bodies: 200 streams of {message_mib} MiB - 1 byte, budget {budget_mib} MiB; answers {codes:?}; resident before {before:.1} MiB, peak {peak:.1} MiB"
    );
    let stalled = codes
        .get(&Some(tonic::Code::DeadlineExceeded as i32))
        .copied()
        .unwrap_or(0);
    let exhausted = codes
        .get(&Some(tonic::Code::ResourceExhausted as i32))
        .copied()
        .unwrap_or(0);
    assert!(stalled > 0, "stalled streams time out: {codes:?}");
    assert!(
        exhausted > 0,
        "streams past the budget are refused: {codes:?}"
    );
    assert_eq!(stalled + exhausted, 200, "{codes:?}");
    assert!(
        peak < before + budget_mib as f64 * 2.0 + 64.0,
        "peak {peak:.1} MiB from {before:.1} MiB"
    );
    server.assert_healthy().await;
    server.stop().await;
}

/// Past `max_connections` a connection is closed at once; connections that
/// never send a byte are closed after `handshake_timeout`; a client whose
/// connection was closed for idleness reconnects by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_excess_connections_are_closed() {
    let server = Server::start(&[
        ("ROADIE__SERVER__TRANSPORT__MAX_CONNECTIONS", "1000"),
        ("ROADIE__SERVER__TRANSPORT__HANDSHAKE_TIMEOUT", "1s"),
        ("ROADIE__SERVER__TRANSPORT__IDLE_TIMEOUT", "1s"),
    ])
    .await;
    let client = server.client().await;
    client
        .put(crate::common::put("k", "v"))
        .await
        .expect("a first call");
    let before = server.memory("VmRSS");
    let mut idle = Vec::new();
    for _ in 0..2000 {
        idle.push(TcpStream::connect(&server.addr).await.expect("connect"));
    }
    // Every one ends: the excess at once, the rest when their first bytes
    // are overdue.
    let closed = futures::future::join_all(idle.iter_mut().map(|stream| async move {
        let mut byte = [0_u8; 64];
        loop {
            match tokio::time::timeout(Duration::from_secs(20), stream.read(&mut byte)).await {
                Ok(Ok(0) | Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }))
    .await;
    let held = closed.iter().filter(|closed| !**closed).count();
    let peak = server.memory("VmHWM");
    eprintln!(
        "idle connections: 2000 opened, {held} still open after 20 s; resident before {before:.1} MiB, peak {peak:.1} MiB"
    );
    assert_eq!(held, 0);
    assert!(server.logged("connection limit reached"));
    drop(idle);
    // The first client's connection went idle and was closed meanwhile; its
    // next call reconnects.
    client
        .get(crate::common::get("k"))
        .await
        .expect("the client reconnects after an idle close");
    server.assert_healthy().await;
    server.stop().await;
}

/// With its descriptors used up, the server backs off instead of spinning
/// (its CPU time stays low while connections keep arriving), says so in
/// its log, and serves again once descriptors are free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptor_exhaustion_backs_off_and_logs() {
    let server = Server::start_with(
        &[("ROADIE__SERVER__TRANSPORT__HANDSHAKE_TIMEOUT", "60s")],
        Some(128),
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..200 {
        if let Ok(stream) = TcpStream::connect(&server.addr).await {
            held.push(stream);
        }
    }
    let cpu_before = server.cpu_seconds();
    let window = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < window {
        if let Ok(Ok(stream)) =
            tokio::time::timeout(Duration::from_millis(50), TcpStream::connect(&server.addr)).await
        {
            held.push(stream);
        }
    }
    let cpu = server.cpu_seconds() - cpu_before;
    eprintln!(
        "descriptors exhausted: {} connections held, {cpu:.2} CPU s over 2 s",
        held.len()
    );
    assert!(cpu < 0.5, "the accept loop spins: {cpu:.2} CPU s in 2 s");
    assert!(server.logged("cannot accept connections; backing off"));
    drop(held);
    server.assert_healthy().await;
    server.stop().await;
}

/// 2 000 Watch streams opened (over 20 connections) and dropped, four
/// times: every stream's task ends (the server's watcher count is back to
/// 0), and resident memory does not keep growing: what the first round took
/// is reused, not leaked (the allocator keeps it rather than giving it
/// back, so it does not return to the starting figure).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_opened_and_dropped_leave_nothing_behind() {
    let server = Server::start(&[("ROADIE__WATCH__MAX_PER_CLIENT", "5000")]).await;
    let before = server.memory("VmRSS");
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(server.client().await);
    }
    let mut after_round = Vec::new();
    for _ in 0..4 {
        let mut streams = Vec::new();
        for index in 0..2000 {
            let client = &clients[index % clients.len()];
            let stream = client
                .watch_once(proto::WatchRequest {
                    include_values: true,
                    ..Default::default()
                })
                .await
                .expect("a watch");
            streams.push(stream);
        }
        let watching = clients[0]
            .stats(Default::default())
            .await
            .expect("stats")
            .watchers;
        assert!(watching >= 2000, "{watching} watchers");
        drop(streams);
        let gone = async {
            while clients[0]
                .stats(Default::default())
                .await
                .expect("stats")
                .watchers
                > 0
            {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), gone)
            .await
            .expect("every dropped stream's task ends");
        after_round.push(server.memory("VmRSS"));
    }
    let peak = server.memory("VmHWM");
    eprintln!(
        "watch streams: 4 rounds of 2000 opened and dropped; resident before {before:.1} MiB, after each round {after_round:.1?} MiB, peak {peak:.1} MiB"
    );
    // A leak would cost every round what the first one took; the
    // allocator settling costs less each round.
    let first = after_round[0] - before;
    let last = after_round[3] - after_round[2];
    assert!(
        last < first / 4.0,
        "resident memory grows round after round: {after_round:.1?} MiB from {before:.1} MiB"
    );
    server.assert_healthy().await;
    drop(clients);
    server.stop().await;
}
