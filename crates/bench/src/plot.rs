//! SVG plots of the figures: delivery latency against load, and write throughput against
//! the number of data servers.

use plotters::prelude::*;

use crate::report::Report;

/// Draws `latency.svg` and `throughput.svg` in the output folder. A plot whose figures were
/// not measured is skipped.
pub fn draw(report: &Report) -> anyhow::Result<()> {
    draw_latency(report)?;
    draw_throughput(report)?;
    Ok(())
}

/// The p50 latency target at 50% of the peak rate, drawn on the latency plot.
const P50_TARGET_MS: f64 = 3.0;
/// The p99 latency target at 50% of the peak rate, drawn on the latency plot.
const P99_TARGET_MS: f64 = 20.0;

fn draw_latency(report: &Report) -> anyhow::Result<()> {
    let mut series: Vec<(&str, RGBColor, Vec<(f64, f64)>)> =
        vec![("p50", BLUE, Vec::new()), ("p95", RGBColor(230, 140, 0), Vec::new()), ("p99", RED, Vec::new())];
    // The levels are the tool's `--levels`, so every percentage that has figures is drawn.
    for percent in 1..=100 {
        let key = format!("end_to_end.load_{percent}");
        let Some(rate) = report.value(&format!("{key}.per_second")) else { continue };
        for (name, _, points) in &mut series {
            if let Some(latency) = report.value(&format!("{key}.{name}_ms")) {
                points.push((rate, latency));
            }
        }
    }
    if series.iter().all(|(_, _, points)| points.is_empty()) {
        return Ok(());
    }
    let max_rate = series.iter().flat_map(|(_, _, points)| points.iter().map(|point| point.0)).fold(1.0, f64::max);
    let latencies = || series.iter().flat_map(|(_, _, points)| points.iter().map(|point| point.1));
    // A logarithmic axis, because the p99 near the peak is tens of times the latencies at
    // the lower loads, where the targets are. A latency of 0 has no place on it, so the
    // lowest value shown is 0.01 ms. The axis starts at a power of ten, which is its first
    // label.
    let min_latency = latencies().fold(f64::INFINITY, f64::min).max(0.01).min(P50_TARGET_MS);
    let max_latency = latencies().fold(P99_TARGET_MS, f64::max);
    let bottom = 10f64.powf((min_latency / 1.2).log10().floor());

    let path = report.out().join("latency.svg");
    let root = SVGBackend::new(&path, (720, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Delivery latency, POST to event on another web server", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..max_rate * 1.05, (bottom..max_latency * 1.5).log_scale())?;
    chart
        .configure_mesh()
        // Enough key points for grid lines at every 1 to 9 times a power of ten, of which
        // only 1, 2 and 5 get labels.
        .y_labels(40)
        .y_label_formatter(&|latency| format_log_tick(*latency))
        .x_label_formatter(&|rate| format!("{rate:.0}"))
        .x_desc("offered load (posts/s)")
        .y_desc("latency (ms, log scale)")
        .draw()?;
    // The targets, which hold at 50% of the peak, as thin lines in the colors of their
    // percentiles.
    for (label, latency, color) in [("p50 target at 50% of the peak", P50_TARGET_MS, series[0].1), ("p99 target", P99_TARGET_MS, series[2].1)] {
        let line = vec![(0.0, latency), (max_rate * 1.05, latency)];
        chart.draw_series(LineSeries::new(line, color.mix(0.5).stroke_width(1)))?.label(format!("{label}: {latency} ms")).legend(
            move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.mix(0.5).stroke_width(1)),
        );
    }
    for (name, color, points) in series {
        chart.draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?.label(name).legend(move |(x, y)| {
            PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
        });
        chart.draw_series(points.into_iter().map(|point| Circle::new(point, 3, color.filled())))?;
    }
    chart.configure_series_labels().position(SeriesLabelPosition::UpperLeft).background_style(WHITE).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}

/// Formats a tick of a logarithmic axis: 1, 2 and 5 times a power of ten as a plain number,
/// such as `0.5` or `200`, and other ticks as an empty label.
fn format_log_tick(value: f64) -> String {
    if value <= 0.0 || !value.is_finite() {
        return String::new();
    }
    let power = 10f64.powf(value.log10().floor());
    let mantissa = value / power;
    let labeled = [1.0, 2.0, 5.0].iter().any(|shown| (mantissa - shown).abs() < 1e-6);
    if !labeled {
        return String::new();
    }
    // Rounding removes the error of the tick's computation, such as 2.0000000000000004.
    let rounded = (mantissa.round() * power * 1e6).round() / 1e6;
    format!("{rounded}")
}

fn draw_throughput(report: &Report) -> anyhow::Result<()> {
    let points: Vec<(f64, f64)> = (1..=3)
        .filter_map(|servers| report.value(&format!("writes.servers_{servers}.per_second")).map(|rate| (servers as f64, rate)))
        .collect();
    if points.is_empty() {
        return Ok(());
    }
    let ceiling = report.value("transport.dealer_router.per_second");
    let top = points.iter().map(|point| point.1).chain(ceiling).fold(1.0, f64::max);

    let path = report.out().join("throughput.svg");
    let root = SVGBackend::new(&path, (720, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Acknowledged writes per second against data servers in the group", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(72)
        .build_cartesian_2d(0.5..3.5, 0.0..top * 1.15)?;
    chart
        .configure_mesh()
        .x_labels(3)
        .x_label_formatter(&|servers| format!("{servers:.0}"))
        .x_desc("data servers in the group")
        .y_desc("writes/s")
        .draw()?;
    chart
        .draw_series(LineSeries::new(points.clone(), BLUE.stroke_width(2)))?
        .label("acknowledged writes/s")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLUE.stroke_width(2)));
    chart.draw_series(points.into_iter().map(|point| Circle::new(point, 4, BLUE.filled())))?;
    if let Some(ceiling) = ceiling {
        chart
            .draw_series(LineSeries::new(vec![(0.5, ceiling), (3.5, ceiling)], RED.stroke_width(1)))?
            .label("DEALER→ROUTER echo ceiling")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RED.stroke_width(1)));
    }
    chart.configure_series_labels().position(SeriesLabelPosition::LowerLeft).background_style(WHITE).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::{draw_latency, format_log_tick};
    use crate::machine::Machine;
    use crate::report::{Figure, Report};
    use crate::Plan;

    #[test]
    fn log_tick_labels_one_two_five() {
        let cases = [
            (1.0, "1"),
            (2.0000000000000004, "2"),
            (5.0, "5"),
            (10.0, "10"),
            (200.0, "200"),
            (0.5, "0.5"),
            (0.02, "0.02"),
            (3.0, ""),
            (70.0, ""),
            (0.0, ""),
        ];
        for (value, expected) in cases {
            assert_eq!(format_log_tick(value), expected, "format_log_tick({value})");
        }
    }

    fn empty_report(out: &std::path::Path) -> Report {
        let machine = Machine { cores: 2, cpu: "test".into(), memory_mib: 0, kernel: "test".into(), open_file_limit: 0, load_average: 0.0 };
        let plan = Plan {
            quick: false,
            runs: 1,
            run_length: Duration::from_secs(1),
            streams_per_web: 1,
            fan_out_streams: 1,
            catch_up_changes: 2,
            stored_messages: 1,
            text_bytes: 140,
            write_connections: 4,
            write_window: 1,
            posts_in_flight_per_web: 1,
            load_levels: vec![5, 25, 50, 90],
        };
        Report::new(machine, plan, out.to_owned())
    }

    /// Returns the vertical positions of the filled circles of `color` in an SVG text.
    fn circle_heights(svg: &str, color: &str) -> Vec<f64> {
        svg.split("<circle")
            .skip(1)
            .filter(|element| element.contains(&format!("fill=\"{color}\"")))
            .map(|element| {
                let start = element.find("cy=\"").expect("a circle has cy") + 4;
                let length = element[start..].find('"').expect("cy ends");
                element[start..start + length].parse().expect("cy is a number")
            })
            .collect()
    }

    #[test]
    fn latency_plot_separates_low_loads() {
        let out = tempfile::tempdir().unwrap();
        let mut report = empty_report(out.path());
        // The medians of the run of 15:02 on 2026-12-05, whose p99 at 90% of the peak made a
        // linear axis useless: per second, p50, p95, p99.
        let levels = [
            (5, 427.7, 1.374, 1.71, 2.271),
            (25, 2138.5, 4.603, 6.531, 7.515),
            (50, 4277.0, 7.299, 11.247, 13.431),
            (90, 7698.6, 100.159, 395.775, 500.479),
        ];
        let mut figures = BTreeMap::new();
        for (percent, rate, p50, p95, p99) in levels {
            for (name, value) in [("per_second", rate), ("p50_ms", p50), ("p95_ms", p95), ("p99_ms", p99)] {
                let figure = Figure { label: name.into(), unit: String::new(), median: value, runs: vec![value] };
                figures.insert(format!("end_to_end.load_{percent}.{name}"), figure);
            }
        }
        report.figures = figures;

        draw_latency(&report).unwrap();

        let svg = std::fs::read_to_string(out.path().join("latency.svg")).unwrap();
        let p50 = circle_heights(&svg, "#0000FF");
        assert_eq!(p50.len(), 4, "p50 circles in {svg}");
        // SVG heights grow downwards. A linear axis up to 575 ms puts all points from 1.4 to
        // 13.4 ms within 7 pixels.
        assert!(p50[0] - p50[2] > 60.0, "p50 at 5% and 50% are only {} pixels apart", p50[0] - p50[2]);
        let p99 = circle_heights(&svg, "#FF0000");
        assert_eq!(p99.len(), 4, "p99 circles in {svg}");
        assert!(p99.iter().all(|height| (0.0..420.0).contains(height)), "p99 outside the plot: {p99:?}");
        for tick in ["1", "2", "5", "10", "100", "500"] {
            assert!(svg.contains(&format!(">\n{tick}\n</text>")), "no tick label {tick} in {svg}");
        }
        assert!(svg.contains("log scale"), "no axis description in {svg}");
    }
}
