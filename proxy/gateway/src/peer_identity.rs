//! Listener TLS, including mutual TLS: client certificates verified against a CA bundle, and the
//! verified peer's names carried from the handshake to the filters (`source.principal`,
//! `connection.*_peer_certificate`), as Envoy and Istio name them.

use async_trait::async_trait;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use pingora::proxy::Session;
use pingora::tls::ssl::{SslFiletype, SslVerifyMode};
use pingora::tls::x509::{X509Name, X509Ref};
use proxy_wasm_host::PeerCertificate;
use std::any::Any;
use std::path::Path;
use std::sync::Arc;

/// Records the client certificate's names once the handshake has verified it.
struct RecordPeerCertificate;

#[async_trait]
impl TlsAccept for RecordPeerCertificate {
    async fn handshake_complete_callback(
        &self,
        ssl: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        let certificate = ssl.peer_certificate()?;
        Some(Arc::new(peer_certificate(&certificate)))
    }
}

/// TLS settings for a listener: its certificate and key, HTTP/2 by ALPN, and, with `client_ca`,
/// a required client certificate that the bundle verifies (others fail the handshake).
pub fn listener_settings(
    certificate: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<TlsSettings, String> {
    let mut settings =
        TlsSettings::with_callbacks(Box::new(RecordPeerCertificate)).map_err(|e| e.to_string())?;
    settings
        .set_certificate_chain_file(certificate)
        .map_err(|e| format!("certificate {}: {e}", certificate.display()))?;
    settings
        .set_private_key_file(key, SslFiletype::PEM)
        .map_err(|e| format!("key {}: {e}", key.display()))?;
    settings
        .check_private_key()
        .map_err(|e| format!("the key does not match the certificate: {e}"))?;
    if let Some(ca) = client_ca {
        settings
            .set_ca_file(ca)
            .map_err(|e| format!("client CA {}: {e}", ca.display()))?;
        let names = X509Name::load_client_ca_file(ca)
            .map_err(|e| format!("client CA {}: {e}", ca.display()))?;
        settings.set_client_ca_list(names);
        settings.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
    }
    settings.enable_h2();
    Ok(settings)
}

/// The client certificate the listener verified for this connection, if any.
pub fn verified_peer(session: &Session) -> Option<PeerCertificate> {
    session
        .digest()?
        .ssl_digest
        .as_ref()?
        .extension
        .get::<PeerCertificate>()
        .cloned()
}

fn peer_certificate(certificate: &X509Ref) -> PeerCertificate {
    let subject = certificate
        .subject_name()
        .entries()
        .filter_map(|entry| {
            let name = entry.object().nid().short_name().ok()?;
            let value = entry.data().to_string().ok()?;
            Some(format!("{name}={value}"))
        })
        .collect::<Vec<_>>()
        .join(",");
    let mut names = PeerCertificate {
        subject,
        ..PeerCertificate::default()
    };
    for san in certificate.subject_alt_names().into_iter().flatten() {
        if let Some(uri) = san.uri() {
            names.uri_sans.push(uri.to_string());
        } else if let Some(dns) = san.dnsname() {
            names.dns_sans.push(dns.to_string());
        }
    }
    names
}
