//! etcd as a target: `Put` of new keys over etcd's own gRPC API
//! (`etcdserverpb.KV/Put`), driven by the same load generator as Roadie's
//! calls. etcd is the reference for a revisioned, watchable key/value store;
//! a single-node etcd on a private data directory is the ceiling Roadie's
//! durable Put is compared with (`bench/group-commit.sh`).
//!
//! The two messages are the fields of etcd's `rpc.proto` this load uses,
//! with etcd's field numbers (the rest are left at their defaults).

use std::sync::Arc;

use bytes::Bytes;
use tonic::transport::Channel;

use crate::load::Call;

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

/// `Put` of a new key per call (`bench/put/SLOT/SEQ`) with `value`; an
/// answer without a revision counts as an error.
pub fn put(channels: Vec<Channel>, value: Bytes) -> Call {
    Arc::new(move |slot, seq| {
        let mut grpc = tonic::client::Grpc::new(channels[slot % channels.len()].clone());
        let request = PutRequest {
            key: format!("bench/put/{slot}/{seq}").into_bytes(),
            value: value.to_vec(),
        };
        Box::pin(async move {
            grpc.ready().await.map_err(|e| e.to_string())?;
            let codec = tonic_prost::ProstCodec::<PutRequest, PutResponse>::default();
            let path = http::uri::PathAndQuery::from_static("/etcdserverpb.KV/Put");
            let answer = grpc
                .unary(tonic::Request::new(request), path, codec)
                .await
                .map_err(|status| status.to_string())?
                .into_inner();
            match answer.header {
                Some(header) if header.revision > 0 => Ok(()),
                _ => Err("etcd put answered without a revision".to_owned()),
            }
        })
    })
}
