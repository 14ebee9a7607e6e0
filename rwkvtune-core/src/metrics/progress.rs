//! The console view of a run: an `indicatif` bar on a terminal, plain periodic lines elsewhere.
//!
//! A bar redrawn in place is noise in a CI log or a file (every redraw becomes a line, or nothing
//! shows until the end), so when stderr is not a terminal the same numbers are printed as one
//! plain line every `log_every` steps, and at least every [`HEARTBEAT`] so a slow run still shows
//! it is alive. Console output is best effort: a failed write to stderr never stops training.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};

/// The longest a plain-line run stays silent, whatever `log_every` says.
pub const HEARTBEAT: Duration = Duration::from_secs(30);

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProgressMode {
    /// A bar when stderr is a terminal, plain lines otherwise.
    #[default]
    Auto,
    /// Always the bar (indicatif still hides it when stderr is not a terminal).
    Bar,
    /// Always plain lines.
    Plain,
    /// Nothing, events included (tests, library use).
    Off,
}

/// The numbers shown for one step.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgressLine {
    pub step: u64,
    /// 0 when unknown (no bar length, no ETA).
    pub total_steps: u64,
    pub epoch: u64,
    pub loss: f64,
    /// Smoothed loss, steadier to read than the per-step value.
    pub loss_avg: f64,
    pub lr: f64,
    pub tokens_per_sec: f64,
    /// Seconds since the start of the run.
    pub elapsed: f64,
    /// Estimated seconds left, when known.
    pub eta: Option<f64>,
}

/// The console reporter. Create one per run with [`Progress::new`].
pub struct Progress {
    out: Output,
    log_every: u64,
    /// When the last plain line was written (`None`: none yet, so the first step prints).
    last_line: Option<Instant>,
}

enum Output {
    Bar(ProgressBar),
    Plain(Box<dyn Write + Send>),
    Off,
}

impl Progress {
    /// A reporter for a run of `total_steps` optimizer steps (0: unknown) starting after
    /// `start_step` (0 for a fresh run, the checkpoint's step when resuming), printing a plain
    /// line every `log_every` steps when it prints plain lines.
    pub fn new(mode: ProgressMode, total_steps: u64, start_step: u64, log_every: u64) -> Self {
        let use_bar = match mode {
            ProgressMode::Auto => std::io::stderr().is_terminal(),
            ProgressMode::Bar => true,
            ProgressMode::Plain | ProgressMode::Off => false,
        };
        let out = if mode == ProgressMode::Off {
            Output::Off
        } else if use_bar {
            Output::Bar(new_bar(total_steps, start_step))
        } else {
            Output::Plain(Box::new(std::io::stderr()))
        };
        Progress {
            out,
            log_every: log_every.max(1),
            last_line: None,
        }
    }

    /// A plain-line reporter writing to `writer` instead of stderr (a log file, a test buffer).
    pub fn plain_to(writer: Box<dyn Write + Send>, log_every: u64) -> Self {
        Progress {
            out: Output::Plain(writer),
            log_every: log_every.max(1),
            last_line: None,
        }
    }

    /// Shows one finished step.
    pub fn update(&mut self, line: &ProgressLine) {
        match &mut self.out {
            Output::Bar(bar) => {
                bar.set_position(line.step);
                bar.set_message(format_bar_message(line));
            }
            Output::Plain(w) => {
                let now = Instant::now();
                let last = line.total_steps > 0 && line.step >= line.total_steps;
                // `%` rather than `is_multiple_of`: that needs Rust 1.87, the workspace says 1.85.
                #[allow(clippy::manual_is_multiple_of)]
                let due = match self.last_line {
                    None => true,
                    Some(t) => line.step % self.log_every == 0 || last || now - t >= HEARTBEAT,
                };
                if due {
                    let _ = writeln!(w, "{}", format_line(line));
                    let _ = w.flush();
                    self.last_line = Some(now);
                }
            }
            Output::Off => {}
        }
    }

    /// Prints a one-off message (a skipped NaN step, a checkpoint saved) above the bar, or as its
    /// own line.
    pub fn event(&mut self, msg: &str) {
        match &mut self.out {
            Output::Bar(bar) => bar.println(msg),
            Output::Plain(w) => {
                let _ = writeln!(w, "{msg}");
                let _ = w.flush();
            }
            Output::Off => {}
        }
    }

    /// Leaves the bar drawn in its final state (plain lines need nothing).
    pub fn finish(&mut self) {
        if let Output::Bar(bar) = &self.out {
            bar.finish();
        }
    }
}

fn new_bar(total_steps: u64, start_step: u64) -> ProgressBar {
    let (len, template) = if total_steps > 0 {
        (
            Some(total_steps),
            "{spinner:.green} {bar:20.cyan/blue} {pos}/{len} {msg}",
        )
    } else {
        (None, "{spinner:.green} step {pos} {msg}")
    };
    let bar = ProgressBar::with_draw_target(len, ProgressDrawTarget::stderr());
    // The templates are constants; the fallback only guards against an indicatif change.
    let style = ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_position(start_step);
    // Steps can take minutes; a ticking spinner shows the run is not hung.
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// The bar's message: everything but the step counter, which the bar shows itself.
pub fn format_bar_message(p: &ProgressLine) -> String {
    let mut s = format!(
        "ep {} | loss {} (avg {}) | lr {:.2e} | {} | {}",
        p.epoch,
        format_loss(p.loss),
        format_loss(p.loss_avg),
        p.lr,
        format_rate(p.tokens_per_sec),
        format_duration(p.elapsed),
    );
    if let Some(eta) = p.eta {
        s.push_str(&format!(" | ETA {}", format_duration(eta)));
    }
    s
}

/// One plain line: `step 12/100 | ep 0 | loss 2.3456 (avg 2.4012) | lr 1.00e-4 | 5.1k tok/s |
/// 1m02s | ETA 4m10s`.
pub fn format_line(p: &ProgressLine) -> String {
    let counter = if p.total_steps > 0 {
        format!("step {}/{}", p.step, p.total_steps)
    } else {
        format!("step {}", p.step)
    };
    format!("{counter} | {}", format_bar_message(p))
}

fn format_loss(loss: f64) -> String {
    if loss.is_finite() {
        format!("{loss:.4}")
    } else {
        format!("{loss}")
    }
}

/// `850 tok/s`, `12.3k tok/s`, `1.20M tok/s`.
pub fn format_rate(tokens_per_sec: f64) -> String {
    let r = tokens_per_sec;
    if !r.is_finite() {
        "- tok/s".to_string()
    } else if r >= 1e6 {
        format!("{:.2}M tok/s", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1}k tok/s", r / 1e3)
    } else {
        format!("{r:.0} tok/s")
    }
}

/// Compact durations: `45s`, `3m05s`, `2h07m`, `3d04h`.
pub fn format_duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "-".to_string();
    }
    let s = secs.round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A `Write` whose bytes the test can read after handing it to the reporter.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl Shared {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    fn line(step: u64, total: u64) -> ProgressLine {
        ProgressLine {
            step,
            total_steps: total,
            epoch: 1,
            loss: 2.345_67,
            loss_avg: 2.5,
            lr: 1e-4,
            tokens_per_sec: 5120.0,
            elapsed: 62.0,
            eta: Some(250.0),
        }
    }

    #[test]
    fn durations_and_rates_are_compact() {
        assert_eq!(format_duration(45.2), "45s");
        assert_eq!(format_duration(185.0), "3m05s");
        assert_eq!(format_duration(7620.0), "2h07m");
        assert_eq!(format_duration(3.0 * 86_400.0 + 4.0 * 3600.0), "3d04h");
        assert_eq!(format_duration(f64::NAN), "-");
        assert_eq!(format_rate(850.0), "850 tok/s");
        assert_eq!(format_rate(12_345.0), "12.3k tok/s");
        assert_eq!(format_rate(1_200_000.0), "1.20M tok/s");
    }

    #[test]
    fn plain_line_has_every_field() {
        assert_eq!(
            format_line(&line(12, 100)),
            "step 12/100 | ep 1 | loss 2.3457 (avg 2.5000) | lr 1.00e-4 | 5.1k tok/s | 1m02s \
             | ETA 4m10s"
        );
        let mut unknown = line(12, 0);
        unknown.eta = None;
        unknown.loss = f64::NAN;
        assert_eq!(
            format_line(&unknown),
            "step 12 | ep 1 | loss NaN (avg 2.5000) | lr 1.00e-4 | 5.1k tok/s | 1m02s"
        );
    }

    #[test]
    fn plain_mode_prints_first_every_nth_and_last_step_and_events() {
        let buf = Shared::default();
        let mut p = Progress::plain_to(Box::new(buf.clone()), 4);
        for step in 1..=10 {
            p.update(&line(step, 10));
            if step == 5 {
                p.event("checkpoint saved: rwkv7-batch5");
            }
        }
        p.finish();
        let text = buf.text();
        let steps: Vec<&str> = text
            .lines()
            .map(|l| l.split(" | ").next().unwrap())
            .collect();
        assert_eq!(
            steps,
            [
                "step 1/10",
                "step 4/10",
                "checkpoint saved: rwkv7-batch5",
                "step 8/10",
                "step 10/10"
            ]
        );
    }

    #[test]
    fn off_mode_prints_nothing() {
        let mut p = Progress::new(ProgressMode::Off, 10, 0, 1);
        p.update(&line(1, 10));
        p.event("hidden");
        p.finish();
    }
}
