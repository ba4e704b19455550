//! Line plots as PNG files (plotters), labelled with a system TrueType font.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

/// Where Debian keeps a sans-serif font (`fonts-liberation` comes with Chromium, which
/// `cargo xtask` installs; `fonts-dejavu-core` is the other common one).
const FONTS: [&str; 2] = [
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
];

/// Draws `series` (name, `(x, y)` points) as lines on one chart and writes it to `path`.
/// (Coordinates are f64 on both axes: with an f32 axis of run-time bounds, LLVM 22 in
/// Rust 1.95 crashes compiling plotters' code at opt-level 3.)
pub fn curves(path: &Path, title: &str, series: &[(&str, &[(f64, f32)])]) {
    let font = FONTS.iter().find_map(|f| std::fs::read(f).ok()).unwrap_or_else(|| {
        panic!("no TrueType font at {FONTS:?} for the plot's labels: apt-get install fonts-liberation")
    });
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    register_font("sans-serif", FontStyle::Normal, font).unwrap_or_else(|_| panic!("the font is not TrueType"));
    let points = series.iter().flat_map(|(_, p)| p.iter());
    let (x_max, y_min, y_max) = points.fold((1.0f64, f64::INFINITY, f64::NEG_INFINITY), |(x, lo, hi), &(px, py)| {
        (x.max(px), lo.min(py as f64), hi.max(py as f64))
    });
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("plot folder");
    }
    let root = BitMapBackend::new(path, (1200, 800)).into_drawing_area();
    root.fill(&WHITE).expect("draw");
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 28))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max, (y_min - 0.05)..(y_max.min(y_min + 3.0) + 0.05))
        .expect("chart");
    chart.configure_mesh().x_desc("tokens").y_desc("loss (nats)").label_style(("sans-serif", 16)).draw().expect("mesh");
    for (i, (name, points)) in series.iter().enumerate() {
        let width = if i == 0 { 4 } else { 2 };
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|&(x, y)| (x, y as f64)),
                Palette99::pick(i).stroke_width(width),
            ))
            .expect("series")
            .label(*name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], Palette99::pick(i).stroke_width(3)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .draw()
        .expect("legend");
    root.present().unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}
