//! Per-plugin timing and failure counters, reported with the training metrics.

use std::collections::BTreeMap;
use std::time::Duration;

use super::error::FailureKind;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct PluginStats {
    /// Calls made (successful or not).
    pub calls: u64,
    pub total_time: Duration,
    pub max_time: Duration,
    /// Failure events by cause (a whole-batch failure counts once).
    pub failures: BTreeMap<FailureKind, u64>,
    /// Samples that got a policy value (0.0 / skipped / passed through) instead of a result.
    pub failed_samples: u64,
    /// Instances rebuilt after a trap.
    pub rebuilds: u64,
    /// Failed calls since the last clean one.
    pub consecutive_failures: u32,
}

impl PluginStats {
    pub(crate) fn record_call(&mut self, elapsed: Duration) {
        self.calls += 1;
        self.total_time += elapsed;
        self.max_time = self.max_time.max(elapsed);
    }

    pub(crate) fn record_failure(&mut self, kind: FailureKind, samples: usize) {
        *self.failures.entry(kind).or_default() += 1;
        self.failed_samples += samples as u64;
    }

    pub fn mean_time(&self) -> Duration {
        if self.calls == 0 {
            Duration::ZERO
        } else {
            self.total_time / self.calls as u32
        }
    }

    pub fn failures_of(&self, kind: FailureKind) -> u64 {
        self.failures.get(&kind).copied().unwrap_or(0)
    }

    /// Flat `plugin/<name>/<metric>` scalars for the metrics logger.
    pub fn to_metrics(&self, name: &str) -> Vec<(String, f64)> {
        let key = |m: &str| format!("plugin/{name}/{m}");
        let mut out = vec![
            (key("calls"), self.calls as f64),
            (key("mean_call_ms"), self.mean_time().as_secs_f64() * 1e3),
            (key("max_call_ms"), self.max_time.as_secs_f64() * 1e3),
            (key("failed_samples"), self.failed_samples as f64),
            (key("rebuilds"), self.rebuilds as f64),
        ];
        for (kind, n) in &self.failures {
            out.push((key(&format!("errors/{kind}")), *n as f64));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_max_and_metric_names() {
        let mut s = PluginStats::default();
        s.record_call(Duration::from_millis(2));
        s.record_call(Duration::from_millis(4));
        s.record_failure(FailureKind::Timeout, 8);
        assert_eq!(s.mean_time(), Duration::from_millis(3));
        assert_eq!(s.max_time, Duration::from_millis(4));
        let m = s.to_metrics("fmt");
        assert!(m.contains(&("plugin/fmt/mean_call_ms".into(), 3.0)));
        assert!(m.contains(&("plugin/fmt/errors/timeout".into(), 1.0)));
        assert!(m.contains(&("plugin/fmt/failed_samples".into(), 8.0)));
    }
}
