//! Per-plugin settings: sandbox limits and the failure policy. Plain serde structs with defaults,
//! validated once when a plugin is loaded.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::error::PluginError;

/// What happens to a batch when a plugin call fails (trap, timeout, memory, error, bad result).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Stop the run with the error.
    #[default]
    Abort,
    /// Reward 0.0 for the failed samples (post-processors: pass the batch through unchanged).
    Zero,
    /// The failed samples get no advantage signal ([`RewardValue::Failed`](super::RewardValue));
    /// post-processors: pass the batch through unchanged.
    Skip,
}

/// Sandbox limits of one plugin. Every call (and `init`) gets the full budget again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginLimits {
    /// Wall-clock limit per call, enforced by epoch interruption (resolution: the runtime's tick).
    pub call_timeout_ms: u64,
    /// Deterministic instruction budget per call; needs a runtime built with `fuel = true`.
    pub fuel: Option<u64>,
    /// Cap on each linear memory of the plugin.
    pub memory_mib: u64,
    /// Under `zero`/`skip`, this many failed calls in a row abort anyway: a plugin that always
    /// fails would otherwise turn a long run into noise. `None` = never.
    pub max_consecutive_failures: Option<u32>,
}

impl Default for PluginLimits {
    fn default() -> Self {
        PluginLimits {
            call_timeout_ms: 10_000,
            fuel: None,
            memory_mib: 256,
            max_consecutive_failures: Some(20),
        }
    }
}

impl PluginLimits {
    pub fn validate(&self) -> Result<(), PluginError> {
        if self.call_timeout_ms == 0 {
            return Err(PluginError::Config(
                "call_timeout_ms must be at least 1".into(),
            ));
        }
        // wasm32 addresses at most 4 GiB.
        if self.memory_mib == 0 || self.memory_mib > 4096 {
            return Err(PluginError::Config(format!(
                "memory_mib must be in 1..=4096, got {}",
                self.memory_mib
            )));
        }
        if self.fuel == Some(0) {
            return Err(PluginError::Config(
                "fuel must be positive (or absent)".into(),
            ));
        }
        if self.max_consecutive_failures == Some(0) {
            return Err(PluginError::Config(
                "max_consecutive_failures must be positive (or absent)".into(),
            ));
        }
        Ok(())
    }
}

/// One plugin to load: the file, its JSON config, its policy and limits (a config-file section
/// or `--reward-plugin foo.wasm --plugin-config foo=cfg.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSpec {
    pub path: PathBuf,
    /// The JSON text handed to the plugin's `init` (`{}` by default).
    #[serde(default = "empty_object")]
    pub config: String,
    #[serde(default)]
    pub on_error: OnError,
    #[serde(default)]
    pub limits: PluginLimits,
}

fn empty_object() -> String {
    "{}".to_string()
}

impl PluginSpec {
    /// A spec with the default config, policy (`abort`) and limits.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        PluginSpec {
            path: path.into(),
            config: empty_object(),
            on_error: OnError::default(),
            limits: PluginLimits::default(),
        }
    }

    pub fn with_config(mut self, config: impl Into<String>) -> Self {
        self.config = config.into();
        self
    }

    pub fn with_on_error(mut self, on_error: OnError) -> Self {
        self.on_error = on_error;
        self
    }

    pub fn with_limits(mut self, limits: PluginLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Checks the limits and that the config is JSON (so a typo fails before any compile).
    pub fn validate(&self) -> Result<(), PluginError> {
        self.limits.validate()?;
        serde_json::from_str::<serde_json::Value>(&self.config).map_err(|e| {
            PluginError::Config(format!(
                "plugin {}: config is not valid JSON: {e}",
                self.path.display()
            ))
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_parses_with_defaults_and_policy_names() {
        let spec: PluginSpec = serde_json::from_str(
            r#"{"path": "a.wasm", "on_error": "skip", "limits": {"call_timeout_ms": 50}}"#,
        )
        .unwrap();
        assert_eq!(spec.on_error, OnError::Skip);
        assert_eq!(spec.config, "{}");
        assert_eq!(spec.limits.call_timeout_ms, 50);
        assert_eq!(spec.limits.memory_mib, 256);
        spec.validate().unwrap();
    }

    #[test]
    fn bad_limits_and_config_are_refused() {
        let mut spec = PluginSpec::new("a.wasm");
        spec.limits.memory_mib = 5000;
        assert!(spec.validate().is_err());
        let spec = PluginSpec::new("a.wasm").with_config("{not json");
        let err = spec.validate().unwrap_err().to_string();
        assert!(err.contains("a.wasm") && err.contains("JSON"), "{err}");
        assert!(serde_json::from_str::<PluginLimits>(r#"{"timeout": 1}"#).is_err());
    }
}
