//! TLS for the fleet's database connection: rustls (ring), the certificate chain and the
//! host name verified against the system's roots plus `ca_file`.
//!
//! Memory decides the shape. A chain process lives for months mostly asleep, and a
//! resident root store (some 145 system roots, parsed) costs about 300 KiB of anonymous
//! memory per process that freeing does not give back (the heap's high-water mark stays:
//! measured, see notes/fleet-design.md §1). Connections are rare (a launch, after an
//! outage), so [`FleetVerifier`] keeps no roots: at each handshake it streams the system
//! bundle one PEM certificate at a time, keeps only the anchors whose subject is an issuer
//! named in the presented chain (a cross-signed root too), adds `ca_file`'s certificates,
//! verifies the chain and the host name with a throw-away webpki verifier, and drops it.
//!
//! The system bundle: `SSL_CERT_FILE` if set, else the first of the usual bundle files
//! that exists (Debian, RHEL, SUSE, Alpine, BSD layouts). `SSL_CERT_DIR` (hashed
//! directories) is not read.
//!
//! `[email]` keeps lettre's own TLS (its parameters type is not reusable).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Why a TLS connection failed.
#[derive(Debug)]
pub(crate) enum TlsError {
    /// The server could not be verified, or TLS could not be agreed (a config matter).
    Refused(String),
    /// The network failed during the handshake.
    Io(String),
}

/// The usual system bundle files, the first one that exists is read.
const BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

fn system_bundle() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SSL_CERT_FILE") {
        return Some(PathBuf::from(p));
    }
    BUNDLES.iter().map(PathBuf::from).find(|p| p.is_file())
}

/// Read `ca_file`'s certificates (PEM), with an error that names the file.
pub(crate) fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let iter = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read ca_file {}: {e}", path.display()))?;
    let certs = iter
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("ca_file {}: not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "ca_file {}: no certificate in it (expected PEM \"BEGIN CERTIFICATE\" blocks)",
            path.display()
        ));
    }
    Ok(certs)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The verifier (see the module's doc). `ca` holds `ca_file`'s certificates (few: kept).
#[derive(Debug)]
struct FleetVerifier {
    ca: Vec<CertificateDer<'static>>,
    provider: Arc<CryptoProvider>,
}

/// One DER element at the start of `input`: (tag, content, rest).
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let mut len = 0usize;
        for b in &rest[..n] {
            len = (len << 8) | usize::from(*b);
        }
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The issuer Name of a certificate (the content of its SEQUENCE).
fn issuer(cert: &[u8]) -> Option<&[u8]> {
    let (_, cert, _) = der(cert)?;
    let (_, tbs, _) = der(cert)?;
    let mut rest = tbs;
    if rest.first() == Some(&0xa0) {
        rest = der(rest)?.2; // version
    }
    rest = der(rest)?.2; // serial number
    rest = der(rest)?.2; // signature algorithm
    let (tag, name, _) = der(rest)?;
    (tag == 0x30).then_some(name)
}

impl FleetVerifier {
    /// The anchors this handshake needs: `ca_file`'s, and the system's whose subject is
    /// an issuer in `chain`.
    fn roots(&self, chain: &[&CertificateDer<'_>]) -> RootCertStore {
        let mut store = RootCertStore::empty();
        for c in &self.ca {
            let _ = store.add(c.clone());
        }
        let issuers: Vec<&[u8]> = chain.iter().filter_map(|c| issuer(c)).collect();
        let Some(bundle) = system_bundle() else {
            return store;
        };
        let Ok(iter) = CertificateDer::pem_file_iter(&bundle) else {
            return store;
        };
        for cert in iter.flatten() {
            if store.add(cert).is_ok() {
                let keep = store.roots.last().is_some_and(|a| {
                    let s: &[u8] = a.subject.as_ref();
                    issuers.contains(&s)
                });
                if !keep {
                    store.roots.pop();
                }
            }
        }
        store
    }
}

impl ServerCertVerifier for FleetVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain = vec![end_entity];
        chain.extend(intermediates.iter());
        let roots = self.roots(&chain);
        if roots.is_empty() {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ));
        }
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// TLS over `tcp` to `host` (a name or an IP address), verified (see the module's doc).
pub(crate) async fn connect(
    ca_file: Option<&Path>,
    host: &str,
    tcp: tokio::net::TcpStream,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, TlsError> {
    let ca = match ca_file {
        Some(p) => read_ca_file(p).map_err(TlsError::Refused)?,
        None => Vec::new(),
    };
    let provider = provider();
    let verifier = FleetVerifier {
        ca,
        provider: provider.clone(),
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Refused(format!("TLS setup: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| TlsError::Refused(format!("{host:?} is not a name TLS can verify: {e}")))?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(
            |e| match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                Some(r) => TlsError::Refused(format!("TLS with {host} failed: {r}")),
                None => TlsError::Io(format!("TLS with {host}: {e}")),
            },
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_walker_finds_nothing_in_garbage() {
        assert_eq!(issuer(b""), None);
        assert_eq!(issuer(&[0x30, 0x82, 0xff]), None);
        assert_eq!(issuer(&[0x30, 0x03, 0x30, 0x01, 0x00]), None);
    }
}
