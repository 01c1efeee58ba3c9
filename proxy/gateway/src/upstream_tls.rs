//! A cluster's own TLS credentials for upstream connections: the CA bundle that verifies the
//! upstream instead of the system roots, and the client certificate this proxy presents (mutual
//! TLS between sidecars). Read when a configuration loads, so a reload picks up rotated files.

use crate::config::{Config, ConfigError, UpstreamTls};
use pingora::protocols::tls::CaType;
use pingora::tls::pkey::PKey;
use pingora::tls::x509::X509;
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::CertKey;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;

/// The parsed credentials, plus the SHA-256 of the files they came from (to tell whether a reload
/// changed them without keeping the private key's text around).
#[derive(Default)]
pub struct UpstreamCredentials {
    ca: Option<Arc<CaType>>,
    client: Option<Arc<CertKey>>,
    files_digest: [u8; 32],
}

impl PartialEq for UpstreamCredentials {
    fn eq(&self, other: &Self) -> bool {
        self.files_digest == other.files_digest
    }
}

impl std::fmt::Debug for UpstreamCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key material.
        f.debug_struct("UpstreamCredentials")
            .field("ca", &self.ca.as_ref().map(|ca| ca.len()))
            .field("client_certificate", &self.client.is_some())
            .finish()
    }
}

impl UpstreamCredentials {
    /// Reads the files `tls` names (relative to `config`'s file); `field` names it in errors.
    pub fn load(tls: &UpstreamTls, config: &Config, field: &str) -> Result<Self, ConfigError> {
        let mut files = Sha256::new();
        let mut read = |path: &Path, name: &str| {
            let path = config.resolve(path);
            let bytes = std::fs::read(&path).map_err(|e| {
                ConfigError::new(
                    format!("{field}.{name}"),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            // Length first, so bytes moving from one file to the next still change the digest.
            files.update((bytes.len() as u64).to_le_bytes());
            files.update(&bytes);
            Ok::<_, ConfigError>(bytes)
        };
        let certificates = |bytes: &[u8], name: &str| {
            X509::stack_from_pem(bytes)
                .ok()
                .filter(|certificates| !certificates.is_empty())
                .ok_or_else(|| {
                    ConfigError::new(format!("{field}.{name}"), "no PEM certificate in the file")
                })
        };
        let ca = match &tls.ca {
            Some(path) => Some(Arc::new(
                certificates(&read(path, "ca")?, "ca")?.into_boxed_slice(),
            )),
            None => None,
        };
        let client = match (&tls.client_certificate, &tls.client_key) {
            (Some(certificate), Some(key)) => {
                let chain = certificates(
                    &read(certificate, "client_certificate")?,
                    "client_certificate",
                )?;
                let key = PKey::private_key_from_pem(&read(key, "client_key")?).map_err(|_| {
                    ConfigError::new(
                        format!("{field}.client_key"),
                        "no PEM private key in the file",
                    )
                })?;
                Some(Arc::new(CertKey::new(chain, key)))
            }
            _ => None,
        };
        Ok(Self {
            ca,
            client,
            files_digest: files.finalize().into(),
        })
    }

    /// Makes `peer` verify with the CA bundle and present the client certificate, where set.
    pub fn apply(&self, peer: &mut HttpPeer) {
        if let Some(ca) = &self.ca {
            peer.options.ca = Some(ca.clone());
        }
        if let Some(client) = &self.client {
            peer.client_cert_key = Some(client.clone());
        }
    }
}
