//! Guest side (wasm32 only): generated bindings, the plugin traits and the export macros.
//!
//! Two `generate!` calls, one per world, so a reward plugin exports only `reward` and a
//! post-processor only `postprocess` (what the host's role detection reads). The second world
//! reuses the first one's types and host imports through `with`, so there is one `RewardBatch`,
//! one `PluginInfo` in the SDK. (Exported interfaces cannot be shared that way, which is why each
//! role interface has its own `init` rather than a common `meta` export.)

use std::cell::RefCell;
use std::thread::LocalKey;

pub use serde_json::{self, Value};

#[doc(hidden)]
pub mod reward_world {
    wit_bindgen::generate!({
        world: "reward-plugin",
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "__export_reward_world",
        default_bindings_module: "::rwkvtune_wit::reward_world",
    });
}

#[doc(hidden)]
pub mod postprocess_world {
    wit_bindgen::generate!({
        world: "postprocess-plugin",
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "__export_postprocess_world",
        default_bindings_module: "::rwkvtune_wit::postprocess_world",
        with: {
            "rwkvtune:plugin/types@0.1.0": crate::reward_world::rwkvtune::plugin::types,
            "rwkvtune:plugin/host@0.1.0": crate::reward_world::rwkvtune::plugin::host,
        },
    });
}

pub use reward_world::rwkvtune::plugin::host::{detokenize, get_tokenizer_info, log, tokenize};
pub use reward_world::rwkvtune::plugin::types::{
    LogLevel, PluginInfo, PostprocessBatch, PostprocessOutput, RewardBatch, TokenMatrix,
    TokenizerInfo,
};

// ---------------------------------------------------------------------------------------------
// The traits plugin authors implement
// ---------------------------------------------------------------------------------------------

/// A reward function. One value per completion: `Some(r)`, or `None` = not applicable.
/// `Err` fails the whole batch (the host applies the plugin's `on_error` policy).
pub trait RewardPlugin: Sized + 'static {
    /// Builds the plugin from the user's config (`{}` when none was given). Called again after
    /// the host rebuilds a trapped instance, so keep state a cache.
    fn new(config: &Value) -> Result<Self, String>;
    fn info(&self) -> PluginInfo;
    fn rewards(&mut self, batch: &RewardBatch) -> Result<Vec<Option<f32>>, String>;
}

/// A completion post-processor: edits texts (the host re-tokenises) or ids/masks directly.
pub trait PostprocessPlugin: Sized + 'static {
    fn new(config: &Value) -> Result<Self, String>;
    fn info(&self) -> PluginInfo;
    fn process(&mut self, batch: &PostprocessBatch) -> Result<PostprocessOutput, String>;
}

// ---------------------------------------------------------------------------------------------
// Conveniences on the generated types
// ---------------------------------------------------------------------------------------------

impl PluginInfo {
    pub fn new(name: &str, version: &str, description: &str) -> Self {
        PluginInfo {
            name: name.to_string(),
            version: version.to_string(),
            description: description.to_string(),
        }
    }
}

impl TokenMatrix {
    /// Row `i`'s ids and mask (both `cols` long). Panics (= a trap the host survives) if `i`
    /// is out of range.
    pub fn row(&self, i: usize) -> (&[u32], &[u8]) {
        let c = self.cols as usize;
        (
            &self.ids[i * c..(i + 1) * c],
            &self.mask[i * c..(i + 1) * c],
        )
    }

    /// The real (mask = 1) ids of row `i`.
    pub fn real_ids(&self, i: usize) -> Vec<u32> {
        let (ids, mask) = self.row(i);
        ids.iter()
            .zip(mask)
            .filter(|(_, m)| **m != 0)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Number of real tokens in row `i`.
    pub fn len_of(&self, i: usize) -> usize {
        self.row(i).1.iter().filter(|m| **m != 0).count()
    }

    /// Packs rows into a [rows.len(), cols] matrix: pads with 0 (mask 0), truncates at `cols`.
    pub fn from_rows(rows: &[Vec<u32>], cols: u32) -> Self {
        let c = cols as usize;
        let mut ids = vec![0u32; rows.len() * c];
        let mut mask = vec![0u8; rows.len() * c];
        for (r, row) in rows.iter().enumerate() {
            let n = row.len().min(c);
            ids[r * c..r * c + n].copy_from_slice(&row[..n]);
            mask[r * c..r * c + n].fill(1);
        }
        TokenMatrix {
            rows: rows.len() as u32,
            cols,
            ids,
            mask,
        }
    }
}

/// Reading the dataset's extra columns, shared by both batch kinds.
macro_rules! extras_accessors {
    ($t:ty) => {
        impl $t {
            /// Number of completions in the batch.
            pub fn len(&self) -> usize {
                self.completions.len()
            }

            pub fn is_empty(&self) -> bool {
                self.completions.is_empty()
            }

            /// Row `i`'s extra columns as JSON (`Null` when the host sent no valid JSON).
            pub fn extra(&self, i: usize) -> Value {
                self.extras
                    .get(i)
                    .and_then(|s| serde_json::from_str(s).ok())
                    .unwrap_or(Value::Null)
            }

            /// Column `key` of row `i` as text: strings as-is, numbers/bools printed, otherwise
            /// (missing, null, object) `None`.
            pub fn extra_str(&self, i: usize, key: &str) -> Option<String> {
                match self.extra(i).get(key)? {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    Value::Bool(b) => Some(b.to_string()),
                    _ => None,
                }
            }
        }
    };
}
extras_accessors!(RewardBatch);
extras_accessors!(PostprocessBatch);

/// Logs through the host (tagged with the plugin's name in the trainer's log).
pub fn info(message: &str) {
    log(LogLevel::Info, message)
}

/// Logs a warning through the host.
pub fn warn(message: &str) {
    log(LogLevel::Warn, message)
}

// ---------------------------------------------------------------------------------------------
// Export machinery (used by the macros; not part of the API)
// ---------------------------------------------------------------------------------------------

#[doc(hidden)]
pub mod __private {
    use super::*;

    /// The single live plugin value of this instance.
    pub type Slot<T> = RefCell<Option<T>>;

    pub fn init<T>(
        slot: &'static LocalKey<Slot<T>>,
        config: &str,
        new: fn(&Value) -> Result<T, String>,
        info: fn(&T) -> PluginInfo,
    ) -> Result<PluginInfo, String> {
        let config: Value = if config.trim().is_empty() {
            Value::Object(Default::default())
        } else {
            serde_json::from_str(config).map_err(|e| format!("bad config JSON: {e}"))?
        };
        let plugin = new(&config)?;
        let meta = info(&plugin);
        slot.with(|s| *s.borrow_mut() = Some(plugin));
        Ok(meta)
    }

    pub fn with<T, R>(
        slot: &'static LocalKey<Slot<T>>,
        f: impl FnOnce(&mut T) -> Result<R, String>,
    ) -> Result<R, String> {
        slot.with(|s| match s.borrow_mut().as_mut() {
            Some(p) => f(p),
            None => Err("plugin called before init".to_string()),
        })
    }
}

/// Exports a [`RewardPlugin`] implementation as the component's `reward` export.
#[macro_export]
macro_rules! export_reward {
    ($ty:ty) => {
        const _: () = {
            use $crate::reward_world::exports::rwkvtune::plugin::reward;
            ::std::thread_local! {
                static PLUGIN: $crate::__private::Slot<$ty> = const { ::core::cell::RefCell::new(None) };
            }
            struct __RwkvtuneExport;
            impl reward::Guest for __RwkvtuneExport {
                fn init(config: String) -> Result<$crate::PluginInfo, String> {
                    $crate::__private::init(
                        &PLUGIN,
                        &config,
                        <$ty as $crate::RewardPlugin>::new,
                        <$ty as $crate::RewardPlugin>::info,
                    )
                }
                fn compute_rewards(
                    batch: $crate::RewardBatch,
                ) -> Result<Vec<Option<f32>>, String> {
                    $crate::__private::with(&PLUGIN, |p| {
                        <$ty as $crate::RewardPlugin>::rewards(p, &batch)
                    })
                }
            }
            $crate::reward_world::__export_reward_world!(__RwkvtuneExport with_types_in $crate::reward_world);
        };
    };
}

/// Exports a [`PostprocessPlugin`] implementation as the component's `postprocess` export.
#[macro_export]
macro_rules! export_postprocess {
    ($ty:ty) => {
        const _: () = {
            use $crate::postprocess_world::exports::rwkvtune::plugin::postprocess;
            ::std::thread_local! {
                static PLUGIN: $crate::__private::Slot<$ty> = const { ::core::cell::RefCell::new(None) };
            }
            struct __RwkvtuneExport;
            impl postprocess::Guest for __RwkvtuneExport {
                fn init(config: String) -> Result<$crate::PluginInfo, String> {
                    $crate::__private::init(
                        &PLUGIN,
                        &config,
                        <$ty as $crate::PostprocessPlugin>::new,
                        <$ty as $crate::PostprocessPlugin>::info,
                    )
                }
                fn process(
                    batch: $crate::PostprocessBatch,
                ) -> Result<$crate::PostprocessOutput, String> {
                    $crate::__private::with(&PLUGIN, |p| {
                        <$ty as $crate::PostprocessPlugin>::process(p, &batch)
                    })
                }
            }
            $crate::postprocess_world::__export_postprocess_world!(__RwkvtuneExport with_types_in $crate::postprocess_world);
        };
    };
}
