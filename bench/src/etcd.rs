//! etcd as a target, over its own gRPC API and driven by the same load
//! generator as Roadie's calls: `KV/Put` of new keys, `KV/Range` of hot keys,
//! and `Watch/Watch` for propagation. etcd is the reference for a revisioned,
//! watchable key/value store; a single-node etcd on a private data directory
//! ([`crate::processes::etcd`]) is the ceiling Roadie's durable Put is
//! compared with (`roadie-bench suite --parts writes`, `bench/writes.sh`).
//!
//! The messages are the fields of etcd's `rpc.proto` and `kv.proto` these
//! loads use, with etcd's field numbers (the rest are left at their defaults).

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt as _;
use tonic::transport::Channel;

use crate::{
    load::Call,
    targets::{Propagation, pick},
};

/// etcd's `PutRequest`: the key and the value.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PutRequest {
    /// The key.
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    /// The value.
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// etcd's `PutResponse`: its header.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PutResponse {
    /// The response header.
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
}

/// etcd's `ResponseHeader`: the revision the write took.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ResponseHeader {
    /// The store's revision after the request.
    #[prost(int64, tag = "3")]
    pub revision: i64,
}

/// etcd's `RangeRequest`: one key.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RangeRequest {
    /// The key.
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
}

/// etcd's `RangeResponse`: the pairs found.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RangeResponse {
    /// The pairs.
    #[prost(message, repeated, tag = "2")]
    pub kvs: Vec<KeyValue>,
}

/// etcd's `mvccpb.KeyValue`: the key and its value.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValue {
    /// The key.
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    /// The value.
    #[prost(bytes = "vec", tag = "5")]
    pub value: Vec<u8>,
}

/// etcd's `WatchRequest`, with only its `create_request` arm.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WatchRequest {
    /// Start watching.
    #[prost(message, optional, tag = "1")]
    pub create_request: Option<WatchCreateRequest>,
}

/// etcd's `WatchCreateRequest`: the keys from `key` up to `range_end`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WatchCreateRequest {
    /// First key watched.
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    /// End of the range (exclusive): the prefix with its last byte plus one.
    #[prost(bytes = "vec", tag = "2")]
    pub range_end: Vec<u8>,
}

/// etcd's `WatchResponse`: whether the watch was created, and its events.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WatchResponse {
    /// Set on the answer to the create request.
    #[prost(bool, tag = "3")]
    pub created: bool,
    /// The changes.
    #[prost(message, repeated, tag = "11")]
    pub events: Vec<Event>,
}

/// etcd's `mvccpb.Event`: the pair as written.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    /// The pair.
    #[prost(message, optional, tag = "2")]
    pub kv: Option<KeyValue>,
}

fn grpc(channels: &[Channel], slot: usize) -> tonic::client::Grpc<Channel> {
    tonic::client::Grpc::new(channels[slot % channels.len()].clone())
}

async fn unary<Req, Resp>(
    mut grpc: tonic::client::Grpc<Channel>,
    path: &'static str,
    request: Req,
) -> Result<Resp, String>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    grpc.ready().await.map_err(|e| e.to_string())?;
    let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
    grpc.unary(
        tonic::Request::new(request),
        http::uri::PathAndQuery::from_static(path),
        codec,
    )
    .await
    .map(tonic::Response::into_inner)
    .map_err(|status| status.to_string())
}

/// Writes every key of `keys` with `value`, 16 at a time.
pub async fn put_all(channels: &[Channel], keys: &[String], value: &Bytes) -> anyhow::Result<()> {
    let mut writes = futures::stream::iter(keys.iter().enumerate().map(|(i, key)| {
        let request = PutRequest {
            key: key.clone().into_bytes(),
            value: value.to_vec(),
        };
        unary::<_, PutResponse>(grpc(channels, i), "/etcdserverpb.KV/Put", request)
    }))
    .buffer_unordered(16);
    while let Some(result) = writes.next().await {
        result.map_err(anyhow::Error::msg)?;
    }
    Ok(())
}

/// `Range` of one key of `keys` per call; a key not found is an error.
pub fn get(channels: Vec<Channel>, keys: Arc<Vec<String>>) -> Call {
    Arc::new(move |slot, seq| {
        let key = pick(&keys, slot, seq).to_owned();
        let grpc = grpc(&channels, slot);
        Box::pin(async move {
            let request = RangeRequest {
                key: key.clone().into_bytes(),
            };
            let answer: RangeResponse = unary(grpc, "/etcdserverpb.KV/Range", request).await?;
            if answer.kvs.is_empty() {
                Err(format!("etcd has no {key}"))
            } else {
                Ok(())
            }
        })
    })
}

/// A watch of every key under `prefix`, reporting each key it sees to
/// `propagation`; returns once etcd says the watch is created.
pub async fn watch(
    channel: Channel,
    prefix: &str,
    propagation: Propagation,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut range_end = prefix.as_bytes().to_vec();
    if let Some(last) = range_end.last_mut() {
        *last += 1;
    }
    let create = WatchRequest {
        create_request: Some(WatchCreateRequest {
            key: prefix.as_bytes().to_vec(),
            range_end,
        }),
    };
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await?;
    let codec = tonic_prost::ProstCodec::<WatchRequest, WatchResponse>::default();
    // The request stream stays open: etcd ends the watch when it closes.
    let requests = futures::stream::iter([create]).chain(futures::stream::pending());
    let mut stream = grpc
        .streaming(
            tonic::Request::new(requests),
            http::uri::PathAndQuery::from_static("/etcdserverpb.Watch/Watch"),
            codec,
        )
        .await?
        .into_inner();
    let first = stream
        .message()
        .await?
        .ok_or_else(|| anyhow::anyhow!("etcd ended the watch at once"))?;
    anyhow::ensure!(first.created, "etcd did not create the watch");
    Ok(tokio::spawn(async move {
        while let Ok(Some(message)) = stream.message().await {
            for event in message.events {
                if let Some(kv) = event.kv {
                    propagation.seen(&String::from_utf8_lossy(&kv.key));
                }
            }
        }
    }))
}

/// `Put` of a new key under `prefix`, answered when the watch of
/// [`watch`] has seen it: a write's way to a watcher.
pub fn put_seen(channels: Vec<Channel>, prefix: String, propagation: Propagation) -> Call {
    Arc::new(move |slot, seq| {
        let key = format!("{prefix}{slot}/{seq}");
        let seen = propagation.expect(&key);
        let grpc = grpc(&channels, slot);
        Box::pin(async move {
            let request = PutRequest {
                key: key.into_bytes(),
                value: b"x".to_vec(),
            };
            unary::<_, PutResponse>(grpc, "/etcdserverpb.KV/Put", request).await?;
            seen.await
        })
    })
}

/// `Put` of a new key per call (`bench/put/SLOT/SEQ`) with `value`; an
/// answer without a revision counts as an error.
pub fn put(channels: Vec<Channel>, value: Bytes) -> Call {
    Arc::new(move |slot, seq| {
        let grpc = grpc(&channels, slot);
        let request = PutRequest {
            key: format!("bench/put/{slot}/{seq}").into_bytes(),
            value: value.to_vec(),
        };
        Box::pin(async move {
            let answer: PutResponse = unary(grpc, "/etcdserverpb.KV/Put", request).await?;
            match answer.header {
                Some(header) if header.revision > 0 => Ok(()),
                _ => Err("etcd put answered without a revision".to_owned()),
            }
        })
    })
}
