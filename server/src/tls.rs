//! TLS on the gRPC port: `server.tls`'s certificate, key and client CA,
//! read at start and again whenever a file changes or the process gets
//! SIGHUP. A new configuration applies to connections accepted from then
//! on; open connections keep the one they were accepted with. A reload
//! that fails (a half-written file, a key that does not match) keeps the
//! configuration in use and logs why.

use std::{
    path::Path,
    sync::{Arc, RwLock},
};

use roadie_config::TlsSettings;
use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// The TLS configuration in use, and how to reload it.
#[derive(Debug)]
pub(crate) struct Tls {
    settings: TlsSettings,
    current: RwLock<Loaded>,
    reloads: tokio::sync::watch::Sender<u64>,
}

#[derive(Debug, Clone)]
struct Loaded {
    files: Files,
    config: Arc<ServerConfig>,
}

/// The bytes of the three files, to tell a change.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Files {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl Tls {
    /// Loads `settings`' files; `None` when TLS is off. The error names
    /// the setting whose file is at fault.
    pub(crate) fn load(settings: &TlsSettings) -> Result<Option<Arc<Tls>>, String> {
        if !settings.enabled() {
            return Ok(None);
        }
        let files = Files::read(settings)?;
        let config = build(&files)?;
        Ok(Some(Arc::new(Tls {
            settings: settings.clone(),
            current: RwLock::new(Loaded { files, config }),
            reloads: tokio::sync::watch::channel(0).0,
        })))
    }

    /// An acceptor for the next connection.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        let current = self
            .current
            .read()
            .unwrap_or_else(|poison| poison.into_inner());
        TlsAcceptor::from(current.config.clone())
    }

    /// Reloads successfully applied since start; ticks after each.
    pub(crate) fn reloads(&self) -> tokio::sync::watch::Receiver<u64> {
        self.reloads.subscribe()
    }

    /// Reads the files again; applies them if they changed (or if `force`).
    fn reload(&self, force: bool) {
        let files = match Files::read(&self.settings) {
            Ok(files) => files,
            Err(error) => {
                tracing::error!(%error, "cannot reload TLS files; keeping the ones in use");
                return;
            }
        };
        let mut current = self
            .current
            .write()
            .unwrap_or_else(|poison| poison.into_inner());
        if !force && current.files == files {
            return;
        }
        match build(&files) {
            Ok(config) => {
                *current = Loaded { files, config };
                drop(current);
                self.reloads.send_modify(|count| *count += 1);
                tracing::info!("TLS certificate and keys reloaded; new connections use them");
            }
            Err(error) => {
                // Remembered, so an unchanged bad file is reported once.
                current.files = files;
                tracing::error!(%error, "cannot reload TLS files; keeping the ones in use");
            }
        }
    }

    /// Checks the files every `server.tls.reload_interval` and reloads on
    /// SIGHUP, until `stop`.
    pub(crate) async fn run(self: Arc<Tls>, stop: CancellationToken) {
        let mut every = tokio::time::interval(self.settings.reload_interval);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        #[cfg(unix)]
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(signal) => Some(signal),
            Err(error) => {
                tracing::warn!(%error, "cannot watch SIGHUP; TLS files reload on change only");
                None
            }
        };
        loop {
            #[cfg(unix)]
            let hangup_received = async {
                match hangup.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hangup_received = std::future::pending::<Option<()>>();
            tokio::select! {
                () = stop.cancelled() => return,
                _ = every.tick() => self.reload(false),
                _ = hangup_received => {
                    tracing::info!("SIGHUP: reloading the TLS files");
                    self.reload(true);
                }
            }
        }
    }
}

impl Files {
    fn read(settings: &TlsSettings) -> Result<Files, String> {
        let read = |setting: &str, path: &Path| {
            std::fs::read(path).map_err(|error| format!("{setting}: {}: {error}", path.display()))
        };
        let (Some(cert), Some(key)) = (&settings.cert, &settings.key) else {
            return Err("server.tls.cert and server.tls.key go together".to_owned());
        };
        Ok(Files {
            cert: read("server.tls.cert", cert)?,
            key: read("server.tls.key", key)?,
            client_ca: settings
                .client_ca
                .as_deref()
                .map(|path| read("server.tls.client_ca", path))
                .transpose()?,
        })
    }
}

/// A rustls server configuration for HTTP/2 from the files' bytes.
fn build(files: &Files) -> Result<Arc<ServerConfig>, String> {
    let certs = CertificateDer::pem_slice_iter(&files.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("server.tls.cert: {error}"))?;
    if certs.is_empty() {
        return Err("server.tls.cert: no PEM certificate in the file".to_owned());
    }
    let key = PrivateKeyDer::from_pem_slice(&files.key)
        .map_err(|error| format!("server.tls.key: {error}"))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("server.tls: {error}"))?;
    let builder = match &files.client_ca {
        Some(pem) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|error| format!("server.tls.client_ca: {error}"))?;
                roots
                    .add(cert)
                    .map_err(|error| format!("server.tls.client_ca: {error}"))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|error| format!("server.tls.client_ca: {error}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|error| format!("server.tls.key: {error}"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}
