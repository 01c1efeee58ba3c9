//! The quota on an execution's `/scratch`: bytes and files. WASI writes go straight to the host
//! directory, so the directory is measured while the guest runs (every few epoch ticks), and a
//! guest past its quota is stopped with `scratch_limit`. What it can write between two checks
//! (50 ms) is the bound on the overshoot.

use std::path::{Path, PathBuf};

/// The quota (`limits.scratch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScratchQuota {
    /// Most bytes the files in `/scratch` may hold together.
    pub max_bytes: u64,
    /// Most files and directories `/scratch` may hold.
    pub max_files: u64,
}

impl Default for ScratchQuota {
    fn default() -> Self {
        Self {
            max_bytes: 64 << 20,
            max_files: 1_000,
        }
    }
}

/// The guest filled its scratch directory past its quota.
#[derive(Debug, thiserror::Error)]
#[error("scratch quota reached ({0})")]
pub struct ScratchExceeded(pub String);

/// A scratch directory and its quota.
#[derive(Debug, Clone)]
pub struct ScratchWatch {
    /// The host directory behind `/scratch`.
    pub dir: PathBuf,
    /// Its quota.
    pub quota: ScratchQuota,
}

impl ScratchWatch {
    /// Measures the directory; an error once it holds more than the quota allows. The walk stops
    /// as soon as either bound is passed, so it costs at most `max_files` entries.
    pub fn check(&self) -> Result<(), ScratchExceeded> {
        let (mut bytes, mut files) = (0u64, 0u64);
        let mut pending: Vec<PathBuf> = vec![self.dir.clone()];
        while let Some(dir) = pending.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                files += 1;
                if files > self.quota.max_files {
                    return Err(ScratchExceeded(format!(
                        "more than {} files",
                        self.quota.max_files
                    )));
                }
                let Ok(metadata) = entry.metadata() else {
                    continue;
                };
                if metadata.is_dir() {
                    pending.push(entry.path());
                } else {
                    bytes = bytes.saturating_add(metadata.len());
                    if bytes > self.quota.max_bytes {
                        return Err(ScratchExceeded(format!(
                            "more than {} bytes",
                            self.quota.max_bytes
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// The watch for `dir` under `quota`.
    pub fn new(dir: &Path, quota: ScratchQuota) -> Self {
        Self {
            dir: dir.to_owned(),
            quota,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_and_files_are_both_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let watch = ScratchWatch::new(
            dir.path(),
            ScratchQuota {
                max_bytes: 100,
                max_files: 3,
            },
        );
        std::fs::write(dir.path().join("a"), [0u8; 60]).unwrap();
        assert!(watch.check().is_ok());
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("d/b"), [0u8; 60]).unwrap();
        assert!(watch.check().unwrap_err().0.contains("bytes"));
        std::fs::write(dir.path().join("d/b"), [0u8; 1]).unwrap();
        std::fs::write(dir.path().join("c"), [0u8; 1]).unwrap();
        assert!(watch.check().unwrap_err().0.contains("files"));
    }
}
