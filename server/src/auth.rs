//! Bearer tokens and roles: who may call what.
//!
//! Every call but health carries `authorization: Bearer TOKEN` once
//! `[[auth.tokens]]` lists any. The token's SHA-256 digest is compared with
//! every configured digest in constant time; the role it carries must cover
//! the method ([`needed`]). A call without a known token is UNAUTHENTICATED,
//! one whose role falls short PERMISSION_DENIED naming the role needed. The
//! one rule finer than a method, a Fetch that would enqueue, is decided by
//! the Fetch handler through the [`Access`] this layer leaves on the call.
//! Decisions are logged and counted with the token's name, never the token.

use std::{
    convert::Infallible,
    sync::Arc,
    task::{Context, Poll},
};

use futures::future::{BoxFuture, FutureExt};
use opentelemetry::{KeyValue, metrics::Counter};
use roadie_config::{AuthSettings, Reflection, Role};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::{Status, body::Body};

use crate::error::ApiError;

/// What the caller of one call may do, in its request extensions.
#[derive(Debug, Clone)]
pub(crate) enum Access {
    /// No tokens are configured: everything.
    Open,
    /// A known token.
    Token {
        /// The token's name in the settings.
        name: Arc<str>,
        /// Its role.
        role: Role,
    },
}

impl Access {
    /// What the auth layer found on `request` (open when it set nothing).
    pub(crate) fn of<T>(request: &tonic::Request<T>) -> Access {
        request
            .extensions()
            .get::<Access>()
            .cloned()
            .unwrap_or(Access::Open)
    }

    /// Whether this caller has `role`; the refusal says what `action` needs.
    pub(crate) fn require(&self, role: Role, action: &str) -> Result<(), ApiError> {
        match self {
            Access::Open => Ok(()),
            Access::Token { role: held, .. } if *held >= role => Ok(()),
            Access::Token { name, role: held } => Err(ApiError::PermissionDenied(format!(
                "{action} needs the {role} role; token {name:?} has {held}"
            ))),
        }
    }

    /// Whether this caller has `role`.
    pub(crate) fn has(&self, role: Role) -> bool {
        self.require(role, "").is_ok()
    }
}

/// What a method needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// Nothing (health).
    Nothing,
    /// A token with this role.
    Role(Role),
}

/// The role each method needs. A method this table does not know (a typo,
/// a newer client) needs admin, so nothing is open by omission.
fn needed(path: &str, reflection: Reflection) -> Need {
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or(("", ""));
    match service {
        "grpc.health.v1.Health" => Need::Nothing,
        "grpc.reflection.v1.ServerReflection" | "grpc.reflection.v1alpha.ServerReflection" => {
            match reflection {
                Reflection::Open => Need::Nothing,
                Reflection::Read | Reflection::Off => Need::Role(Role::Read),
            }
        }
        "roadie.v1.Cache" => match method {
            "Get" | "BatchGet" | "GetRandom" | "ListEntries" | "Fetch" | "Watch" | "Stats" => {
                Need::Role(Role::Read)
            }
            "Put" | "Delete" | "Invalidate" | "PublishEvent" | "BatchFetch" => {
                Need::Role(Role::Write)
            }
            _ => Need::Role(Role::Admin),
        },
        "roadie.v1.Snapshots" => match method {
            "GetSnapshot" | "GetSnapshotInfo" => Need::Role(Role::Read),
            "PutSnapshot" | "MergeSnapshot" | "DeleteSnapshot" => Need::Role(Role::Write),
            _ => Need::Role(Role::Admin),
        },
        _ => Need::Role(Role::Admin),
    }
}

/// A configured token, by digest.
#[derive(Debug)]
struct Known {
    name: Arc<str>,
    role: Role,
    digest: [u8; 32],
}

/// The configured tokens.
#[derive(Debug)]
pub(crate) struct Tokens {
    known: Vec<Known>,
    reflection: Reflection,
    decisions: Counter<u64>,
}

impl Tokens {
    /// Reads `[[auth.tokens]]` (token files included); the error names the
    /// setting at fault.
    pub(crate) fn load(auth: &AuthSettings, reflection: Reflection) -> Result<Tokens, String> {
        let mut known = Vec::with_capacity(auth.tokens.len());
        for (index, token) in auth.tokens.iter().enumerate() {
            let digest = match (&token.token_sha256, &token.token_file) {
                (Some(hex), _) => parse_digest(hex).ok_or_else(|| {
                    format!("auth.tokens[{index}].token_sha256: must be 64 hex digits")
                })?,
                (None, Some(path)) => {
                    let setting = format!("auth.tokens[{index}].token_file");
                    let text = std::fs::read_to_string(path)
                        .map_err(|error| format!("{setting}: {}: {error}", path.display()))?;
                    let secret = text.trim();
                    if secret.is_empty() || !secret.bytes().all(|b| b.is_ascii_graphic()) {
                        return Err(format!(
                            "{setting}: {}: must hold one token of visible ASCII characters",
                            path.display()
                        ));
                    }
                    sha256(secret.as_bytes())
                }
                (None, None) => {
                    return Err(format!(
                        "auth.tokens[{index}]: set token_sha256 or token_file"
                    ));
                }
            };
            known.push(Known {
                name: token.name.as_str().into(),
                role: token.role,
                digest,
            });
        }
        Ok(Tokens {
            known,
            reflection,
            decisions: crate::metrics::auth_decisions(),
        })
    }

    /// Whether any token is configured (otherwise every call is allowed).
    pub(crate) fn enabled(&self) -> bool {
        !self.known.is_empty()
    }

    /// The configured token `presented` is, looked at every entry so the
    /// time taken does not say which one matched.
    fn identify(&self, presented: &[u8]) -> Option<&Known> {
        let digest = sha256(presented);
        let mut found = None;
        for known in &self.known {
            if bool::from(known.digest.ct_eq(&digest)) {
                found = Some(known);
            }
        }
        found
    }

    /// The decision on one call: its [`Access`], or the refusal.
    fn decide(&self, request: &http::Request<Body>) -> Result<Access, Status> {
        if !self.enabled() {
            return Ok(Access::Open);
        }
        let path = request.uri().path();
        let role = match needed(path, self.reflection) {
            Need::Nothing => return Ok(Access::Open),
            Need::Role(role) => role,
        };
        let presented = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "));
        let Some(known) = presented.and_then(|token| self.identify(token)) else {
            self.count("unauthenticated", role);
            tracing::info!(
                method = path,
                reason = if presented.is_some() {
                    "unknown token"
                } else {
                    "no token"
                },
                "call refused: unauthenticated"
            );
            return Err(Status::unauthenticated(
                "this server needs a token: send `authorization: Bearer TOKEN` \
                 (roadie --token, ROADIE_TOKEN)",
            ));
        };
        let access = Access::Token {
            name: known.name.clone(),
            role: known.role,
        };
        if let Err(refusal) = access.require(role, path) {
            self.count("permission_denied", role);
            tracing::info!(method = path, token = %known.name, role = %known.role, needed = %role, "call refused: permission denied");
            return Err(refusal.into());
        }
        self.count("allowed", role);
        tracing::debug!(method = path, token = %known.name, "call allowed");
        Ok(access)
    }

    fn count(&self, outcome: &'static str, role: Role) {
        self.decisions.add(
            1,
            &[
                KeyValue::new("outcome", outcome),
                KeyValue::new("role", role.name()),
            ],
        );
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// `token_sha256`'s 64 hex digits as bytes.
fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut digest = [0_u8; 32];
    for (byte, pair) in digest.iter_mut().zip(hex.chunks_exact(2)) {
        let text = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(text, 16).ok()?;
    }
    Some(digest)
}

/// The hex SHA-256 digest of a token, for `token_sha256`
/// (`roadie-server hash-token`).
pub fn token_digest(token: &str) -> String {
    sha256(token.trim().as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The tower layer applying [`Tokens`] to every call.
#[derive(Debug, Clone)]
pub(crate) struct AuthLayer(pub(crate) Arc<Tokens>);

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            tokens: self.0.clone(),
        }
    }
}

/// See [`AuthLayer`].
#[derive(Debug, Clone)]
pub(crate) struct AuthService<S> {
    inner: S,
    tokens: Arc<Tokens>,
}

impl<S> tower::Service<http::Request<Body>> for AuthService<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Send,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        match self.tokens.decide(&request) {
            Ok(access) => {
                request.extensions_mut().insert(access);
                self.inner.call(request).boxed()
            }
            Err(status) => futures::future::ready(Ok(status.into_http())).boxed(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_needs_the_role_of_the_issue() {
        let (read, write, admin) = (
            Need::Role(Role::Read),
            Need::Role(Role::Write),
            Need::Role(Role::Admin),
        );
        let reflection = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
        for (path, need) in [
            ("/grpc.health.v1.Health/Check", Need::Nothing),
            ("/grpc.health.v1.Health/Watch", Need::Nothing),
            ("/roadie.v1.Cache/Get", read),
            ("/roadie.v1.Cache/BatchGet", read),
            ("/roadie.v1.Cache/GetRandom", read),
            ("/roadie.v1.Cache/ListEntries", read),
            ("/roadie.v1.Cache/Fetch", read),
            ("/roadie.v1.Cache/Watch", read),
            ("/roadie.v1.Cache/Stats", read),
            ("/roadie.v1.Cache/Put", write),
            ("/roadie.v1.Cache/Delete", write),
            ("/roadie.v1.Cache/Invalidate", write),
            ("/roadie.v1.Cache/PublishEvent", write),
            ("/roadie.v1.Cache/BatchFetch", write),
            ("/roadie.v1.Snapshots/GetSnapshot", read),
            ("/roadie.v1.Snapshots/GetSnapshotInfo", read),
            ("/roadie.v1.Snapshots/PutSnapshot", write),
            ("/roadie.v1.Snapshots/MergeSnapshot", write),
            ("/roadie.v1.Snapshots/DeleteSnapshot", write),
            ("/roadie.v1.Snapshots/Unknown", admin),
            ("/roadie.v1.Cache/Unknown", admin),
            ("/roadie.v1.Jobs/GetJob", admin),
            ("/roadie.v1.Jobs/ListJobs", admin),
            ("/roadie.v1.Jobs/CancelJob", admin),
            ("/roadie.v1.Jobs/RetryJob", admin),
            ("/other.Service/Method", admin),
            ("", admin),
            (reflection, read),
        ] {
            assert_eq!(needed(path, Reflection::Read), need, "{path}");
        }
        assert_eq!(needed(reflection, Reflection::Open), Need::Nothing);
    }

    #[test]
    fn digests_are_sha256_hex() {
        // printf abc | sha256sum
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(token_digest("abc"), abc);
        assert_eq!(parse_digest(abc), Some(sha256(b"abc")));
        assert_eq!(parse_digest(&abc.to_uppercase()), Some(sha256(b"abc")));
        assert_eq!(parse_digest("zz"), None);
        assert_eq!(parse_digest(&"g".repeat(64)), None);
    }
}
