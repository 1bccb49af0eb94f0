//! Why a Kafka connection is refused, in words a person can act on.
//!
//! With wrong SASL credentials, a CA that does not sign the broker's certificate, or a
//! `security.protocol` that does not match the broker's listener, librdkafka never fails a
//! request with the cause: requests time out, and the cause reaches only the client's error
//! callback. [`WatchedContext`] (the producer's context: its polling thread runs the
//! callbacks) catches them, [`classify`] (pure) names the
//! cause, and [`SecurityWatch`] keeps the latest one so readiness can say
//! "SASL authentication failed" instead of "timed out".

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// A cause of refusal that configuration, not the network, must fix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The broker refused the SASL username / password (or mechanism).
    Authentication,
    /// The TLS handshake failed: an unknown CA, an expired or mismatched certificate.
    Tls,
    /// The client speaks plaintext to a TLS or SASL listener, or the other way round.
    ProtocolMismatch,
}

impl Refusal {
    /// What to tell a person, with the settings to look at.
    pub fn describe(self) -> &'static str {
        match self {
            Refusal::Authentication => {
                "SASL authentication failed (check sasl.mechanism, sasl.username and sasl.password)"
            }
            Refusal::Tls => {
                "TLS (SSL) handshake failed (check ssl.ca.location / ssl.ca.pem and the broker's certificate)"
            }
            Refusal::ProtocolMismatch => {
                "the broker's listener does not speak this security.protocol (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL)"
            }
        }
    }
}

/// The cause of a librdkafka client error, if it is one configuration must fix; `None` for
/// plain connectivity trouble (a broker down, a timeout), which retrying may cure.
pub fn classify(code: Option<RDKafkaErrorCode>, reason: &str) -> Option<Refusal> {
    let lower = reason.to_ascii_lowercase();
    if code == Some(RDKafkaErrorCode::Authentication)
        || lower.contains("sasl authentication error")
        || lower.contains("authentication failed")
    {
        return Some(Refusal::Authentication);
    }
    if code == Some(RDKafkaErrorCode::SSL)
        || lower.contains("ssl handshake failed")
        || lower.contains("certificate verify failed")
    {
        return Some(Refusal::Tls);
    }
    if lower.contains("incorrect security.protocol") || lower.contains("connecting to a ssl listener") {
        return Some(Refusal::ProtocolMismatch);
    }
    None
}

/// How long a refusal stays the explanation without being seen again: librdkafka retries
/// a refused connection at most every 10 s (`reconnect.backoff.max.ms`), so a cause not
/// repeated for a minute is gone.
const FRESH_FOR: Duration = Duration::from_secs(60);

/// The latest refusal the clients sharing it have seen.
#[derive(Debug, Default)]
pub struct SecurityWatch {
    latest: Mutex<Option<(Instant, Refusal, String)>>,
}

impl SecurityWatch {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Records a client error; returns the refusal it was, if any.
    pub fn record(&self, now: Instant, code: Option<RDKafkaErrorCode>, reason: &str) -> Option<Refusal> {
        let refusal = classify(code, reason)?;
        *self.latest.lock().unwrap_or_else(|e| e.into_inner()) = Some((now, refusal, reason.to_owned()));
        Some(refusal)
    }

    /// The refusal seen within the last minute, for `/readyz`: its cause and librdkafka's
    /// own words.
    pub fn problem(&self, now: Instant) -> Option<String> {
        let latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        let (at, refusal, reason) = latest.as_ref()?;
        (now.saturating_duration_since(*at) < FRESH_FOR).then(|| format!("Kafka: {}: {reason}", refusal.describe()))
    }
}

/// A librdkafka client context that reports errors to a [`SecurityWatch`] and logs them
/// with `tracing` (the default context logs through the `log` crate, which nothing here
/// collects).
#[derive(Clone, Debug, Default)]
pub struct WatchedContext {
    watch: Arc<SecurityWatch>,
}

impl WatchedContext {
    pub fn new(watch: Arc<SecurityWatch>) -> Self {
        Self { watch }
    }
}

impl ClientContext for WatchedContext {
    fn error(&self, error: KafkaError, reason: &str) {
        match self.watch.record(Instant::now(), error.rdkafka_error_code(), reason) {
            Some(refusal) => tracing::warn!(cause = refusal.describe(), %reason, "Kafka refused the connection"),
            None => tracing::debug!(%error, %reason, "Kafka client error"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Reasons as librdkafka 2.x words them (seen against the local SASL_SSL listener).
    const BAD_PASSWORD: &str = "sasl_ssl://127.0.0.1:19095/bootstrap: SASL authentication error: \
        Authentication failed during authentication due to invalid credentials with SASL mechanism \
        SCRAM-SHA-512 (after 302ms in state AUTH_REQ)";
    const BAD_CA: &str = "ssl://127.0.0.1:19095/bootstrap: SSL handshake failed: error:0A000086:SSL \
        routines::certificate verify failed: broker certificate could not be verified, verify that \
        ssl.ca.location is correctly configured or root CA certificates are installed (after 4ms in \
        state SSL_HANDSHAKE)";
    const PLAINTEXT_TO_TLS: &str = "127.0.0.1:19095/bootstrap: Disconnected while requesting ApiVersion: \
        might be caused by incorrect security.protocol configuration (connecting to a SSL listener?) or \
        broker version is < 0.10 (see api.version.request) (after 1ms in state APIVERSION_QUERY)";
    const DOWN: &str = "127.0.0.1:19092/bootstrap: Connect to ipv4#127.0.0.1:19092 failed: Connection \
        refused (after 0ms in state CONNECT)";

    #[test]
    fn refusals_are_named_and_outages_are_not() {
        use RDKafkaErrorCode::*;
        assert_eq!(
            classify(Some(Authentication), BAD_PASSWORD),
            Some(Refusal::Authentication)
        );
        assert_eq!(classify(None, BAD_PASSWORD), Some(Refusal::Authentication));
        assert_eq!(classify(Some(SSL), BAD_CA), Some(Refusal::Tls));
        assert_eq!(classify(Some(BrokerTransportFailure), BAD_CA), Some(Refusal::Tls));
        assert_eq!(
            classify(Some(BrokerTransportFailure), PLAINTEXT_TO_TLS),
            Some(Refusal::ProtocolMismatch)
        );
        assert_eq!(classify(Some(BrokerTransportFailure), DOWN), None);
        assert_eq!(classify(Some(AllBrokersDown), "1/1 brokers are down"), None);
    }

    #[test]
    fn the_watch_keeps_the_latest_refusal_for_a_minute() {
        let watch = SecurityWatch::default();
        let t = Instant::now();
        assert_eq!(watch.record(t, None, DOWN), None);
        assert_eq!(watch.problem(t), None, "an outage is not a refusal");
        watch.record(t, Some(RDKafkaErrorCode::Authentication), BAD_PASSWORD);
        let problem = watch.problem(t + Duration::from_secs(59)).unwrap_or_default();
        assert!(problem.starts_with("Kafka: SASL authentication failed"), "{problem}");
        assert!(problem.contains("invalid credentials"), "{problem}");
        assert_eq!(watch.problem(t + Duration::from_secs(60)), None);
        // A later refusal of another kind replaces it.
        watch.record(t + Duration::from_secs(61), None, BAD_CA);
        let problem = watch.problem(t + Duration::from_secs(61)).unwrap_or_default();
        assert!(problem.starts_with("Kafka: TLS (SSL) handshake failed"), "{problem}");
    }
}
