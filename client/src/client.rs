//! [`Client`]: one typed method per `roadie.v1` RPC over a shared tonic
//! [`Channel`].

use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::error::ClientError;
use crate::proto;
use crate::proto::cache_client::CacheClient;
use crate::proto::jobs_client::JobsClient;
use crate::proto::snapshots_client::SnapshotsClient;
use crate::watch::{Watch, watch_error};

/// Largest message the client sends or accepts. The server stores values up
/// to 8 MiB by default, and one BatchGet answer can carry many of them; tonic's
/// own 4 MiB decoding limit would reject both.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Tracks per message of a snapshot write or merge.
pub const SNAPSHOT_CHUNK_TRACKS: usize = 1000;

/// The messages of a snapshot stream: the header with the first chunk of
/// tracks, then the other chunks (always at least one message).
fn snapshot_messages<T>(
    header: proto::SnapshotHeader,
    tracks: Vec<proto::Track>,
    message: impl Fn(Option<proto::SnapshotHeader>, Vec<proto::Track>) -> T,
) -> Vec<T> {
    let mut header = Some(header);
    let mut messages = Vec::new();
    let mut tracks = tracks.into_iter().peekable();
    while header.is_some() || tracks.peek().is_some() {
        let chunk: Vec<proto::Track> = tracks.by_ref().take(SNAPSHOT_CHUNK_TRACKS).collect();
        messages.push(message(header.take(), chunk));
    }
    messages
}

fn missing_info() -> ClientError {
    ClientError::from(tonic::Status::internal(
        "the answer carried no snapshot info",
    ))
}

/// A handle on one Roadie server: the Cache and Jobs services over one
/// channel.
///
/// Cloning is cheap and clones share the connection, so hand a clone to every
/// task instead of connecting again.
#[derive(Clone, Debug)]
pub struct Client {
    cache: CacheClient<Channel>,
    jobs: JobsClient<Channel>,
    snapshots: SnapshotsClient<Channel>,
    health: HealthClient<Channel>,
    /// Deadline sent with every unary call (as `grpc-timeout`, so the server
    /// knows it too, which is what bounds a `Fetch` in WAIT mode). Not applied
    /// to `watch`, whose stream is meant to outlive any single deadline.
    request_timeout: Option<Duration>,
    /// `authorization: Bearer …`, on every call.
    token: Option<MetadataValue<Ascii>>,
}

/// How [`Client::connect_with`] reaches the server.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// How long the connection (TCP, TLS and HTTP/2) may take.
    pub connect_timeout: Duration,
    /// PEM CA certificates to trust for `https://` instead of the system's
    /// roots.
    pub ca: Option<Vec<u8>>,
    /// A PEM certificate chain and its private key, presented to a server
    /// that requires client certificates (mutual TLS).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl ConnectOptions {
    /// System roots, no client certificate.
    pub fn new(connect_timeout: Duration) -> ConnectOptions {
        ConnectOptions {
            connect_timeout,
            ca: None,
            identity: None,
        }
    }

    fn tls_config(&self) -> ClientTlsConfig {
        let mut tls = ClientTlsConfig::new();
        tls = match &self.ca {
            Some(ca) => tls.ca_certificate(Certificate::from_pem(ca)),
            None => tls.with_native_roots(),
        };
        if let Some((cert, key)) = &self.identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        tls
    }
}

impl Client {
    /// Connects to `endpoint` ("http://host:port", or "host:port", which gets
    /// `http://` in front), failing with [`ClientError::Connect`] if the
    /// server does not answer within `connect_timeout`. `https://` uses TLS
    /// with the system's roots; see [`Client::connect_with`] for a CA of
    /// your own and client certificates.
    pub async fn connect(
        endpoint: impl Into<String>,
        connect_timeout: Duration,
    ) -> Result<Client, ClientError> {
        Client::connect_with(endpoint, &ConnectOptions::new(connect_timeout)).await
    }

    /// Connects to `endpoint` with `options`. `http://` is cleartext (and
    /// takes no certificates); `https://` is TLS, verified against
    /// `options.ca` or else the system's roots, and never falls back to
    /// cleartext. Any other scheme is refused before connecting.
    pub async fn connect_with(
        endpoint: impl Into<String>,
        options: &ConnectOptions,
    ) -> Result<Client, ClientError> {
        let endpoint = normalize_endpoint(endpoint.into());
        let connect_error = |cause: String| ClientError::Connect {
            endpoint: endpoint.clone(),
            cause,
        };
        let scheme = endpoint.split("://").next().unwrap_or_default();
        let tls = if scheme.eq_ignore_ascii_case("https") {
            Some(options.tls_config())
        } else if scheme.eq_ignore_ascii_case("http") {
            if options.ca.is_some() || options.identity.is_some() {
                return Err(connect_error(
                    "a CA or client certificate is for https:// addresses; this one is \
                     cleartext http://"
                        .to_owned(),
                ));
            }
            None
        } else {
            return Err(connect_error(format!(
                "{scheme}:// is not supported: use http:// (cleartext) or https:// (TLS)"
            )));
        };
        let connect_timeout = options.connect_timeout;
        let mut target = Endpoint::from_shared(endpoint.clone())
            .map_err(|error| connect_error(format!("invalid endpoint: {}", error_chain(&error))))?
            .connect_timeout(connect_timeout);
        if let Some(tls) = tls {
            target = target
                .tls_config(tls)
                .map_err(|error| connect_error(format!("TLS: {}", error_chain(&error))))?;
        }
        // `connect_timeout` only bounds the TCP connect; a peer that accepts
        // and then never speaks HTTP/2 would still hang without this.
        let channel = match tokio::time::timeout(connect_timeout, target.connect()).await {
            Ok(Ok(channel)) => channel,
            Ok(Err(error)) => return Err(connect_error(error_chain(&error))),
            Err(_) => {
                return Err(connect_error(format!(
                    "no answer within {}",
                    humantime::format_duration(connect_timeout)
                )));
            }
        };
        Ok(Client::from_channel(channel))
    }

    /// Wraps an existing channel, for example one built with TLS or a custom
    /// connector. No request deadline is set.
    pub fn from_channel(channel: Channel) -> Client {
        Client {
            cache: CacheClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            jobs: JobsClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            snapshots: SnapshotsClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            health: HealthClient::new(channel),
            request_timeout: None,
            token: None,
        }
    }

    /// This client with a bearer token on every call (`authorization:
    /// Bearer TOKEN`, sent as a never-indexed header). A token the header
    /// cannot carry (not visible ASCII) is refused.
    pub fn with_token(mut self, token: &str) -> Result<Client, ClientError> {
        let valid = !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic());
        let value = valid
            .then(|| MetadataValue::try_from(format!("Bearer {token}")).ok())
            .flatten()
            .ok_or_else(|| {
                ClientError::Token("a token is 1 or more visible ASCII characters".to_owned())
            })?;
        let mut value: MetadataValue<Ascii> = value;
        value.set_sensitive(true);
        self.token = Some(value);
        Ok(self)
    }

    /// This client with a deadline on every unary call; an expired deadline
    /// fails with [`ClientError::DeadlineExceeded`].
    pub fn with_request_timeout(mut self, timeout: Duration) -> Client {
        self.request_timeout = Some(timeout);
        self
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = self.request_without_deadline(message);
        if let Some(timeout) = self.request_timeout {
            request.set_timeout(timeout);
        }
        request
    }

    fn request_without_deadline<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = &self.token {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        request
    }

    /// Cache.Get: reads one entry; a miss is an answer, not an error.
    pub async fn get(&self, request: proto::GetRequest) -> Result<proto::GetResponse, ClientError> {
        let mut cache = self.cache.clone();
        Ok(cache.get(self.request(request)).await?.into_inner())
    }

    /// Cache.BatchGet: reads many entries, answered in request order.
    pub async fn batch_get(
        &self,
        request: proto::BatchGetRequest,
    ) -> Result<proto::BatchGetResponse, ClientError> {
        let mut cache = self.cache.clone();
        Ok(cache.batch_get(self.request(request)).await?.into_inner())
    }

    /// Cache.Put: writes one entry, subject to the request's conditions.
    pub async fn put(&self, request: proto::PutRequest) -> Result<proto::PutResponse, ClientError> {
        let mut cache = self.cache.clone();
        Ok(cache.put(self.request(request)).await?.into_inner())
    }

    /// Cache.Delete: deletes one entry.
    pub async fn delete(
        &self,
        request: proto::DeleteRequest,
    ) -> Result<proto::DeleteResponse, ClientError> {
        let mut cache = self.cache.clone();
        Ok(cache.delete(self.request(request)).await?.into_inner())
    }

    /// Cache.Invalidate: deletes every entry matching one selector.
    pub async fn invalidate(
        &self,
        request: proto::InvalidateRequest,
    ) -> Result<proto::InvalidateResponse, ClientError> {
        let mut cache = self.cache.clone();
        Ok(cache.invalidate(self.request(request)).await?.into_inner())
    }

    /// Cache.GetRandom: one random live entry carrying a tag.
    pub async fn get_random(
        &self,
        request: proto::GetRandomRequest,
    ) -> Result<proto::GetRandomResponse, ClientError> {
        let mut cache = self.cache.clone();
        Ok(cache.get_random(self.request(request)).await?.into_inner())
    }

    /// Cache.ListEntries: one page of the entries matching a selector, in
    /// key order; pass `next_page_token` back for the next.
    pub async fn list_entries(
        &self,
        request: proto::ListEntriesRequest,
    ) -> Result<proto::ListEntriesResponse, ClientError> {
        let mut cache = self.cache.clone();
        Ok(cache
            .list_entries(self.request(request))
            .await?
            .into_inner())
    }

    /// Cache.Fetch: reads an entry, fetching it through the job queue when it
    /// is missing or stale. In WAIT mode the request deadline bounds the wait.
    pub async fn fetch(
        &self,
        request: proto::FetchRequest,
    ) -> Result<proto::FetchResponse, ClientError> {
        let mut cache = self.cache.clone();
        Ok(cache.fetch(self.request(request)).await?.into_inner())
    }

    /// Cache.BatchFetch: background fetches of many paths in one call, each
    /// item answered (or refused) on its own, in request order.
    pub async fn batch_fetch(
        &self,
        request: proto::BatchFetchRequest,
    ) -> Result<proto::BatchFetchResponse, ClientError> {
        let mut cache = self.cache.clone();
        Ok(cache.batch_fetch(self.request(request)).await?.into_inner())
    }

    /// Cache.PublishEvent: a library event, turned into invalidations.
    pub async fn publish_event(
        &self,
        request: proto::PublishEventRequest,
    ) -> Result<proto::PublishEventResponse, ClientError> {
        let mut cache = self.cache.clone();
        Ok(cache
            .publish_event(self.request(request))
            .await?
            .into_inner())
    }

    /// Cache.Watch, resuming by itself: every change matching `request`'s
    /// filters after `request.after_revision` (or after the revision current
    /// when the server starts the stream, when unset), in revision order,
    /// across disconnects and server restarts. See [`Watch`] for what is
    /// retried and what ends it.
    ///
    /// Nothing is sent until the returned [`Watch`] is first polled; it holds
    /// a clone of this client, so it shares the connection.
    pub fn watch(&self, request: proto::WatchRequest) -> Watch {
        Watch::new(self.clone(), request)
    }

    /// Cache.Watch, one attempt: the raw stream, which ends at the first
    /// disconnect. Resuming from the last revision seen is up to the caller;
    /// [`Client::watch`] does it. A revision the server no longer holds fails
    /// with [`ClientError::Compacted`].
    pub async fn watch_once(
        &self,
        request: proto::WatchRequest,
    ) -> Result<tonic::Streaming<proto::WatchResponse>, ClientError> {
        let after = request.after_revision;
        self.open_watch(request)
            .await
            .map_err(|status| watch_error(status, after))
    }

    /// Opens one Watch stream, keeping the status whole so that [`Watch`]
    /// can decide whether to retry. Without a deadline: the stream is meant
    /// to outlive any single one.
    pub(crate) async fn open_watch(
        &self,
        request: proto::WatchRequest,
    ) -> Result<tonic::Streaming<proto::WatchResponse>, tonic::Status> {
        let mut cache = self.cache.clone();
        Ok(cache
            .watch(self.request_without_deadline(request))
            .await?
            .into_inner())
    }

    /// Cache.Stats: entries, bytes and answers by policy, and provider state.
    pub async fn stats(
        &self,
        request: proto::StatsRequest,
    ) -> Result<proto::StatsResponse, ClientError> {
        let mut cache = self.cache.clone();
        Ok(cache.stats(self.request(request)).await?.into_inner())
    }

    /// Snapshots.PutSnapshot: writes a snapshot whole, the header and then
    /// `tracks` in messages of [`SNAPSHOT_CHUNK_TRACKS`]. Without a deadline:
    /// a large library takes as long as it takes.
    pub async fn put_snapshot(
        &self,
        header: proto::SnapshotHeader,
        tracks: Vec<proto::Track>,
    ) -> Result<proto::SnapshotInfo, ClientError> {
        let messages = snapshot_messages(header, tracks, |header, tracks| {
            proto::PutSnapshotRequest { header, tracks }
        });
        let mut snapshots = self.snapshots.clone();
        let response = snapshots
            .put_snapshot(self.request_without_deadline(futures::stream::iter(messages)))
            .await?
            .into_inner();
        response.info.ok_or_else(missing_info)
    }

    /// Snapshots.MergeSnapshot: applies a delta on the server (updates
    /// replaced in place or appended, `removed_ids` dropped), in one
    /// revision. Without a deadline, as [`Client::put_snapshot`].
    pub async fn merge_snapshot(
        &self,
        header: proto::SnapshotHeader,
        updates: Vec<proto::Track>,
        removed_ids: Vec<String>,
    ) -> Result<proto::SnapshotInfo, ClientError> {
        let mut messages = snapshot_messages(header, updates, |header, updates| {
            proto::MergeSnapshotRequest {
                header,
                updates,
                removed_ids: Vec::new(),
            }
        });
        for ids in removed_ids.chunks(SNAPSHOT_CHUNK_TRACKS) {
            messages.push(proto::MergeSnapshotRequest {
                header: None,
                updates: Vec::new(),
                removed_ids: ids.to_vec(),
            });
        }
        let mut snapshots = self.snapshots.clone();
        let response = snapshots
            .merge_snapshot(self.request_without_deadline(futures::stream::iter(messages)))
            .await?
            .into_inner();
        response.info.ok_or_else(missing_info)
    }

    /// Snapshots.GetSnapshot: the info and every track, in order (none
    /// when `only_if_valid` and it is not valid). Without a deadline.
    pub async fn get_snapshot(
        &self,
        request: proto::GetSnapshotRequest,
    ) -> Result<(proto::SnapshotInfo, Vec<proto::Track>), ClientError> {
        let mut snapshots = self.snapshots.clone();
        let mut stream = snapshots
            .get_snapshot(self.request_without_deadline(request))
            .await?
            .into_inner();
        let info = stream
            .message()
            .await?
            .and_then(|first| first.info)
            .ok_or_else(missing_info)?;
        let mut tracks = Vec::new();
        while let Some(message) = stream.message().await? {
            tracks.extend(message.tracks);
        }
        Ok((info, tracks))
    }

    /// Snapshots.GetSnapshotInfo: a snapshot's info and validity, without
    /// its tracks.
    pub async fn get_snapshot_info(
        &self,
        request: proto::GetSnapshotInfoRequest,
    ) -> Result<proto::SnapshotInfo, ClientError> {
        let mut snapshots = self.snapshots.clone();
        let response = snapshots
            .get_snapshot_info(self.request(request))
            .await?
            .into_inner();
        response.info.ok_or_else(missing_info)
    }

    /// Snapshots.DeleteSnapshot: the revision of the deletion.
    pub async fn delete_snapshot(&self, name: &str) -> Result<u64, ClientError> {
        let mut snapshots = self.snapshots.clone();
        let request = proto::DeleteSnapshotRequest {
            name: name.to_owned(),
        };
        Ok(snapshots
            .delete_snapshot(self.request(request))
            .await?
            .into_inner()
            .revision)
    }

    /// grpc.health.v1.Health.Check: whether the server as a whole (`""`) or
    /// one of its services (`"roadie.v1.Cache"`, `"roadie.v1.Jobs"`) is
    /// serving. A name the server does not know fails with NOT_FOUND.
    pub async fn health(&self, service: &str) -> Result<ServingStatus, ClientError> {
        let mut health = self.health.clone();
        let request = tonic_health::pb::HealthCheckRequest {
            service: service.to_owned(),
        };
        let response = health.check(self.request(request)).await?.into_inner();
        Ok(response.status())
    }

    /// Jobs.GetJob: one job by id.
    pub async fn get_job(
        &self,
        request: proto::GetJobRequest,
    ) -> Result<proto::GetJobResponse, ClientError> {
        let mut jobs = self.jobs.clone();
        Ok(jobs.get_job(self.request(request)).await?.into_inner())
    }

    /// Jobs.ListJobs: one page of jobs, newest first.
    pub async fn list_jobs(
        &self,
        request: proto::ListJobsRequest,
    ) -> Result<proto::ListJobsResponse, ClientError> {
        let mut jobs = self.jobs.clone();
        Ok(jobs.list_jobs(self.request(request)).await?.into_inner())
    }

    /// Jobs.CancelJob: cancels an available or running job.
    pub async fn cancel_job(
        &self,
        request: proto::CancelJobRequest,
    ) -> Result<proto::CancelJobResponse, ClientError> {
        let mut jobs = self.jobs.clone();
        Ok(jobs.cancel_job(self.request(request)).await?.into_inner())
    }

    /// Jobs.RetryJob: makes a failed or cancelled job available again.
    pub async fn retry_job(
        &self,
        request: proto::RetryJobRequest,
    ) -> Result<proto::RetryJobResponse, ClientError> {
        let mut jobs = self.jobs.clone();
        Ok(jobs.retry_job(self.request(request)).await?.into_inner())
    }
}

/// Adds `http://` to an endpoint given without a scheme.
fn normalize_endpoint(endpoint: String) -> String {
    let endpoint = endpoint.trim();
    if endpoint.contains("://") {
        endpoint.to_owned()
    } else {
        format!("http://{endpoint}")
    }
}

/// An error and its causes on one line: tonic's transport errors say only
/// "transport error" at the top and keep the useful part in their sources.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause = cause.to_string();
        if !text.ends_with(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
        source = source.and_then(std::error::Error::source);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_without_scheme_gets_http() {
        assert_eq!(
            normalize_endpoint("127.0.0.1:50051".to_owned()),
            "http://127.0.0.1:50051"
        );
        assert_eq!(
            normalize_endpoint(" localhost:1 ".to_owned()),
            "http://localhost:1"
        );
    }

    #[test]
    fn endpoint_with_scheme_is_kept() {
        assert_eq!(
            normalize_endpoint("http://127.0.0.1:50051".to_owned()),
            "http://127.0.0.1:50051"
        );
        assert_eq!(
            normalize_endpoint("https://roadie.example:443".to_owned()),
            "https://roadie.example:443"
        );
    }

    #[test]
    fn error_chain_joins_causes_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] Inner);
        #[derive(Debug, thiserror::Error)]
        #[error("inner")]
        struct Inner;
        assert_eq!(error_chain(&Outer(Inner)), "outer: inner");
        assert_eq!(error_chain(&Inner), "inner");
    }
}
