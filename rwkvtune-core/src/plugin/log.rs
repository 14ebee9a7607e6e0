//! Where plugin output goes: the host `log` import and captured stdout/stderr become
//! [`LogRecord`]s tagged with the plugin's name; so do the host's own failure reports.

use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    /// The plugin's name (from its `init`), or its file stem before `init` returned.
    pub plugin: String,
    pub level: LogLevel,
    pub message: String,
}

/// The trainer's logger, as far as plugins are concerned.
pub type LogSink = Arc<dyn Fn(&LogRecord) + Send + Sync>;

/// Writes `[plugin NAME] LEVEL: message` to stderr (debug records are dropped).
pub fn stderr_sink() -> LogSink {
    Arc::new(|r: &LogRecord| {
        if r.level > LogLevel::Debug {
            eprintln!("[plugin {}] {:?}: {}", r.plugin, r.level, r.message);
        }
    })
}
