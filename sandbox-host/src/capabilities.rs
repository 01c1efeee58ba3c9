//! What an execution may touch beyond pure computation, and who may grant it.
//!
//! | class | capability | granted when |
//! |---|---|---|
//! | safe | none (pure compute), `scratch` (a writable directory discarded afterwards) | always |
//! | sensitive read | `datasets: [{name}]`, read-only at `/data/<name>` | the caller's verified scopes hold the dataset's scope |
//! | destructive | `datasets: [{name, write: true}]` | an approval for this identity, dataset and code, unexpired |
//!
//! The caller's identity and scopes count only on requests the gateway signed (see `server`).
//! An approval is `v1:<expiry, unix seconds>:<hex HMAC-SHA256>` under the approval key, over
//! `"v1\n" + identity + "\n" + dataset + "\n" + hex SHA-256 of the code + "\n" + expiry`: it
//! cannot be replayed for other code, another dataset, another caller, or later.

use crate::config::DatasetSettings;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::path::PathBuf;

/// The key approvals are signed with; held by whoever approves (a person, a review tool).
#[derive(Clone)]
pub struct ApprovalKey(Vec<u8>);

impl std::fmt::Debug for ApprovalKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApprovalKey(<redacted>)")
    }
}

/// What an approval approves.
#[derive(Debug, Clone, Copy)]
pub struct Approved<'a> {
    /// The caller's verified identity.
    pub identity: &'a str,
    /// The dataset written to.
    pub dataset: &'a str,
    /// The program's code.
    pub code: &'a [u8],
}

impl ApprovalKey {
    /// A key of at least 16 bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Option<Self> {
        let bytes = bytes.into();
        (bytes.len() >= 16).then_some(Self(bytes))
    }

    fn mac(&self, what: &Approved<'_>, expires_at: u64) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        let code = hex::encode(Sha256::digest(what.code));
        let message = format!(
            "v1\n{}\n{}\n{code}\n{expires_at}",
            what.identity, what.dataset
        );
        mac.update(message.as_bytes());
        mac
    }

    /// An approval of `what` until `expires_at` (unix seconds).
    pub fn approve(&self, what: &Approved<'_>, expires_at: u64) -> String {
        let sig = hex::encode(self.mac(what, expires_at).finalize().into_bytes());
        format!("v1:{expires_at}:{sig}")
    }

    /// Whether `token` approves exactly `what` and has not expired at `now`.
    pub fn approves(&self, token: &str, what: &Approved<'_>, now: u64) -> bool {
        let Some((expires_at, sig)) = token
            .trim()
            .strip_prefix("v1:")
            .and_then(|rest| rest.split_once(':'))
        else {
            return false;
        };
        let (Ok(expires_at), Ok(sig)) = (expires_at.parse::<u64>(), hex::decode(sig)) else {
            return false;
        };
        // `verify_slice` compares in constant time.
        now < expires_at && self.mac(what, expires_at).verify_slice(&sig).is_ok()
    }
}

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
    /// `x-sandbox-approval`: approvals of destructive capabilities, comma-separated.
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
    /// A destructive capability without a valid approval for this caller, dataset and code.
    #[error("write access to dataset {0:?} is destructive and needs an approval of this code by this caller")]
    ApprovalRequired(String),
}

/// Decides the mounts for a request running `code` at unix time `now` (the scratch directory is
/// added by the caller, which owns it). Without an approval key, nothing destructive is granted.
pub fn grant(
    requested: &RequestedCapabilities,
    caller: &Caller,
    datasets: &[DatasetSettings],
    approvals: Option<&ApprovalKey>,
    code: &[u8],
    now: u64,
) -> Result<Vec<Mount>, Refusal> {
    let approved = |dataset: &str| {
        let (Some(key), Some(identity), Some(tokens)) = (
            approvals,
            caller.identity.as_deref(),
            caller.approval_token.as_deref(),
        ) else {
            return false;
        };
        let what = Approved {
            identity,
            dataset,
            code,
        };
        tokens
            .split(',')
            .any(|token| key.approves(token, &what, now))
    };
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
            if wanted.write && !approved(&dataset.name) {
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

    const CODE: &[u8] = b"open('/data/reports/x', 'w')";
    const NOW: u64 = 1_000_000;

    fn key() -> ApprovalKey {
        ApprovalKey::new(*b"approval-key-0123456789").unwrap()
    }

    /// `grant` with the test key, code and time.
    fn decide(wanted: &RequestedCapabilities, caller: &Caller) -> Result<Vec<Mount>, Refusal> {
        grant(wanted, caller, &reports(), Some(&key()), CODE, NOW)
    }

    #[test]
    fn pure_compute_needs_nothing() {
        let none = RequestedCapabilities::default();
        assert_eq!(decide(&none, &Caller::default()), Ok(vec![]));
    }

    #[test]
    fn a_dataset_read_needs_its_scope() {
        let refused = decide(&asking(false), &caller(&["other"], None));
        assert!(matches!(refused, Err(Refusal::MissingScope { .. })));
        let mounts = decide(&asking(false), &caller(&["sandbox:dataset:reports"], None)).unwrap();
        assert_eq!(mounts[0].guest, "/data/reports");
        assert!(!mounts[0].writable);
    }

    #[test]
    fn a_dataset_write_needs_an_approval_of_this_code_by_this_caller() {
        let scoped = ["sandbox:dataset:reports"];
        let what = Approved {
            identity: "alice",
            dataset: "reports",
            code: CODE,
        };
        let approval = key().approve(&what, NOW + 600);
        let mounts = decide(&asking(true), &caller(&scoped, Some(&approval))).unwrap();
        assert!(mounts[0].writable);
        let refused = Err(Refusal::ApprovalRequired("reports".into()));
        assert_eq!(decide(&asking(true), &caller(&scoped, None)), refused);
        assert_eq!(
            decide(&asking(true), &caller(&scoped, Some("garbage"))),
            refused
        );
        // Replayed for other code, another dataset, another caller, later, or with another key.
        let other_code = grant(
            &asking(true),
            &caller(&scoped, Some(&approval)),
            &reports(),
            Some(&key()),
            b"rm -rf",
            NOW,
        );
        assert_eq!(other_code, refused);
        let for_other_dataset = key().approve(
            &Approved {
                dataset: "other",
                ..what
            },
            NOW + 600,
        );
        assert_eq!(
            decide(&asking(true), &caller(&scoped, Some(&for_other_dataset))),
            refused
        );
        let mut bob = caller(&scoped, Some(&approval));
        bob.identity = Some("bob".into());
        assert_eq!(decide(&asking(true), &bob), refused);
        let expired = key().approve(&what, NOW - 1);
        assert_eq!(
            decide(&asking(true), &caller(&scoped, Some(&expired))),
            refused
        );
        let foreign = ApprovalKey::new(*b"someone-elses-key-0123")
            .unwrap()
            .approve(&what, NOW + 600);
        assert_eq!(
            decide(&asking(true), &caller(&scoped, Some(&foreign))),
            refused
        );
        let no_key = grant(
            &asking(true),
            &caller(&scoped, Some(&approval)),
            &reports(),
            None,
            CODE,
            NOW,
        );
        assert_eq!(no_key, refused);
        // Several approvals may be sent; any one that fits is enough.
        let both = format!("{expired},{approval}");
        assert!(decide(&asking(true), &caller(&scoped, Some(&both))).is_ok());
    }

    #[test]
    fn unknown_datasets_are_refused() {
        let mut wanted = asking(false);
        wanted.datasets[0].name = "secrets".into();
        assert_eq!(
            decide(&wanted, &caller(&[], None)),
            Err(Refusal::UnknownDataset("secrets".into()))
        );
    }
}
