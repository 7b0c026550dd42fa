//! The calls a load drives: Roadie's RPCs (also against the empty service),
//! Redis `GET`, and a plain HTTP `GET`. Each checks its answer, so a load
//! that measured errors says so instead of reporting them as speed.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use futures::StreamExt as _;
use roadie_proto::v1::{self as pb, cache_client::CacheClient};
use tonic::transport::{Channel, Endpoint};

use crate::load::Call;

/// `count` separate HTTP/2 connections to `addr`; caller `slot` uses
/// connection `slot % count`.
pub async fn channels(addr: &str, count: usize) -> anyhow::Result<Vec<Channel>> {
    let mut channels = Vec::with_capacity(count);
    for _ in 0..count {
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect()
            .await?;
        channels.push(channel);
    }
    Ok(channels)
}

fn stub(channels: &[Channel], slot: usize) -> CacheClient<Channel> {
    CacheClient::new(channels[slot % channels.len()].clone())
        .max_decoding_message_size(64 * 1024 * 1024)
}

/// A key of `keys` for this call, spread uniformly over the set (a
/// SplitMix64 step of the caller and its sequence number).
pub fn pick(keys: &[String], slot: usize, seq: u64) -> &str {
    let mut z = ((slot as u64) << 40 ^ seq).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    &keys[(z % keys.len() as u64) as usize]
}

fn lookup(status: i32) -> String {
    pb::LookupStatus::try_from(status)
        .map(|s| s.as_str_name().to_owned())
        .unwrap_or_else(|_| status.to_string())
}

/// The keys the reads go to: `bench:hot:0` to `bench:hot:{count-1}`.
pub fn hot_keys(count: usize) -> Arc<Vec<String>> {
    Arc::new((0..count).map(|i| format!("bench:hot:{i}")).collect())
}

/// Writes every key of `keys` with `value` through `channels`, 16 at a time.
pub async fn put_all(channels: &[Channel], keys: &[String], value: &Bytes) -> anyhow::Result<()> {
    let mut writes = futures::stream::iter(keys.iter().enumerate().map(|(i, key)| {
        let mut stub = stub(channels, i);
        let request = put_request(key.clone(), value);
        async move { stub.put(request).await }
    }))
    .buffer_unordered(16);
    while let Some(result) = futures::StreamExt::next(&mut writes).await {
        result?;
    }
    Ok(())
}

/// `Get` of `keys`, each answer must be `want`.
pub fn get(channels: Vec<Channel>, keys: Arc<Vec<String>>, want: pb::LookupStatus) -> Call {
    Arc::new(move |slot, seq| {
        let mut stub = stub(&channels, slot);
        let key = pick(&keys, slot, seq).to_owned();
        Box::pin(async move {
            let answer = stub
                .get(pb::GetRequest {
                    key,
                    ..Default::default()
                })
                .await
                .map_err(|status| status.to_string())?
                .into_inner();
            if answer.status == i32::from(want) {
                Ok(())
            } else {
                Err(format!(
                    "expected {}, got {}",
                    want.as_str_name(),
                    lookup(answer.status)
                ))
            }
        })
    })
}

/// `Get` of a key never written: every call a miss that reaches the store.
pub fn get_miss(channels: Vec<Channel>) -> Call {
    Arc::new(move |slot, seq| {
        let mut stub = stub(&channels, slot);
        Box::pin(async move {
            let answer = stub
                .get(pb::GetRequest {
                    key: format!("bench:absent:{slot}:{seq}"),
                    ..Default::default()
                })
                .await
                .map_err(|status| status.to_string())?
                .into_inner();
            match pb::LookupStatus::try_from(answer.status) {
                Ok(pb::LookupStatus::Miss) => Ok(()),
                _ => Err(format!("expected MISS, got {}", lookup(answer.status))),
            }
        })
    })
}

/// `BatchGet` of `batch` keys of `keys`, every one a hit.
pub fn batch_get(channels: Vec<Channel>, keys: Arc<Vec<String>>, batch: usize) -> Call {
    Arc::new(move |slot, seq| {
        let mut stub = stub(&channels, slot);
        let wanted = (0..batch as u64)
            .map(|k| pick(&keys, slot, seq * batch as u64 + k).to_owned())
            .collect();
        Box::pin(async move {
            let answer = stub
                .batch_get(pb::BatchGetRequest {
                    keys: wanted,
                    ..Default::default()
                })
                .await
                .map_err(|status| status.to_string())?
                .into_inner();
            match answer
                .results
                .iter()
                .find(|r| r.status != i32::from(pb::LookupStatus::Hit))
            {
                None if answer.results.len() == batch => Ok(()),
                None => Err(format!("{} results for {batch} keys", answer.results.len())),
                Some(result) => Err(format!("expected HIT, got {}", lookup(result.status))),
            }
        })
    })
}

/// The request that writes `key` with `value`.
pub fn put_request(key: String, value: &Bytes) -> pb::PutRequest {
    pb::PutRequest {
        key,
        value: value.clone(),
        media_type: "application/json".to_owned(),
        // A run may outlast the default policy's TTL; a benchmark key must not expire mid-run.
        no_expiry: true,
        ..Default::default()
    }
}

/// `Put` of a new key every call.
pub fn put(channels: Vec<Channel>, value: Bytes) -> Call {
    Arc::new(move |slot, seq| {
        let mut stub = stub(&channels, slot);
        let request = put_request(format!("bench:put:{slot}:{seq}"), &value);
        Box::pin(async move {
            let answer = stub
                .put(request)
                .await
                .map_err(|status| status.to_string())?
                .into_inner();
            if answer.outcome == i32::from(pb::PutOutcome::Written) {
                Ok(())
            } else {
                Err(format!("put outcome {}", answer.outcome))
            }
        })
    })
}

/// Nine `Get` hits of `keys` to one `Put` overwriting one of them.
pub fn mixed(channels: Vec<Channel>, keys: Arc<Vec<String>>, value: Bytes) -> Call {
    let get = get(channels.clone(), keys.clone(), pb::LookupStatus::Hit);
    Arc::new(move |slot, seq| {
        if seq % 10 != 9 {
            return get(slot, seq);
        }
        let mut stub = stub(&channels, slot);
        let request = put_request(pick(&keys, slot, seq).to_owned(), &value);
        Box::pin(async move {
            stub.put(request)
                .await
                .map_err(|status| status.to_string())?;
            Ok(())
        })
    })
}

/// `Fetch` in mode WAIT of a path never fetched before, under `provider`:
/// each call is a miss, a job, a worker's request upstream, and the entry.
pub fn fetch_cold(channels: Vec<Channel>, provider: String, run: String) -> Call {
    Arc::new(move |slot, seq| {
        let mut stub = stub(&channels, slot);
        let mut request = tonic::Request::new(pb::FetchRequest {
            provider: provider.clone(),
            path: format!("item/{run}-{slot}-{seq}"),
            mode: pb::FetchMode::Wait.into(),
            ..Default::default()
        });
        request.set_timeout(Duration::from_secs(10));
        Box::pin(async move {
            let answer = stub
                .fetch(request)
                .await
                .map_err(|status| status.to_string())?
                .into_inner();
            match answer.entry {
                Some(_) => Ok(()),
                None => Err("no entry before the deadline (job handle answered)".to_owned()),
            }
        })
    })
}

/// A plain `GET` of the same kind of URL [`fetch_cold`] makes the worker
/// fetch, with reqwest: what a client that fetched by itself would pay.
pub fn http_get(client: reqwest::Client, base: String, run: String) -> Call {
    Arc::new(move |slot, seq| {
        let request = client.get(format!("{base}item/{run}-{slot}-{seq}"));
        Box::pin(async move {
            let response = request.send().await.map_err(|e| e.to_string())?;
            if !response.status().is_success() {
                return Err(format!("HTTP {}", response.status()));
            }
            response.bytes().await.map_err(|e| e.to_string())?;
            Ok(())
        })
    })
}

/// Redis `GET` of `keys` through `connections` (multiplexed, like the
/// gRPC channels), every key present.
pub fn redis_get(
    connections: Vec<redis::aio::MultiplexedConnection>,
    keys: Arc<Vec<String>>,
) -> Call {
    Arc::new(move |slot, seq| {
        let mut connection = connections[slot % connections.len()].clone();
        let key = pick(&keys, slot, seq).to_owned();
        Box::pin(async move {
            let value: Option<Vec<u8>> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut connection)
                .await
                .map_err(|e| e.to_string())?;
            match value {
                Some(_) => Ok(()),
                None => Err(format!("redis has no {key}")),
            }
        })
    })
}

/// Open Watch streams, each read to its end by a task of its own; closed
/// when dropped.
pub struct Watchers {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    changes: Arc<std::sync::atomic::AtomicU64>,
}

impl Watchers {
    /// `count` Watch streams from now on over connections of their own (at
    /// most 100 streams each), the `i`-th asking `request(i)`. Returns once
    /// every stream has its first message, so all are open.
    pub async fn open(
        addr: &str,
        count: usize,
        request: impl Fn(usize) -> pb::WatchRequest,
    ) -> anyhow::Result<Watchers> {
        let channels = channels(addr, count.div_ceil(100).max(1)).await?;
        let changes = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut tasks = Vec::with_capacity(count);
        for i in 0..count {
            let mut stream = stub(&channels, i).watch(request(i)).await?.into_inner();
            stream
                .message()
                .await?
                .ok_or_else(|| anyhow::anyhow!("watch {i} ended at once"))?;
            let changes = changes.clone();
            tasks.push(tokio::spawn(async move {
                while let Ok(Some(message)) = stream.message().await {
                    if matches!(message.event, Some(pb::watch_response::Event::Change(_))) {
                        changes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }));
        }
        Ok(Watchers { tasks, changes })
    }

    /// Changes delivered to all of them so far.
    pub fn changes(&self) -> u64 {
        self.changes.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for Watchers {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Writes whose calls wait until a watcher has seen them: the call that
/// writes a key [`expect`](Propagation::expect)s it, the watcher's task
/// reports each key it [`seen`](Propagation::seen). A call then takes as
/// long as a write takes to reach a watching client.
#[derive(Clone, Default)]
pub struct Propagation {
    waiting: Arc<Mutex<HashMap<String, tokio::sync::oneshot::Sender<()>>>>,
}

impl Propagation {
    /// Registers `key` (before it is written); the future ends when a
    /// watcher has seen it, or fails after ten seconds.
    pub fn expect(&self, key: &str) -> impl Future<Output = Result<(), String>> + Send + 'static {
        let (seen, arrived) = tokio::sync::oneshot::channel();
        self.waiting
            .lock()
            .expect("not poisoned")
            .insert(key.to_owned(), seen);
        async move {
            match tokio::time::timeout(Duration::from_secs(10), arrived).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err("the watch ended".to_owned()),
                Err(_) => Err("no watcher saw the write within 10 s".to_owned()),
            }
        }
    }

    /// A watcher saw `key`.
    pub fn seen(&self, key: &str) {
        let waiting = self.waiting.lock().expect("not poisoned").remove(key);
        if let Some(waiting) = waiting {
            let _ = waiting.send(());
        }
    }
}

/// A Roadie Watch of every key under `prefix`, reporting each change's key
/// to `propagation`; returns once the stream is open.
pub async fn watch(
    channel: Channel,
    prefix: &str,
    propagation: Propagation,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut stream = stub(&[channel], 0)
        .watch(pb::WatchRequest {
            key_prefix: prefix.to_owned(),
            ..Default::default()
        })
        .await?
        .into_inner();
    stream
        .message()
        .await?
        .ok_or_else(|| anyhow::anyhow!("the watch ended at once"))?;
    Ok(tokio::spawn(async move {
        while let Ok(Some(message)) = stream.message().await {
            if let Some(pb::watch_response::Event::Change(change)) = message.event {
                propagation.seen(&change.key);
            }
        }
    }))
}

/// `Put` of a new key under `prefix`, answered when the watch of [`watch`]
/// has seen it: a write's way to a watcher.
pub fn put_seen(channels: Vec<Channel>, prefix: String, propagation: Propagation) -> Call {
    Arc::new(move |slot, seq| {
        let key = format!("{prefix}{slot}:{seq}");
        let seen = propagation.expect(&key);
        let mut stub = stub(&channels, slot);
        let request = put_request(key, &Bytes::from_static(b"x"));
        Box::pin(async move {
            stub.put(request)
                .await
                .map_err(|status| status.to_string())?;
            seen.await
        })
    })
}
