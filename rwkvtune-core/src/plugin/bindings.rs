//! Host bindings, one module per supported WIT version (generated from the frozen WIT text).
//!
//! Adding a version (VERSIONING.md): freeze the old text, add a module here, and teach
//! [`WitVersion`] and `sandbox.rs` to dispatch on it. Only 0.1.0 exists so far.

/// `rwkvtune:plugin@0.1.0` (`rwkvtune-wit/wit/plugin.wit`).
pub(crate) mod v0_1 {
    pub mod reward {
        wasmtime::component::bindgen!({
            world: "reward-plugin",
            path: "../rwkvtune-wit/wit",
        });
    }

    pub mod postprocess {
        // The imported interfaces are shared with the reward world: one `Host` implementation,
        // one set of record types.
        wasmtime::component::bindgen!({
            world: "postprocess-plugin",
            path: "../rwkvtune-wit/wit",
            with: {
                "rwkvtune:plugin/types": super::reward::rwkvtune::plugin::types,
                "rwkvtune:plugin/host": super::reward::rwkvtune::plugin::host,
            },
        });
    }

    pub use reward::rwkvtune::plugin::{host, types};
}

/// The plugin roles a component can export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Reward,
    Postprocess,
}

impl Role {
    pub fn interface(self) -> &'static str {
        match self {
            Role::Reward => "reward",
            Role::Postprocess => "postprocess",
        }
    }
}

/// A WIT package version this build can load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WitVersion {
    V0_1_0,
}

impl WitVersion {
    pub const SUPPORTED: &'static [(&'static str, WitVersion)] = &[("0.1.0", WitVersion::V0_1_0)];

    pub fn as_str(self) -> &'static str {
        match self {
            WitVersion::V0_1_0 => "0.1.0",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::SUPPORTED
            .iter()
            .find(|(v, _)| *v == s)
            .map(|(_, w)| *w)
    }
}

/// Splits an export name `rwkvtune:plugin/<iface>@<version>` into (iface, version).
pub(crate) fn parse_export_name(name: &str) -> Option<(&str, &str)> {
    let rest = name.strip_prefix("rwkvtune:plugin/")?;
    rest.split_once('@')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_names_parse_into_interface_and_version() {
        assert_eq!(
            parse_export_name("rwkvtune:plugin/reward@0.1.0"),
            Some(("reward", "0.1.0"))
        );
        assert_eq!(parse_export_name("wasi:cli/run@0.2.0"), None);
        assert_eq!(WitVersion::parse("0.1.0"), Some(WitVersion::V0_1_0));
        assert_eq!(WitVersion::parse("0.2.0"), None);
    }
}
