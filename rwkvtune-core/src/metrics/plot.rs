//! `loss_curve.png`: the raw per-step loss and a smoothed line, drawn with `plotters` at the end of
//! a run.
//!
//! plotters draws text through `ab_glyph`, which knows no system fonts: the DejaVu Sans font is
//! embedded (`assets/fonts/`, Bitstream Vera license beside it) and registered as `sans-serif`
//! once per process.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use super::jsonl::read_records;
use super::MetricsError;

/// The file name inside the output directory.
pub const LOSS_CURVE_FILE: &str = "loss_curve.png";

const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
const SIZE: (u32, u32) = (1000, 600);

/// Registers the embedded font under the family name plotters' default text style asks for.
fn ensure_font() -> Result<(), String> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            register_font("sans-serif", FontStyle::Normal, FONT)
                .map_err(|_| "the embedded DejaVu Sans font could not be parsed".to_string())
        })
        .clone()
}

/// Exponential moving average with TensorBoard's debiasing (the first values are not pulled
/// towards 0). Non-finite values (skipped NaN steps) leave the average unchanged and get the
/// current average (NaN before the first finite value).
pub fn ema(values: &[f64], weight: f64) -> Vec<f64> {
    let mut acc = 0.0;
    let mut n = 0i32;
    values
        .iter()
        .map(|&v| {
            if v.is_finite() {
                acc = acc * weight + (1.0 - weight) * v;
                n += 1;
            }
            if n == 0 {
                f64::NAN
            } else {
                acc / (1.0 - weight.powi(n))
            }
        })
        .collect()
}

/// The EMA weight for a curve of `n` points: an effective window of about 1/25 of the run, so the
/// smoothed line looks equally smooth for 500-step and 50k-step runs; at least 10 steps, except
/// in very short runs (n / 5), where a long window would only make the line lag.
pub fn ema_weight(n: usize) -> f64 {
    let n = n as f64;
    let span = (n / 25.0).max((n / 5.0).min(10.0)).max(1.0);
    1.0 - 2.0 / (span + 1.0)
}

/// Draws the loss curve of `points` (step, loss) to `path` (a `.png`), written to a temporary
/// file and renamed so a reader never sees half an image. Non-finite losses are left out.
/// Returns `false`, writing nothing, when there is no finite point to draw.
pub fn plot_loss_curve(
    points: &[(u64, f64)],
    path: &Path,
    title: &str,
) -> Result<bool, MetricsError> {
    let finite: Vec<(f64, f64)> = points
        .iter()
        .filter(|(_, l)| l.is_finite())
        .map(|&(s, l)| (s as f64, l))
        .collect();
    if finite.is_empty() {
        return Ok(false);
    }
    let plot_err = |msg: String| MetricsError::Plot {
        path: path.to_path_buf(),
        msg,
    };
    ensure_font().map_err(plot_err)?;
    // The bitmap encoder picks the format from the extension, so the temporary name keeps `.png`.
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("plot");
    let tmp = path.with_file_name(format!(".{name}.tmp.png"));
    draw(&finite, &tmp, title).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        plot_err(e)
    })?;
    std::fs::rename(&tmp, path).map_err(|e| MetricsError::io(path, e))?;
    Ok(true)
}

/// Plots a `loss_data.jsonl` file (e.g. of a finished or crashed run) to `png`.
pub fn plot_loss_curve_from_jsonl(jsonl: &Path, png: &Path) -> Result<bool, MetricsError> {
    let points: Vec<(u64, f64)> = read_records(jsonl)?
        .iter()
        .map(|r| (r.step, r.loss))
        .collect();
    plot_loss_curve(&points, png, "Training loss")
}

fn draw(points: &[(f64, f64)], path: &Path, title: &str) -> Result<(), String> {
    let losses: Vec<f64> = points.iter().map(|p| p.1).collect();
    let weight = ema_weight(points.len());
    let smooth = ema(&losses, weight);

    let (x0, x1) = widen(points[0].0, points[points.len() - 1].0, 1.0);
    let lo = losses.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = losses.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let margin = 0.05 * (hi - lo);
    let (y0, y1) = widen(lo - margin, hi + margin, 0.1 * lo.abs().max(1e-3));

    // Enough decimals to tell the tick labels apart, no more.
    let decimals = match y1 - y0 {
        r if r >= 5.0 => 1,
        r if r >= 0.5 => 2,
        r if r >= 0.05 => 3,
        _ => 4,
    };

    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 26))
        .margin(18)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("loss")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.*}", decimals))
        .axis_desc_style(("sans-serif", 18))
        .label_style(("sans-serif", 14))
        .light_line_style(WHITE.mix(0.0))
        .bold_line_style(BLACK.mix(0.08))
        .draw()
        .map_err(|e| e.to_string())?;

    let raw_color = RGBColor(120, 160, 220);
    let smooth_color = RGBColor(220, 90, 30);
    chart
        .draw_series(LineSeries::new(
            points.iter().copied(),
            raw_color.stroke_width(1),
        ))
        .map_err(|e| e.to_string())?
        .label("loss")
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], raw_color.stroke_width(2)));
    if points.len() == 1 {
        // A single step draws no line; mark it so the image is not empty.
        chart
            .draw_series(std::iter::once(Circle::new(
                points[0],
                4,
                raw_color.filled(),
            )))
            .map_err(|e| e.to_string())?;
    }
    let smoothed = points.iter().zip(&smooth).map(|(p, s)| (p.0, *s));
    chart
        .draw_series(LineSeries::new(smoothed, smooth_color.stroke_width(2)))
        .map_err(|e| e.to_string())?
        .label(format!("EMA (weight {weight:.2})"))
        .legend(move |(x, y)| {
            PathElement::new([(x, y), (x + 20, y)], smooth_color.stroke_width(2))
        });
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .label_font(("sans-serif", 15))
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}

/// A non-empty range: plotters cannot scale an axis whose ends coincide.
fn widen(lo: f64, hi: f64, by: f64) -> (f64, f64) {
    if hi > lo {
        (lo, hi)
    } else {
        (lo - by, hi + by)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ema_is_debiased_and_skips_nan() {
        let s = ema(&[f64::NAN, 2.0, 2.0, f64::NAN, 2.0], 0.9);
        assert!(s[0].is_nan());
        for v in &s[1..] {
            assert!((v - 2.0).abs() < 1e-12, "{s:?}");
        }
        // With weight 0.5: 1, then (0.25 + 1.5) / 0.75.
        let s = ema(&[1.0, 3.0], 0.5);
        assert!((s[1] - 1.75 / 0.75).abs() < 1e-12);
        assert!((ema_weight(100) - (1.0 - 2.0 / 11.0)).abs() < 1e-12);
        assert!((ema_weight(1000) - (1.0 - 2.0 / 41.0)).abs() < 1e-12);
        assert!((ema_weight(10) - (1.0 - 2.0 / 3.0)).abs() < 1e-12);
        assert_eq!(ema_weight(1), 0.0);
    }

    #[test]
    fn writes_a_png_and_nothing_for_no_finite_points() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOSS_CURVE_FILE);
        assert!(!plot_loss_curve(&[(1, f64::NAN)], &path, "t").unwrap());
        assert!(!path.exists());
        assert!(plot_loss_curve(&[(1, 3.0)], &path, "one point").unwrap());
        let pts: Vec<(u64, f64)> = (1..=200).map(|s| (s, 5.0 / (s as f64).sqrt())).collect();
        assert!(plot_loss_curve(&pts, &path, "Training loss").unwrap());
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        // Only the final file remains.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn unwritable_target_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-such-dir").join(LOSS_CURVE_FILE);
        let err = plot_loss_curve(&[(1, 1.0), (2, 0.5)], &path, "t").unwrap_err();
        assert!(err.to_string().contains("no-such-dir"), "{err}");
    }
}
