//! What an execution may touch beyond pure computation, and who may grant it.
//!
//! | class | capability | granted when |
//! |---|---|---|
//! | safe | none (pure compute), `scratch` (a writable directory discarded afterwards) | always |
//! | sensitive read | `datasets: [{name}]`, read-only at `/data/<name>` | the caller's verified scopes hold the dataset's scope |
//! | destructive | `datasets: [{name, write: true}]` | an approval token whose SHA-256 the server lists |
//!
//! The caller's identity and scopes are the headers the gateway's auth filter forwards (and strips
//! from clients): the service must only be reachable through the gateway.

use crate::config::DatasetSettings;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::path::PathBuf;

/// Capabilities as a request asks for them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestedCapabilities {
    /// A writable, empty directory at `/scratch`, deleted when the execution ends.
    #[serde(default)]
    pub scratch: bool,
    /// Configured datasets to mount at `/data/<name>`.
    #[serde(default)]
    pub datasets: Vec<RequestedDataset>,
}

/// One dataset a request asks for.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestedDataset {
    /// The configured dataset's name.
    pub name: String,
    /// Write access: destructive, so it needs an approval token.
    #[serde(default)]
    pub write: bool,
}

/// Who is asking, as the gateway verified it.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// `x-gateway-identity`.
    pub identity: Option<String>,
    /// `x-gateway-scopes`, space-separated.
    pub scopes: Vec<String>,
    /// `x-sandbox-approval`: a token approving destructive capabilities.
    pub approval_token: Option<String>,
}

/// A host directory the guest sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The host directory.
    pub host: PathBuf,
    /// Where the guest sees it.
    pub guest: String,
    /// Whether the guest may write.
    pub writable: bool,
}

/// A capability refused to this caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No dataset of that name is configured.
    #[error("no dataset named {0:?} is configured")]
    UnknownDataset(String),
    /// The caller lacks the dataset's scope.
    #[error("dataset {dataset:?} needs scope {scope:?}")]
    MissingScope {
        /// The dataset.
        dataset: String,
        /// The scope it needs.
        scope: String,
    },
    /// A destructive capability without a valid approval token.
    #[error("write access to dataset {0:?} is destructive and needs an approval token")]
    ApprovalRequired(String),
}

/// Decides the mounts for a request (the scratch directory is added by the caller, which owns it).
pub fn grant(
    requested: &RequestedCapabilities,
    caller: &Caller,
    datasets: &[DatasetSettings],
    approval_token_sha256: &[String],
) -> Result<Vec<Mount>, Refusal> {
    let approved = caller.approval_token.as_deref().is_some_and(|token| {
        let digest = hex::encode(Sha256::digest(token.as_bytes()));
        approval_token_sha256
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(&digest))
    });
    requested
        .datasets
        .iter()
        .map(|wanted| {
            let dataset = datasets
                .iter()
                .find(|d| d.name == wanted.name)
                .ok_or_else(|| Refusal::UnknownDataset(wanted.name.clone()))?;
            let scope = dataset.required_scope();
            if !caller.scopes.contains(&scope) {
                return Err(Refusal::MissingScope {
                    dataset: dataset.name.clone(),
                    scope,
                });
            }
            if wanted.write && !approved {
                return Err(Refusal::ApprovalRequired(dataset.name.clone()));
            }
            Ok(Mount {
                host: dataset.path.clone(),
                guest: format!("/data/{}", dataset.name),
                writable: wanted.write,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reports() -> Vec<DatasetSettings> {
        vec![DatasetSettings {
            name: "reports".into(),
            path: "/srv/reports".into(),
            scope: None,
        }]
    }

    fn asking(write: bool) -> RequestedCapabilities {
        RequestedCapabilities {
            scratch: false,
            datasets: vec![RequestedDataset {
                name: "reports".into(),
                write,
            }],
        }
    }

    fn caller(scopes: &[&str], approval: Option<&str>) -> Caller {
        Caller {
            identity: Some("alice".into()),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            approval_token: approval.map(str::to_string),
        }
    }

    #[test]
    fn pure_compute_needs_nothing() {
        let none = RequestedCapabilities::default();
        assert_eq!(
            grant(&none, &Caller::default(), &reports(), &[]),
            Ok(vec![])
        );
    }

    #[test]
    fn a_dataset_read_needs_its_scope() {
        let refused = grant(&asking(false), &caller(&["other"], None), &reports(), &[]);
        assert!(matches!(refused, Err(Refusal::MissingScope { .. })));
        let mounts = grant(
            &asking(false),
            &caller(&["sandbox:dataset:reports"], None),
            &reports(),
            &[],
        )
        .unwrap();
        assert_eq!(mounts[0].guest, "/data/reports");
        assert!(!mounts[0].writable);
    }

    #[test]
    fn a_dataset_write_needs_an_approval_token_the_server_lists() {
        let scoped = ["sandbox:dataset:reports"];
        let digest = hex::encode(Sha256::digest(b"approve-123"));
        let refused = grant(
            &asking(true),
            &caller(&scoped, Some("wrong")),
            &reports(),
            std::slice::from_ref(&digest),
        );
        assert_eq!(refused, Err(Refusal::ApprovalRequired("reports".into())));
        let mounts = grant(
            &asking(true),
            &caller(&scoped, Some("approve-123")),
            &reports(),
            &[digest],
        )
        .unwrap();
        assert!(mounts[0].writable);
    }

    #[test]
    fn unknown_datasets_are_refused() {
        let mut wanted = asking(false);
        wanted.datasets[0].name = "secrets".into();
        assert_eq!(
            grant(&wanted, &caller(&[], None), &reports(), &[]),
            Err(Refusal::UnknownDataset("secrets".into()))
        );
    }
}
