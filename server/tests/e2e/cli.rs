//! The `roadie` tool against a real server: outputs and the exit codes
//! scripts rely on.

use clap::Parser;
use roadie_client::cli::{self, Cli, Exit};
use roadie_store::Backend;

use crate::common::{on_both_backends, roadie, start};

async fn exit_codes_and_output_scripts_rely_on(backend: Backend) {
    let server = start!(backend);
    let (exit, _, err) = roadie(
        &server,
        &[
            "put",
            "greeting",
            "hello",
            "--tag",
            "lang:en",
            "--confidence",
            "80",
        ],
        "",
    )
    .await;
    assert_eq!(exit, Exit::Success, "{err}");
    let (exit, out, _) = roadie(&server, &["get", "greeting"], "").await;
    assert_eq!(exit, Exit::Success);
    assert!(out.contains("hello"), "{out}");

    let (exit, out, _) = roadie(&server, &["health"], "").await;
    assert_eq!((exit, out.as_str()), (Exit::Success, "SERVING\n"));
    let (exit, out, _) = roadie(
        &server,
        &["--json", "health", "--service", "roadie.v1.Jobs"],
        "",
    )
    .await;
    assert_eq!(exit, Exit::Success);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).expect("one JSON object"),
        serde_json::json!({"service": "roadie.v1.Jobs", "status": "SERVING"})
    );
    let (exit, _, err) = roadie(&server, &["health", "--service", "no.such.Service"], "").await;
    assert_eq!(
        exit,
        Exit::Error,
        "an unknown service is an error, not a verdict"
    );
    assert!(
        err.contains("NotFound") || err.contains("not found"),
        "{err}"
    );

    let (exit, out, _) = roadie(&server, &["--json", "get", "greeting"], "").await;
    assert_eq!(exit, Exit::Success);
    let json: serde_json::Value = serde_json::from_str(&out).expect("one JSON object");
    assert_eq!(json["entry"]["value"], "hello", "{json}");
    assert_eq!(json["entry"]["tags"][0], "lang:en", "{json}");

    assert_eq!(roadie(&server, &["get", "absent"], "").await.0, Exit::Miss);
    // Value from stdin, and a negative entry.
    let (exit, _, err) = roadie(&server, &["put", "piped", "--stdin"], "from stdin").await;
    assert_eq!(exit, Exit::Success, "{err}");
    assert!(
        roadie(&server, &["get", "piped"], "")
            .await
            .1
            .contains("from stdin")
    );
    assert_eq!(
        roadie(&server, &["put", "gone", "", "--negative"], "")
            .await
            .0,
        Exit::Success
    );
    assert_eq!(
        roadie(&server, &["get", "gone"], "").await.0,
        Exit::Negative
    );
    // Not written: lower confidence, or a revision that does not match.
    let (exit, out, _) = roadie(
        &server,
        &[
            "put",
            "greeting",
            "bye",
            "--confidence",
            "10",
            "--keep-higher-confidence",
        ],
        "",
    )
    .await;
    assert_eq!(exit, Exit::NotWritten, "{out}");
    assert_eq!(
        roadie(
            &server,
            &["put", "greeting", "bye", "--if-revision", "999"],
            ""
        )
        .await
        .0,
        Exit::NotWritten
    );
    // Errors name the field.
    let (exit, _, err) = roadie(&server, &["put", "bad", "v", "--policy", "nope"], "").await;
    assert_eq!(exit, Exit::Error);
    assert!(err.contains("policy"), "{err}");
    // Random, invalidate, event, stats, delete.
    assert_eq!(
        roadie(&server, &["random", "lang:en"], "").await.0,
        Exit::Success
    );
    assert_eq!(
        roadie(&server, &["random", "lang:xx"], "").await.0,
        Exit::Miss
    );
    let (exit, out, _) = roadie(&server, &["--json", "invalidate", "--tag", "lang:en"], "").await;
    assert_eq!(exit, Exit::Success);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).expect("json")["count"],
        1,
        "{out}"
    );
    assert_eq!(
        roadie(&server, &["event", "library-sync"], "").await.0,
        Exit::Success
    );
    let (exit, out, _) = roadie(&server, &["--json", "stats"], "").await;
    assert_eq!(exit, Exit::Success);
    assert!(out.contains("\"generic\""), "{out}");
    assert_eq!(
        roadie(&server, &["delete", "piped"], "").await.0,
        Exit::Success
    );
    assert_eq!(
        roadie(&server, &["delete", "piped"], "").await.0,
        Exit::Miss
    );
    server.stop().await;
}

async fn jobs_commands(backend: Backend) {
    let server = start!(backend);
    let job = roadie_store::JobNew {
        provider: "musicbrainz".to_owned(),
        url: "https://musicbrainz.org/ws/2/artist/x".to_owned(),
        policy: "api_metadata".to_owned(),
        tags: vec![],
        priority: 2,
        max_attempts: 3,
        traceparent: None,
        now: roadie_store::now_ms(),
    };
    let (job, _) = server.store().job_enqueue(&job).await.expect("enqueue");
    let id = job.id.to_string();
    let (exit, out, _) = roadie(&server, &["jobs", "list", "--state", "available"], "").await;
    assert_eq!(exit, Exit::Success);
    assert!(
        out.contains("https://musicbrainz.org/ws/2/artist/x"),
        "{out}"
    );
    let (exit, out, _) = roadie(&server, &["--json", "jobs", "show", &id], "").await;
    assert_eq!(exit, Exit::Success);
    let json: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(json["job"]["state"], "available", "{json}");
    let (exit, out, _) = roadie(&server, &["jobs", "cancel", &id], "").await;
    assert_eq!(exit, Exit::Success);
    assert!(out.contains("cancelled"), "{out}");
    let (exit, out, _) = roadie(&server, &["--json", "jobs", "retry", &id], "").await;
    assert_eq!(exit, Exit::Success);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).expect("json")["job"]["state"],
        "available"
    );
    assert_eq!(
        roadie(&server, &["jobs", "show", "999999"], "").await.0,
        Exit::Miss
    );
    let (exit, _, err) = roadie(&server, &["jobs", "retry", &id], "").await;
    assert_eq!(exit, Exit::Error);
    assert!(err.contains("only failed or cancelled"), "{err}");
    server.stop().await;
}

/// An address asking for TLS never falls back to cleartext: against a
/// cleartext server, https:// fails to connect, and grpcs:// is refused.
async fn tls_addresses_are_never_downgraded(backend: Backend) {
    let server = start!(backend);
    for scheme in ["https", "grpcs", "HTTPS"] {
        let url = format!("{scheme}://{}", server.addr);
        let cli = Cli::try_parse_from(["roadie", "--server", url.as_str(), "get", "k"])
            .expect("valid command line");
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let exit = cli::run(cli, &mut &b""[..], &mut out, &mut err).await;
        let err = String::from_utf8_lossy(&err);
        assert_eq!(exit, Exit::Error, "{scheme}: {err}");
        let expected = if scheme == "grpcs" {
            "grpcs:// is not supported".to_owned()
        } else {
            format!("cannot connect to {url}")
        };
        assert!(err.contains(&expected), "{err}");
    }
    server.stop().await;
}

on_both_backends!(
    exit_codes_and_output_scripts_rely_on,
    jobs_commands,
    tls_addresses_are_never_downgraded
);

#[tokio::test]
async fn no_server_is_an_error_exit() {
    let cli = Cli::try_parse_from([
        "roadie",
        "--server",
        "http://127.0.0.1:1",
        "--timeout",
        "2s",
        "get",
        "k",
    ])
    .expect("valid command line");
    let (mut out, mut err) = (Vec::new(), Vec::new());
    assert_eq!(
        cli::run(cli, &mut &b""[..], &mut out, &mut err).await,
        Exit::Error
    );
    assert!(String::from_utf8_lossy(&err).contains("connect"));
}
