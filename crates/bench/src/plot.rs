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
    let max_latency = series.iter().flat_map(|(_, _, points)| points.iter().map(|point| point.1)).fold(1.0, f64::max);

    let path = report.out().join("latency.svg");
    let root = SVGBackend::new(&path, (720, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Delivery latency, POST to event on another web server", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..max_rate * 1.05, 0.0..max_latency * 1.15)?;
    chart.configure_mesh().x_desc("offered load (posts/s)").y_desc("latency (ms)").draw()?;
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
