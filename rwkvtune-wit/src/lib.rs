//! The rwkvtune plugin interface and the guest-side SDK.
//!
//! `wit/plugin.wit` is the contract between the trainer (host, `rwkvtune-core/src/plugin/`) and
//! plugins (WebAssembly components built for `wasm32-wasip2`). Its versioning policy is in
//! `VERSIONING.md`.
//!
//! On `wasm32` targets the crate is also the SDK: implement [`RewardPlugin`] (or
//! `PostprocessPlugin`) and call [`export_reward!`] (or `export_postprocess!`):
//!
//! ```ignore
//! use rwkvtune_wit::{export_reward, PluginInfo, RewardBatch, RewardPlugin, Value};
//!
//! struct Exact;
//! impl RewardPlugin for Exact {
//!     fn new(_config: &Value) -> Result<Self, String> { Ok(Exact) }
//!     fn info(&self) -> PluginInfo { PluginInfo::new("exact", "0.1.0", "1 if completion == answer") }
//!     fn rewards(&mut self, batch: &RewardBatch) -> Result<Vec<Option<f32>>, String> {
//!         Ok((0..batch.len())
//!             .map(|i| batch.extra_str(i, "answer").map(|a| (a == batch.completions[i].trim()) as u8 as f32))
//!             .collect())
//!     }
//! }
//! export_reward!(Exact);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2`: the `.wasm` in
//! `target/wasm32-wasip2/release/` is already a component.
//!
//! On the host the crate carries only the WIT text, so the trainer's workspace never compiles
//! wit-bindgen.

/// The WIT package this crate describes (`wit/plugin.wit`).
pub const WIT: &str = include_str!("../wit/plugin.wit");
/// Package name, without version.
pub const PACKAGE: &str = "rwkvtune:plugin";
/// The current interface version: the `@x.y.z` of every import and export name.
pub const VERSION: &str = "0.1.0";

#[cfg(target_arch = "wasm32")]
mod guest;
#[cfg(target_arch = "wasm32")]
pub use guest::*;

#[cfg(test)]
mod tests {
    #[test]
    fn version_constant_matches_the_wit_package_line() {
        let line = super::WIT
            .lines()
            .find(|l| l.starts_with("package "))
            .expect("plugin.wit has a package line");
        assert_eq!(
            line,
            format!("package {}@{};", super::PACKAGE, super::VERSION)
        );
    }
}
