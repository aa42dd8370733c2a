//! Latency distributions as an SVG chart: one cumulative curve per series.

use std::path::Path;
use std::time::Duration;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use crate::stats::millis;

/// Most points drawn per curve.
const CURVE_POINTS: usize = 400;

/// Draws the cumulative distribution of each series (milliseconds on x, the share of
/// samples at or below on y) into an SVG file.
pub fn latency_cdf(path: &Path, title: &str, series: &[(&str, &[Duration])]) -> Result<()> {
    let error = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| error(&e))?;
    let longest = series
        .iter()
        .flat_map(|(_, samples)| samples.iter().map(|d| millis(*d)))
        .fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..longest * 1.05, 0.0..1.0)
        .map_err(|e| error(&e))?;
    chart
        .configure_mesh()
        .x_desc("latency (ms)")
        .y_desc("share of samples")
        .draw()
        .map_err(|e| error(&e))?;
    for (index, (name, samples)) in series.iter().enumerate() {
        let mut sorted: Vec<f64> = samples.iter().map(|d| millis(*d)).collect();
        sorted.sort_by(f64::total_cmp);
        let count = sorted.len() as f64;
        // A few hundred points draw the curve as well as a hundred thousand.
        let step = (sorted.len() / CURVE_POINTS).max(1);
        let points = sorted
            .iter()
            .enumerate()
            .filter(|(rank, _)| rank % step == 0 || rank + 1 == sorted.len())
            .map(|(rank, &ms)| (ms, (rank + 1) as f64 / count));
        let color = Palette99::pick(index).to_rgba();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| error(&e))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()
        .map_err(|e| error(&e))?;
    root.present().map_err(|e| error(&e))?;
    Ok(())
}
