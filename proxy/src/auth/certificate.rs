//! Client certificates as principals: the `tls` guard.
//!
//! A TLS listener with `tls.clientIdentity: subject-cn` verifies the client's certificate
//! against `tls.clientCaFile` during the handshake (rustls); what the verified certificate
//! says about the client is read here: its subject common name (CN) is the identity that
//! `{identity}` stands for, its subject organizations (O) are its roles (the convention of
//! Kubernetes client certificates, whose O values are groups). Routes name this guard
//! `tls` in `guarded`.

use x509_parser::prelude::{FromDer, X509Certificate};

use super::policy::Principal;

/// The guard's name, as routes refer to it in `guarded`.
pub const TLS: &str = "tls";

/// Why a certificate says nothing usable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CertificateError {
    #[error("not an X.509 certificate: {0}")]
    Parse(String),
    #[error("the subject has no common name (CN)")]
    NoCommonName,
    #[error("the subject common name is not a UTF-8 string")]
    CommonNameNotText,
}

/// The principal a verified client certificate (DER) stands for.
pub fn principal(der: &[u8]) -> Result<Principal, CertificateError> {
    let (_, certificate) = X509Certificate::from_der(der).map_err(|e| CertificateError::Parse(e.to_string()))?;
    let subject = certificate.subject();
    let identity = subject
        .iter_common_name()
        .next()
        .ok_or(CertificateError::NoCommonName)?
        .as_str()
        .map_err(|_| CertificateError::CommonNameNotText)?
        .to_owned();
    let roles = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok())
        .map(str::to_owned)
        .collect();
    Ok(Principal {
        guard: Some(TLS.to_owned()),
        identity: Some(identity),
        roles,
    })
}

/// When a certificate (DER) expires, in seconds since the epoch.
pub fn not_after(der: &[u8]) -> Option<i64> {
    let (_, certificate) = X509Certificate::from_der(der).ok()?;
    Some(certificate.validity().not_after.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

    fn certificate(subject: &[(DnType, &str)]) -> Vec<u8> {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        let mut name = DistinguishedName::new();
        for (kind, value) in subject {
            name.push(kind.clone(), *value);
        }
        params.distinguished_name = name;
        let key = KeyPair::generate().expect("key");
        params.self_signed(&key).expect("certificate").der().to_vec()
    }

    #[test]
    fn the_common_name_is_the_identity_and_organizations_are_roles() {
        let der = certificate(&[
            (DnType::CommonName, "device-7"),
            (DnType::OrganizationName, "devices"),
            (DnType::OrganizationalUnitName, "not-a-role"),
        ]);
        let principal = principal(&der).expect("principal");
        assert_eq!(principal.guard.as_deref(), Some(TLS));
        assert_eq!(principal.identity.as_deref(), Some("device-7"));
        assert_eq!(
            principal.roles.into_iter().collect::<Vec<_>>(),
            vec!["devices".to_owned()]
        );
    }

    #[test]
    fn a_subject_without_common_name_has_no_identity() {
        let der = certificate(&[(DnType::OrganizationName, "devices")]);
        assert_eq!(principal(&der), Err(CertificateError::NoCommonName));
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(matches!(principal(b"\x30\x03abc"), Err(CertificateError::Parse(_))));
        assert_eq!(not_after(b"nope"), None);
    }

    #[test]
    fn not_after_is_read() {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        params.not_after = rcgen::date_time_ymd(2031, 1, 2);
        let key = KeyPair::generate().expect("key");
        let der = params.self_signed(&key).expect("certificate").der().to_vec();
        assert_eq!(not_after(&der), Some(1_925_078_400));
    }
}
