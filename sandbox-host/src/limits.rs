//! Per-execution limits: what a request may ask for, the server's defaults and maxima, and the
//! resolved limits an execution runs under.

use crate::module_shape::ShapeLimits;
use crate::scratch_quota::ScratchQuota;
use serde::{Deserialize, Serialize};

/// Limits as a request states them; absent fields take the server default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestedLimits {
    /// Wall-clock deadline, enforced by epoch interruption.
    pub timeout_ms: Option<u64>,
    /// Deterministic CPU budget in wasmtime fuel units (about one per wasm instruction).
    pub fuel: Option<u64>,
    /// Linear memory cap in bytes.
    pub memory_bytes: Option<u64>,
    /// Bytes of stdout kept; more truncates and ends the run with `output_limit`.
    pub stdout_bytes: Option<u64>,
    /// Bytes of stderr kept; more truncates and ends the run with `output_limit`.
    pub stderr_bytes: Option<u64>,
}

/// The limits one execution runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// Wall-clock deadline in milliseconds.
    pub timeout_ms: u64,
    /// Fuel budget.
    pub fuel: u64,
    /// Linear memory cap in bytes.
    pub memory_bytes: u64,
    /// Stdout cap in bytes.
    pub stdout_bytes: u64,
    /// Stderr cap in bytes.
    pub stderr_bytes: u64,
}

/// A default and a maximum for one limit.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bound {
    /// Used when the request does not name a value.
    pub default: u64,
    /// The most a request may ask for.
    pub max: u64,
}

/// The server's limits (configuration file, `limits:`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitSettings {
    /// Wall-clock deadline in milliseconds.
    pub timeout_ms: Bound,
    /// Fuel budget.
    pub fuel: Bound,
    /// Linear memory in bytes.
    pub memory_bytes: Bound,
    /// Stdout bytes.
    pub stdout_bytes: Bound,
    /// Stderr bytes.
    pub stderr_bytes: Bound,
    /// Largest `code` (source text, WAT, or decoded module) accepted, in bytes.
    pub max_code_bytes: usize,
    /// Largest table a guest may grow to, in elements.
    pub max_table_elements: usize,
    /// The shape a caller's own module (`wasm`, `wat`) may have before it is compiled.
    pub module: ShapeLimits,
    /// What an execution may keep in `/scratch`.
    pub scratch: ScratchQuota,
}

impl Default for LimitSettings {
    /// Riza-like ceilings (30 s, 20 MiB of output) with tighter defaults.
    fn default() -> Self {
        Self {
            timeout_ms: Bound {
                default: 5_000,
                max: 30_000,
            },
            fuel: Bound {
                default: 5_000_000_000,
                max: 50_000_000_000,
            },
            memory_bytes: Bound {
                default: 128 << 20,
                max: 256 << 20,
            },
            stdout_bytes: Bound {
                default: 1 << 20,
                max: 20 << 20,
            },
            stderr_bytes: Bound {
                default: 1 << 20,
                max: 20 << 20,
            },
            max_code_bytes: 1 << 20,
            max_table_elements: 100_000,
            module: ShapeLimits::default(),
            scratch: ScratchQuota::default(),
        }
    }
}

/// A request asked for more than the server allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("limits.{name} = {requested} exceeds the server maximum {max}")]
pub struct LimitTooHigh {
    /// The limit's field name.
    pub name: &'static str,
    /// What the request asked for.
    pub requested: u64,
    /// The server maximum.
    pub max: u64,
}

impl LimitSettings {
    /// Each default within its maximum, and nothing zero.
    pub fn validate(&self) -> Result<(), String> {
        for (name, bound) in self.bounds() {
            if bound.default == 0 || bound.default > bound.max {
                return Err(format!(
                    "limits.{name}: default must be between 1 and max ({})",
                    bound.max
                ));
            }
        }
        Ok(())
    }

    /// The limits for a request: its values where given, the defaults elsewhere.
    pub fn resolve(&self, requested: &RequestedLimits) -> Result<Limits, LimitTooHigh> {
        let pick = |name: &'static str, bound: Bound, value: Option<u64>| {
            let value = value.unwrap_or(bound.default);
            if value > bound.max {
                return Err(LimitTooHigh {
                    name,
                    requested: value,
                    max: bound.max,
                });
            }
            Ok(value)
        };
        Ok(Limits {
            timeout_ms: pick("timeout_ms", self.timeout_ms, requested.timeout_ms)?.max(1),
            fuel: pick("fuel", self.fuel, requested.fuel)?,
            memory_bytes: pick("memory_bytes", self.memory_bytes, requested.memory_bytes)?,
            stdout_bytes: pick("stdout_bytes", self.stdout_bytes, requested.stdout_bytes)?,
            stderr_bytes: pick("stderr_bytes", self.stderr_bytes, requested.stderr_bytes)?,
        })
    }

    fn bounds(&self) -> [(&'static str, Bound); 5] {
        [
            ("timeout_ms", self.timeout_ms),
            ("fuel", self.fuel),
            ("memory_bytes", self.memory_bytes),
            ("stdout_bytes", self.stdout_bytes),
            ("stderr_bytes", self.stderr_bytes),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_gaps_and_maxima_refuse() {
        let settings = LimitSettings::default();
        let limits = settings
            .resolve(&RequestedLimits {
                timeout_ms: Some(100),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(limits.timeout_ms, 100);
        assert_eq!(limits.memory_bytes, settings.memory_bytes.default);
        let error = settings
            .resolve(&RequestedLimits {
                memory_bytes: Some(1 << 40),
                ..Default::default()
            })
            .unwrap_err();
        assert_eq!(error.name, "memory_bytes");
    }

    #[test]
    fn a_default_above_its_maximum_is_invalid() {
        let mut settings = LimitSettings::default();
        settings.fuel.default = settings.fuel.max + 1;
        assert!(settings.validate().unwrap_err().contains("limits.fuel"));
    }
}
