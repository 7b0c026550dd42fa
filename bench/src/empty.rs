//! The stack's limit: a tonic server speaking `roadie.v1.Cache` whose `Get`
//! answers one fixed, prebuilt response and does nothing else. Driven by the
//! same client code as a real `roadie-server`, it measures what tonic,
//! HTTP/2, protobuf and loopback TCP cost by themselves.

use std::net::SocketAddr;

use roadie_proto::v1::{self as pb, cache_server::Cache, cache_server::CacheServer};
use tonic::{Request, Response, Status, transport::server::TcpIncoming};

/// The fixed answer: an entry of `value_bytes` bytes with the fields a real
/// hit carries, so the bytes on the wire match a `roadie-server` hit.
pub fn fixed_response(key: &str, value_bytes: usize) -> pb::GetResponse {
    pb::GetResponse {
        status: pb::LookupStatus::Hit.into(),
        entry: Some(pb::Entry {
            key: key.to_owned(),
            value: vec![b'x'; value_bytes].into(),
            media_type: "application/json".to_owned(),
            policy: "generic".to_owned(),
            status: pb::EntryStatus::Fresh.into(),
            created_at: Some(prost_timestamp()),
            updated_at: Some(prost_timestamp()),
            expires_at: Some(prost_timestamp()),
            revision: 1,
            ..Default::default()
        }),
    }
}

fn prost_timestamp() -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: 1_800_000_000,
        nanos: 0,
    }
}

/// A `Cache` whose `Get` answers [`fixed_response`]; everything else is
/// UNIMPLEMENTED.
#[derive(Debug, Clone)]
pub struct EmptyCache {
    answer: pb::GetResponse,
}

impl EmptyCache {
    /// Answers every `Get` with `answer`.
    pub fn new(answer: pb::GetResponse) -> EmptyCache {
        EmptyCache { answer }
    }
}

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("the empty service answers Get only"))
}

#[tonic::async_trait]
impl Cache for EmptyCache {
    async fn get(&self, _: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        Ok(Response::new(self.answer.clone()))
    }
    async fn batch_get(
        &self,
        _: Request<pb::BatchGetRequest>,
    ) -> Result<Response<pb::BatchGetResponse>, Status> {
        unimplemented()
    }
    async fn put(&self, _: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        unimplemented()
    }
    async fn delete(
        &self,
        _: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        unimplemented()
    }
    async fn invalidate(
        &self,
        _: Request<pb::InvalidateRequest>,
    ) -> Result<Response<pb::InvalidateResponse>, Status> {
        unimplemented()
    }
    async fn get_random(
        &self,
        _: Request<pb::GetRandomRequest>,
    ) -> Result<Response<pb::GetRandomResponse>, Status> {
        unimplemented()
    }
    async fn fetch(
        &self,
        _: Request<pb::FetchRequest>,
    ) -> Result<Response<pb::FetchResponse>, Status> {
        unimplemented()
    }
    async fn publish_event(
        &self,
        _: Request<pb::PublishEventRequest>,
    ) -> Result<Response<pb::PublishEventResponse>, Status> {
        unimplemented()
    }
    type WatchStream = tokio_stream::Empty<Result<pb::WatchResponse, Status>>;
    async fn watch(
        &self,
        _: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        unimplemented()
    }
    async fn stats(
        &self,
        _: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        unimplemented()
    }

    async fn list_entries(
        &self,
        _: Request<pb::ListEntriesRequest>,
    ) -> Result<Response<pb::ListEntriesResponse>, Status> {
        unimplemented()
    }

    async fn batch_fetch(
        &self,
        _: Request<pb::BatchFetchRequest>,
    ) -> Result<Response<pb::BatchFetchResponse>, Status> {
        unimplemented()
    }
}

/// Serves [`EmptyCache`] on `listen` until the process ends.
pub async fn serve(listen: SocketAddr, value_bytes: usize) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tonic::transport::Server::builder()
        .add_service(CacheServer::new(EmptyCache::new(fixed_response(
            "bench:hot:0",
            value_bytes,
        ))))
        .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true)))
        .await?;
    Ok(())
}
