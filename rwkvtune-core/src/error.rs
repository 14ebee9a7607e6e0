//! The crate's error type. Subsystems with rich failure modes (tokenizer, `.pth` codec, kernels)
//! have their own enums, wrapped here; every variant names the file or field that went wrong.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // ---- files -------------------------------------------------------------------------------
    /// Reading or writing a file failed at the OS level.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A JSON file (config.json, generation_config.json, ...) is malformed or has a bad field.
    #[error("{}: {msg}", path.display())]
    Json { path: PathBuf, msg: String },
    /// A model directory or weight file is missing something or is not what it claims to be.
    #[error("{}: {msg}", path.display())]
    Checkpoint { path: PathBuf, msg: String },
    /// A `.safetensors` file could not be parsed or written.
    #[error("{}: not a valid safetensors file: {msg}", path.display())]
    Safetensors { path: PathBuf, msg: String },
    #[error(transparent)]
    Pth(#[from] crate::hub::pth::PthError),

    // ---- configuration and arguments ------------------------------------------------------------
    /// A predefined model configuration name that does not exist.
    #[error("unknown model config `{name}`; known names: {known}")]
    UnknownConfig { name: String, known: String },
    /// A value given by the caller that cannot be used (ids out of range, bad dtype name, ...).
    #[error("{0}")]
    InvalidArgument(String),

    // ---- subsystems ---------------------------------------------------------------------------
    #[error(transparent)]
    Tokenizer(#[from] crate::tokenizer::TokenizerError),
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    /// A reward function or post-processor failed under `on_error = abort`, or was misconfigured.
    #[error(transparent)]
    Plugin(#[from] crate::plugin::PluginError),
    /// A data-parallel rendezvous or collective failed.
    #[error("data parallel: {0}")]
    Dist(#[from] crate::dist::DistError),
    #[error("wkv7 kernel: {0}")]
    Kernel(#[from] rwkvtune_kernels::KernelError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    pub(crate) fn checkpoint(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Checkpoint {
            path: path.into(),
            msg: msg.into(),
        }
    }
    pub(crate) fn json(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Json {
            path: path.into(),
            msg: msg.into(),
        }
    }
}
