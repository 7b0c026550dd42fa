//! Hostile request bodies: for every RPC, a valid request message mutated
//! (bytes flipped, set, inserted, deleted, the message cut short) or
//! replaced by random bytes, sent as a gRPC message to the `roadie-server`
//! binary. Every input gets a gRPC status (or, for Watch, a stream that
//! starts), none makes the server panic or drop the connection, and the
//! server is healthy afterwards. Cases per run: `ROADIE_FUZZ_CASES`
//! (default 3000), from a seed printed at the start (`ROADIE_FUZZ_SEED` to
//! replay one).

use std::time::Duration;

use bytes::Bytes;
use proptest::{
    prelude::*,
    test_runner::{Config, RngAlgorithm, TestRng, TestRunner},
};
use prost::Message;
use roadie_client::proto;

use crate::abuse::{Server, grpc_request, h2_connect};

fn snapshot_header() -> proto::SnapshotHeader {
    proto::SnapshotHeader {
        name: "library".to_owned(),
        library_mtime: Some(prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 0,
        }),
        processed_ids: vec!["t1".to_owned()],
    }
}

/// A valid request of each RPC, encoded.
fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let put = proto::PutRequest {
        key: "artist:daft punk".to_owned(),
        value: Bytes::from_static(b"{\"name\":\"Daft Punk\"}"),
        media_type: "application/json".to_owned(),
        policy: "generic".to_owned(),
        tags: vec!["artist:daft punk".to_owned()],
        confidence: 90,
        keep_higher_confidence: true,
        ttl: Some(prost_types::Duration {
            seconds: 60,
            nanos: 0,
        }),
        ..Default::default()
    };
    let get = proto::GetRequest {
        key: "artist:daft punk".to_owned(),
        max_stale: Some(prost_types::Duration {
            seconds: 5,
            nanos: 0,
        }),
        min_confidence: 10,
        ..Default::default()
    };
    vec![
        ("/roadie.v1.Cache/Get", get.encode_to_vec()),
        (
            "/roadie.v1.Cache/BatchGet",
            proto::BatchGetRequest {
                keys: vec!["a".to_owned(), "b".to_owned()],
                min_confidence: 1,
                policy: "generic".to_owned(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        ("/roadie.v1.Cache/Put", put.encode_to_vec()),
        (
            "/roadie.v1.Cache/Delete",
            proto::DeleteRequest {
                key: "a".to_owned(),
                if_revision: Some(3),
            }
            .encode_to_vec(),
        ),
        (
            "/roadie.v1.Cache/Invalidate",
            proto::InvalidateRequest {
                selector: Some(proto::invalidate_request::Selector::KeyPrefix(
                    "artist:".to_owned(),
                )),
            }
            .encode_to_vec(),
        ),
        (
            "/roadie.v1.Cache/GetRandom",
            proto::GetRandomRequest {
                tag: "artist:daft punk".to_owned(),
                policy: "generic".to_owned(),
                provider: "images".to_owned(),
            }
            .encode_to_vec(),
        ),
        (
            "/roadie.v1.Cache/Fetch",
            proto::FetchRequest {
                provider: "musicbrainz".to_owned(),
                path: "artist/056e4f3e?fmt=json".to_owned(),
                mode: proto::FetchMode::Background.into(),
                priority: 5,
                tags: vec!["t".to_owned()],
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "/roadie.v1.Cache/BatchFetch",
            proto::BatchFetchRequest {
                items: vec![
                    proto::BatchFetchItem {
                        provider: "musicbrainz".to_owned(),
                        path: "artist/056e4f3e?fmt=json".to_owned(),
                        policy: "api_metadata".to_owned(),
                        tags: vec!["artist:daft punk".to_owned()],
                        priority: 4,
                    },
                    proto::BatchFetchItem {
                        provider: "coverartarchive".to_owned(),
                        path: "release/76df3287".to_owned(),
                        ..Default::default()
                    },
                ],
                priority: 3,
            }
            .encode_to_vec(),
        ),
        (
            "/roadie.v1.Cache/PublishEvent",
            proto::PublishEventRequest {
                kind: proto::LibraryEventKind::TrackModified.into(),
                track_id: "42".to_owned(),
                artist: "Daft Punk".to_owned(),
                album: "Discovery".to_owned(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "/roadie.v1.Cache/Watch",
            proto::WatchRequest {
                key_prefix: "artist:".to_owned(),
                tags: vec!["x".to_owned()],
                kinds: vec![1, 2],
                after_revision: Some(0),
                include_values: true,
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        ("/roadie.v1.Cache/Stats", Vec::new()),
        (
            "/roadie.v1.Cache/ListEntries",
            proto::ListEntriesRequest {
                key_prefix: "artist:".to_owned(),
                tag: "artist:daft punk".to_owned(),
                policy: "generic".to_owned(),
                status: proto::EntryStatus::Fresh.into(),
                page_size: 10,
                page_token: "3.61".to_owned(),
                without_values: true,
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "/roadie.v1.Snapshots/PutSnapshot",
            proto::PutSnapshotRequest {
                header: Some(snapshot_header()),
                tracks: vec![proto::Track {
                    id: "t1".to_owned(),
                    json: br#"{"id":"t1","title":"One More Time"}"#.to_vec(),
                }],
            }
            .encode_to_vec(),
        ),
        (
            "/roadie.v1.Snapshots/MergeSnapshot",
            proto::MergeSnapshotRequest {
                header: Some(snapshot_header()),
                updates: vec![proto::Track {
                    id: "t2".to_owned(),
                    json: br#"{"id":"t2"}"#.to_vec(),
                }],
                removed_ids: vec!["t1".to_owned()],
            }
            .encode_to_vec(),
        ),
        (
            "/roadie.v1.Snapshots/GetSnapshot",
            proto::GetSnapshotRequest {
                name: "library".to_owned(),
                validity: Some(proto::Validity {
                    library_mtime: Some(prost_types::Timestamp {
                        seconds: 1_700_000_000,
                        nanos: 5,
                    }),
                    max_age: Some(prost_types::Duration {
                        seconds: 86_400,
                        nanos: 0,
                    }),
                }),
                only_if_valid: true,
                chunk_tracks: 10,
            }
            .encode_to_vec(),
        ),
        (
            "/roadie.v1.Snapshots/GetSnapshotInfo",
            proto::GetSnapshotInfoRequest {
                name: "library".to_owned(),
                validity: None,
            }
            .encode_to_vec(),
        ),
        (
            "/roadie.v1.Snapshots/DeleteSnapshot",
            proto::DeleteSnapshotRequest {
                name: "library".to_owned(),
            }
            .encode_to_vec(),
        ),
        (
            "/roadie.v1.Jobs/GetJob",
            proto::GetJobRequest { id: 7 }.encode_to_vec(),
        ),
        (
            "/roadie.v1.Jobs/ListJobs",
            proto::ListJobsRequest {
                state: 1,
                provider: "musicbrainz".to_owned(),
                page_size: 10,
                page_token: "abc".to_owned(),
            }
            .encode_to_vec(),
        ),
        (
            "/roadie.v1.Jobs/CancelJob",
            proto::CancelJobRequest { id: 7 }.encode_to_vec(),
        ),
        (
            "/roadie.v1.Jobs/RetryJob",
            proto::RetryJobRequest { id: 7 }.encode_to_vec(),
        ),
    ]
}

/// The deadline each request carries (`grpc-timeout`).
const DEADLINE: &str = "1S";

/// One change to a message's bytes.
#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, bit: u8 },
    Set { at: usize, to: u8 },
    Insert { at: usize, bytes: Vec<u8> },
    Delete { at: usize, len: usize },
    Truncate { at: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0..8_u8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        (
            any::<usize>(),
            prop_oneof![Just(0_u8), Just(0x7f), Just(0x80), Just(0xff), any::<u8>()]
        )
            .prop_map(|(at, to)| Mutation::Set { at, to }),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..24))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (any::<usize>(), 1..16_usize).prop_map(|(at, len)| Mutation::Delete { at, len }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
    ]
}

fn apply(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for mutation in mutations {
        let len = bytes.len();
        let at = |at: usize| if len == 0 { 0 } else { at % (len + 1) };
        match mutation {
            Mutation::Flip { at: i, bit } if len > 0 => bytes[i % len] ^= 1 << bit,
            Mutation::Set { at: i, to } if len > 0 => bytes[i % len] = *to,
            Mutation::Insert { at: i, bytes: new } => {
                let i = at(*i);
                bytes.splice(i..i, new.iter().copied());
            }
            Mutation::Delete { at: i, len: n } if len > 0 => {
                let i = i % len;
                bytes.drain(i..(i + n).min(len));
            }
            Mutation::Truncate { at: i } => bytes.truncate(at(*i)),
            _ => {}
        }
    }
    bytes
}

/// How the server answered one input.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Clone, Copy)]
enum Answer {
    Status(i32),
    StreamStarted,
}

/// Sends `message` as one gRPC message; `None` when the stream or the
/// connection broke instead of answering.
async fn send(
    sender: &h2::client::SendRequest<Bytes>,
    addr: &str,
    path: &str,
    message: &[u8],
) -> Option<Answer> {
    let mut ready = sender.clone().ready().await.ok()?;
    // A deadline, as every real client sends: a Fetch that waits for a
    // worker (there is none here) answers within it.
    let request = grpc_request(addr, path, &[("grpc-timeout", DEADLINE.to_owned())]);
    let (response, mut body) = ready.send_request(request, false).ok()?;
    let mut frame = Vec::with_capacity(message.len() + 5);
    frame.push(0);
    frame.extend_from_slice(&u32::try_from(message.len()).ok()?.to_be_bytes());
    frame.extend_from_slice(message);
    body.send_data(Bytes::from(frame), true).ok()?;
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .ok()?
        .ok()?;
    if let Some(status) = response.headers().get("grpc-status") {
        return status.to_str().ok()?.parse().ok().map(Answer::Status);
    }
    if path.ends_with("/Watch") {
        // A valid Watch: the stream is open. Dropping it resets it.
        return Some(Answer::StreamStarted);
    }
    let mut body = response.into_body();
    let drained = async {
        while let Some(chunk) = body.data().await {
            let chunk = chunk.ok()?;
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        body.trailers().await.ok()?
    };
    let trailers = tokio::time::timeout(Duration::from_secs(10), drained)
        .await
        .ok()??;
    trailers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse()
        .ok()
        .map(Answer::Status)
}

#[test]
fn mutated_requests_get_a_status_and_never_a_panic() {
    let cases: u32 = std::env::var("ROADIE_FUZZ_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(3000);
    let seed: u64 = std::env::var("ROADIE_FUZZ_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("fuzz: {cases} cases, seed {seed} (ROADIE_FUZZ_SEED={seed} replays them)");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let server = runtime.block_on(Server::start(&[]));
    let addr = server.addr.clone();
    let sender = runtime.block_on(h2_connect(&addr));
    let seeds = seeds();
    let mut seed_bytes = [0_u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    );
    let input = (
        0..seeds.len(),
        prop_oneof![
            4 => prop::collection::vec(mutation(), 1..6).prop_map(Some),
            1 => Just(None),
        ],
        prop::collection::vec(any::<u8>(), 0..256),
    );
    let answers = std::cell::RefCell::new(std::collections::BTreeMap::<Answer, u64>::new());
    let result = runner.run(&input, |(rpc, mutations, random)| {
        let (path, valid) = &seeds[rpc];
        let message = match &mutations {
            Some(mutations) => apply(valid.clone(), mutations),
            None => random,
        };
        let answer = runtime.block_on(send(&sender, &addr, path, &message));
        let Some(answer) = answer else {
            return Err(TestCaseError::fail(format!(
                "{path}: no gRPC status for {message:02x?}"
            )));
        };
        *answers.borrow_mut().entry(answer).or_default() += 1;
        Ok(())
    });
    eprintln!("fuzz answers: {:?}", answers.borrow());
    if let Err(error) = result {
        panic!("{error}");
    }
    runtime.block_on(server.assert_healthy());
    runtime.block_on(server.stop());
}
