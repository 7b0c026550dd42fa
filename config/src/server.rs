//! `[server]`: the gRPC listener, its TLS and its transport limits.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// `[server]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// How long in-flight calls may run after SIGTERM/SIGINT before the
    /// server drops them.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Listen on a non-loopback address with neither TLS nor tokens: whoever
    /// reaches the port can read and write everything. Off: such an address
    /// is refused at start.
    pub insecure: bool,
    /// Who may use server reflection (the schema, not the data).
    pub reflection: Reflection,
    /// `[server.tls]`: TLS, and client certificates.
    pub tls: TlsSettings,
    /// `[server.transport]`: limits on connections and streams.
    pub transport: TransportSettings,
}

/// `server.reflection`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reflection {
    /// Served to anyone, token or not.
    Open,
    /// Served to any valid token (to anyone when no tokens are configured).
    #[default]
    Read,
    /// Not served.
    Off,
}

/// `[server.tls]`: PEM files, read at start and again whenever they change
/// or the server gets SIGHUP; connections already open keep theirs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// The certificate chain, leaf first. With `key`, the server speaks TLS
    /// only.
    pub cert: Option<PathBuf>,
    /// The certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// CA certificates that sign client certificates: when set, every client
    /// must present one (mutual TLS).
    pub client_ca: Option<PathBuf>,
    /// How often the files are checked for changes.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
}

impl TlsSettings {
    /// Whether TLS is on (`cert` and `key` set; [`ServerSettings::validate`]
    /// refuses one without the other).
    pub fn enabled(&self) -> bool {
        self.cert.is_some() && self.key.is_some()
    }
}

/// `[server.transport]`: what one client can make the server hold.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransportSettings {
    /// Open connections; one more is closed as soon as it is accepted.
    pub max_connections: usize,
    /// Calls at once on one connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_concurrent_streams: u32,
    /// Bytes of request bodies received and not yet decoded, summed over all
    /// calls; a call that would go past it fails RESOURCE_EXHAUSTED.
    pub max_buffered_request_bytes: usize,
    /// A request body that sends nothing for this long while unfinished
    /// fails DEADLINE_EXCEEDED, freeing what it holds.
    #[serde(with = "humantime_serde")]
    pub request_stall_timeout: Duration,
    /// A connection with no call running that sends nothing for this long is
    /// closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How long a new connection has for its TLS handshake.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Largest header block of one call (HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE).
    pub max_header_bytes: u32,
}

impl Default for ServerSettings {
    fn default() -> ServerSettings {
        ServerSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            shutdown_grace: Duration::from_secs(10),
            insecure: false,
            reflection: Reflection::default(),
            tls: TlsSettings::default(),
            transport: TransportSettings::default(),
        }
    }
}

impl Default for TlsSettings {
    fn default() -> TlsSettings {
        TlsSettings {
            cert: None,
            key: None,
            client_ca: None,
            reload_interval: Duration::from_secs(10),
        }
    }
}

impl Default for TransportSettings {
    fn default() -> TransportSettings {
        TransportSettings {
            max_connections: 4096,
            max_concurrent_streams: 128,
            max_buffered_request_bytes: 256 * 1024 * 1024,
            request_stall_timeout: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(300),
            handshake_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
        }
    }
}

impl ServerSettings {
    /// The rule of an exposed port, for the server before it listens: a
    /// non-loopback `listen` needs TLS, tokens (`tokens_configured`) or
    /// `insecure = true`, which says the operator guards the network (a
    /// private network, a NetworkPolicy).
    pub fn check_exposure(&self, tokens_configured: bool) -> Result<(), ConfigError> {
        if self.listen.ip().is_loopback()
            || self.insecure
            || self.tls.enabled()
            || tokens_configured
        {
            return Ok(());
        }
        Err(ConfigError::new(
            "server.listen",
            format!(
                "{} is not a loopback address, and nothing guards the port (no server.tls, \
                 no auth.tokens): anyone who reaches it can read and write every entry; set \
                 server.insecure = true (ROADIE__SERVER__INSECURE=true) if only trusted \
                 clients can reach it",
                self.listen
            ),
        ))
    }

    /// Checks the TLS pair and the transport limits.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let tls = &self.tls;
        if tls.cert.is_some() != tls.key.is_some() {
            return Err(ConfigError::new(
                if tls.cert.is_some() {
                    "server.tls.key"
                } else {
                    "server.tls.cert"
                },
                "server.tls.cert and server.tls.key go together",
            ));
        }
        if tls.client_ca.is_some() && !tls.enabled() {
            return Err(ConfigError::new(
                "server.tls.client_ca",
                "needs server.tls.cert and server.tls.key",
            ));
        }
        if tls.reload_interval.is_zero() {
            return Err(ConfigError::new(
                "server.tls.reload_interval",
                "must be longer than 0s",
            ));
        }
        let transport = &self.transport;
        for (setting, value) in [
            (
                "server.transport.max_connections",
                transport.max_connections,
            ),
            (
                "server.transport.max_concurrent_streams",
                transport.max_concurrent_streams as usize,
            ),
            (
                "server.transport.max_buffered_request_bytes",
                transport.max_buffered_request_bytes,
            ),
            (
                "server.transport.max_header_bytes",
                transport.max_header_bytes as usize,
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::new(setting, "must be at least 1"));
            }
        }
        for (setting, value) in [
            (
                "server.transport.request_stall_timeout",
                transport.request_stall_timeout,
            ),
            ("server.transport.idle_timeout", transport.idle_timeout),
            (
                "server.transport.handshake_timeout",
                transport.handshake_timeout,
            ),
        ] {
            if value.is_zero() {
                return Err(ConfigError::new(setting, "must be longer than 0s"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unguarded_public_listen_address_needs_tls_tokens_or_insecure() {
        let mut server = ServerSettings::default();
        assert!(server.check_exposure(false).is_ok(), "loopback by default");
        server.listen = "[::1]:50051".parse().expect("an address");
        assert!(server.check_exposure(false).is_ok());
        for public in ["0.0.0.0:50051", "[::]:50051", "10.0.0.5:50051"] {
            server.listen = public.parse().expect("an address");
            server.insecure = false;
            let error = server.check_exposure(false).expect_err("refused");
            assert_eq!(error.setting, "server.listen");
            assert!(error.message.contains("server.insecure = true"), "{error}");
            assert!(server.check_exposure(true).is_ok(), "{public} with tokens");
            server.tls.cert = Some("cert.pem".into());
            server.tls.key = Some("key.pem".into());
            assert!(server.check_exposure(false).is_ok(), "{public} with TLS");
            server.tls = TlsSettings::default();
            server.insecure = true;
            assert!(
                server.check_exposure(false).is_ok(),
                "{public} with insecure"
            );
        }
    }

    #[test]
    fn tls_files_go_in_pairs() {
        let mut server = ServerSettings::default();
        server.tls.cert = Some("cert.pem".into());
        let error = server.validate().expect_err("a cert without a key");
        assert_eq!(error.setting, "server.tls.key");
        server.tls.cert = None;
        server.tls.client_ca = Some("ca.pem".into());
        let error = server.validate().expect_err("client_ca without TLS");
        assert_eq!(error.setting, "server.tls.client_ca");
    }
}
