//! Where a JWT guard's keys come from, kept fresh: given in the configuration, read from a
//! JWKS file (a mounted ConfigMap or Secret, which Kubernetes updates in place) or fetched
//! from a JWKS URL (an identity provider's `jwks_uri`). File and URL are read again every
//! refresh interval, and at once (at most every [`MIN_REFRESH_GAP`]) when a token names a
//! key id the set does not have — how a provider's key rotation reaches the proxy. A
//! refresh that fails keeps the last good keys.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::jwt::{KeySet, KeySetError};

/// A token with an unknown key id refreshes the keys at most this often.
pub const MIN_REFRESH_GAP: Duration = Duration::from_secs(10);
/// A JWKS larger than this is refused.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// A fetch that takes longer fails (the last good keys stay).
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the keys are.
#[derive(Clone, Debug)]
pub enum KeySource {
    /// Given in the configuration: never change.
    Fixed(KeySet),
    File(PathBuf),
    Url(String),
}

/// Keys that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyLoadError {
    #[error("{path}: {error}")]
    File { path: String, error: std::io::Error },
    #[error("{url}: {error}")]
    Fetch { url: String, error: String },
    #[error("{source_name}: {error}")]
    Invalid { source_name: String, error: KeySetError },
}

/// A guard's current keys.
pub struct KeyStore {
    source: KeySource,
    current: RwLock<Option<Arc<KeySet>>>,
    last_attempt: Mutex<Option<Instant>>,
    /// The last refresh failure, while the keys are older than it.
    failing: Mutex<Option<String>>,
    client: Client<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, Empty<Bytes>>,
}

impl KeyStore {
    /// A store for `source`, whose `https` URLs are verified with `tls` (the platform's
    /// roots, or a configured CA); nothing is read yet (see [`refresh`](Self::refresh)).
    pub fn new(source: KeySource, tls: rustls::ClientConfig) -> Self {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let current = match &source {
            KeySource::Fixed(keys) => Some(Arc::new(keys.clone())),
            _ => None,
        };
        Self {
            source,
            current: RwLock::new(current),
            last_attempt: Mutex::new(None),
            failing: Mutex::new(None),
            client: Client::builder(TokioExecutor::new()).build(https),
        }
    }

    /// The keys now; `None` until they were read once.
    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Why the last refresh failed, if it did and no later one worked.
    pub fn failing(&self) -> Option<String> {
        self.failing.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Reads the keys again; on failure the last good ones stay.
    pub async fn refresh(&self) -> Result<(), KeyLoadError> {
        *self.last_attempt.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        let result = self.read().await;
        let mut failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(Some(keys)) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(keys));
                *failing = None;
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(error) => {
                *failing = Some(error.to_string());
                Err(error)
            }
        }
    }

    async fn read(&self) -> Result<Option<KeySet>, KeyLoadError> {
        let (bytes, source_name) = match &self.source {
            KeySource::Fixed(_) => return Ok(None),
            KeySource::File(path) => {
                let file = path.clone();
                let read = tokio::task::spawn_blocking(move || std::fs::read(file))
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(e)));
                let bytes = read.map_err(|error| KeyLoadError::File {
                    path: path.display().to_string(),
                    error,
                })?;
                (Bytes::from(bytes), path.display().to_string())
            }
            KeySource::Url(url) => (self.fetch(url).await?, url.clone()),
        };
        KeySet::from_jwks(&bytes)
            .map(Some)
            .map_err(|error| KeyLoadError::Invalid { source_name, error })
    }

    async fn fetch(&self, url: &str) -> Result<Bytes, KeyLoadError> {
        let failed = |error: String| KeyLoadError::Fetch {
            url: url.to_owned(),
            error,
        };
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| failed(e.to_string()))?;
        let response = tokio::time::timeout(FETCH_TIMEOUT, self.client.get(uri))
            .await
            .map_err(|_| failed(format!("no answer within {FETCH_TIMEOUT:?}")))?
            .map_err(|e| failed(e.to_string()))?;
        if !response.status().is_success() {
            return Err(failed(format!("HTTP {}", response.status())));
        }
        let body = tokio::time::timeout(
            FETCH_TIMEOUT,
            Limited::new(response.into_body(), MAX_JWKS_BYTES).collect(),
        )
        .await
        .map_err(|_| failed(format!("body not read within {FETCH_TIMEOUT:?}")))?
        .map_err(|e| failed(e.to_string()))?;
        Ok(body.to_bytes())
    }

    /// A token named key id `kid`, which the keys lack: refreshes now unless the last
    /// attempt was less than [`MIN_REFRESH_GAP`] ago. The token that asked is refused
    /// either way (the client retries).
    pub fn unknown_key(self: &Arc<Self>, kid: &str) {
        if matches!(self.source, KeySource::Fixed(_)) {
            return;
        }
        {
            let mut last = self.last_attempt.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|at| at.elapsed() < MIN_REFRESH_GAP) {
                return;
            }
            *last = Some(Instant::now());
        }
        let store = Arc::clone(self);
        let kid = kid.to_owned();
        tokio::spawn(async move {
            match store.refresh().await {
                Ok(()) => tracing::info!(%kid, "JWT keys refreshed for an unknown key id"),
                Err(error) => tracing::warn!(%kid, %error, "JWT keys not refreshed; the last good keys stay"),
            }
        });
    }

    /// Refreshes every `every` until the task is aborted (nothing to do for fixed keys).
    pub fn spawn_refresher(self: &Arc<Self>, every: Duration) -> Option<tokio::task::JoinHandle<()>> {
        if matches!(self.source, KeySource::Fixed(_)) {
            return None;
        }
        let store = Arc::clone(self);
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                // Until the first success, retried every few seconds rather than every `every`.
                let wait = if store.current().is_none() {
                    Duration::from_secs(2)
                } else {
                    Duration::ZERO
                };
                if let Err(error) = store.refresh().await {
                    tracing::warn!(%error, "JWT keys not refreshed; the last good keys stay");
                }
                if !wait.is_zero() {
                    while store.current().is_none() {
                        tokio::time::sleep(wait).await;
                        if let Err(error) = store.refresh().await {
                            tracing::warn!(%error, "JWT keys not read yet; every CONNECT is refused until they are");
                        }
                    }
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::super::jwt::test_keys::{TestKey, jwks};
    use super::*;

    fn tls() -> rustls::ClientConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| {
                b.with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth()
            })
            .expect("tls config")
    }

    #[tokio::test]
    async fn a_jwks_file_is_read_again_and_a_bad_one_keeps_the_last_good_keys() {
        let dir = std::env::temp_dir().join(format!("mqtt-kafka-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("jwks.json");
        let (k1, k2) = (TestKey::new("k1"), TestKey::new("k2"));
        std::fs::write(&path, jwks(&[&k1])).expect("write");
        let store = Arc::new(KeyStore::new(KeySource::File(path.clone()), tls()));
        assert!(store.current().is_none());
        store.refresh().await.expect("reads");
        assert!(store.current().is_some_and(|k| k.has("k1") && !k.has("k2")));

        std::fs::write(&path, jwks(&[&k1, &k2])).expect("rotate");
        store.refresh().await.expect("reads again");
        assert!(store.current().is_some_and(|k| k.has("k2")));

        std::fs::write(&path, b"{not json").expect("break");
        assert!(store.refresh().await.is_err());
        assert!(
            store.current().is_some_and(|k| k.has("k1") && k.has("k2")),
            "last good keys"
        );
        assert!(store.failing().is_some());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[tokio::test]
    async fn a_jwks_url_is_fetched_and_an_unknown_key_id_fetches_it_again() {
        use axum::routing::get;
        let served = Arc::new(Mutex::new(jwks(&[&TestKey::new("k1")])));
        let body = Arc::clone(&served);
        let app = axum::Router::new().route(
            "/jwks",
            get(move || {
                let body = body.lock().map(|b| b.clone()).unwrap_or_default();
                async move { body }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        let store = Arc::new(KeyStore::new(KeySource::Url(format!("http://{address}/jwks")), tls()));
        store.refresh().await.expect("fetched");
        assert!(store.current().is_some_and(|k| k.has("k1")));

        *served.lock().expect("lock") = jwks(&[&TestKey::new("k2")]);
        // Just refreshed: an unknown key id does not fetch again yet.
        store.unknown_key("k2");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(store.current().is_some_and(|k| !k.has("k2")));
        *store.last_attempt.lock().expect("lock") = Some(Instant::now() - MIN_REFRESH_GAP);
        store.unknown_key("k2");
        for _ in 0..50 {
            if store.current().is_some_and(|k| k.has("k2")) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(store.current().is_some_and(|k| k.has("k2")), "rotated key fetched");

        let gone = Arc::new(KeyStore::new(
            KeySource::Url(format!("http://{address}/missing")),
            tls(),
        ));
        assert!(matches!(gone.refresh().await, Err(KeyLoadError::Fetch { .. })));
    }
}
