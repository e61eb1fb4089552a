//! The figures: printed as they are measured, checked against the targets, and written as
//! JSON.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::machine::Machine;
use crate::stats::median;
use crate::Plan;

/// One measured figure: the median of its runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Figure {
    pub label: String,
    pub unit: String,
    pub median: f64,
    pub runs: Vec<f64>,
}

/// A target for a figure, and whether the median meets it.
#[derive(Debug, Clone, Serialize)]
pub struct TargetCheck {
    pub figure: String,
    pub target: String,
    /// `None` when the figure was not measured or the run was quick.
    pub met: Option<bool>,
    pub verdict: Verdict,
}

/// The outcome of checking a figure against its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Met,
    Missed,
    NotMeasured,
    /// A `--quick` run measured the figure, but its figures mean nothing.
    NotChecked,
}

impl Verdict {
    /// Returns the verdict of a target for a figure's `value` in a quick run or not.
    fn of(value: Option<f64>, meets: fn(f64) -> bool, quick: bool) -> Verdict {
        match value {
            None => Verdict::NotMeasured,
            Some(_) if quick => Verdict::NotChecked,
            Some(value) if meets(value) => Verdict::Met,
            Some(_) => Verdict::Missed,
        }
    }

    fn met(self) -> Option<bool> {
        match self {
            Verdict::Met => Some(true),
            Verdict::Missed => Some(false),
            Verdict::NotMeasured | Verdict::NotChecked => None,
        }
    }

    fn text(self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::Missed => "MISSED",
            Verdict::NotMeasured => "not measured",
            Verdict::NotChecked => "not checked (--quick)",
        }
    }
}

/// Everything one invocation measured.
#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub plan: Plan,
    /// Figures by key, such as `writes.servers_1.per_second`.
    pub figures: BTreeMap<String, Figure>,
    /// Measurements that could not be made, by key, with the reason.
    pub unavailable: BTreeMap<String, String>,
    pub targets: Vec<TargetCheck>,
    #[serde(skip)]
    out: PathBuf,
}

impl Report {
    pub fn new(machine: Machine, plan: Plan, out: PathBuf) -> Report {
        Report { machine, plan, figures: BTreeMap::new(), unavailable: BTreeMap::new(), targets: Vec::new(), out }
    }

    pub fn out(&self) -> &PathBuf {
        &self.out
    }

    pub fn print_header(&self) {
        let machine = &self.machine;
        println!(
            "machine: {} cores ({}), {} MiB memory, Linux {}, open-file limit {}, load average {:.1}",
            machine.cores, machine.cpu, machine.memory_mib, machine.kernel, machine.open_file_limit, machine.load_average
        );
        let plan = &self.plan;
        println!(
            "plan: {}{} runs of {:.1} s each, posts of {} bytes of text; each figure is the median of its runs",
            if plan.quick { "QUICK (figures mean nothing), " } else { "" },
            plan.runs,
            plan.run_length.as_secs_f64(),
            plan.text_bytes
        );
    }

    /// Stores and prints a figure measured once per run.
    pub fn add(&mut self, key: &str, label: &str, unit: &str, runs: Vec<f64>) -> f64 {
        let value = median(&runs);
        let shown: Vec<String> = runs.iter().map(|run| format_value(*run)).collect();
        println!("  {label:<58} {:>12} {unit:<10} runs: {}", format_value(value), shown.join(", "));
        self.figures.insert(key.to_owned(), Figure { label: label.to_owned(), unit: unit.to_owned(), median: value, runs });
        value
    }

    /// Records and prints a measurement that could not be made.
    pub fn add_unavailable(&mut self, key: &str, label: &str, reason: &str) {
        println!("  {label:<58} not available: {reason}");
        self.unavailable.insert(key.to_owned(), reason.to_owned());
    }

    pub fn value(&self, key: &str) -> Option<f64> {
        self.figures.get(key).map(|figure| figure.median).filter(|value| !value.is_nan())
    }

    pub fn section(title: &str) {
        println!("\n{title}");
    }

    /// Compares the figures with the targets set for this 2-core machine and prints them.
    pub fn print_targets(&mut self) {
        if let Some(load) = crate::machine::load_average() {
            println!("\nload average at the end: {load:.1}");
        }
        let checks: [(&str, &str, fn(f64) -> bool); 7] = [
            ("writes.servers_1.ratio_to_dealer_router", "at least 0.5 of the DEALER/ROUTER ceiling", |v| v >= 0.5),
            ("end_to_end.load_50.p50_ms", "p50 under 3 ms at 50% of the peak", |v| v < 3.0),
            ("end_to_end.load_50.p99_ms", "p99 under 20 ms at 50% of the peak", |v| v < 20.0),
            ("fan_out.kib_per_stream", "under 16 KiB per event-stream client", |v| v < 16.0),
            ("fan_out.p99_ms", "p99 under 250 ms to reach every client", |v| v < 250.0),
            ("catch_up.seconds", "under 3 s", |v| v < 3.0),
            ("memory.max_mib", "under 400 MiB", |v| v < 400.0),
        ];
        Report::section("targets");
        for (key, target, meets) in checks {
            let verdict = Verdict::of(self.value(key), meets, self.plan.quick);
            let shown = self.value(key).map_or_else(|| "-".to_owned(), format_value);
            println!("  {key:<45} {shown:>12}  {target:<45} {}", verdict.text());
            self.targets.push(TargetCheck { figure: key.to_owned(), target: target.to_owned(), met: verdict.met(), verdict });
        }
    }

    /// Writes the report as `results.json` in the output folder.
    pub fn write_json(&self) -> anyhow::Result<()> {
        let path = self.out.join(RESULTS_FILE);
        let json = serde_json::to_string_pretty(self)?;
        std::fs::write(&path, json + "\n").with_context(|| format!("failed to write {}", path.display()))
    }
}

/// The name of the report in the output folder.
pub const RESULTS_FILE: &str = "results.json";

/// Reads the figures of the `results.json` that an earlier run wrote in the folder `out`.
pub fn read_figures(out: &Path) -> anyhow::Result<BTreeMap<String, Figure>> {
    #[derive(Deserialize)]
    struct Written {
        figures: BTreeMap<String, Figure>,
    }
    let path = out.join(RESULTS_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| format!("failed to read {}", path.display()))?;
    let written: Written = serde_json::from_str(&text).with_context(|| format!("{} is not a results file of forum-bench", path.display()))?;
    Ok(written.figures)
}

/// Checks that `results.json` can be written in the folder `out`, so that a run fails before
/// its benchmarks and not after them. Opens the file for appending, which changes no existing
/// results, and removes it again when the check created it.
pub fn check_writable(out: &Path) -> anyhow::Result<()> {
    let path = out.join(RESULTS_FILE);
    let existed = path.exists();
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&path)
        .with_context(|| format!("cannot write {} (choose another folder with --out)", path.display()))?;
    if !existed {
        std::fs::remove_file(&path).with_context(|| format!("failed to remove the empty {} created by the check", path.display()))?;
    }
    Ok(())
}

/// Formats a value with three significant digits, or as a whole number when it is large.
/// Values from 0.1 to 10 keep two decimals, and smaller ones, such as CPU milliseconds per
/// write, get up to six.
pub fn format_value(value: f64) -> String {
    if value.is_nan() {
        "-".to_owned()
    } else if value.abs() >= 100.0 {
        format!("{value:.0}")
    } else if value.abs() >= 10.0 {
        format!("{value:.1}")
    } else if value.abs() >= 0.1 || value == 0.0 {
        format!("{value:.2}")
    } else {
        let decimals = (2 - value.abs().log10().floor() as i32).clamp(3, 6) as usize;
        format!("{value:.decimals$}")
    }
}

#[cfg(test)]
mod tests {
    use super::{check_writable, format_value, read_figures, Verdict, RESULTS_FILE};

    /// `--replot` reads the figures that a full run wrote, such as the committed ones.
    #[test]
    fn read_figures_of_committed_run() {
        let committed = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/benchmarks");

        let figures = read_figures(&committed).unwrap();

        let p99 = &figures["end_to_end.load_50.p99_ms"];
        assert_eq!(p99.runs.len(), 3, "a full run has three runs of each figure");
        assert!(p99.runs.contains(&p99.median), "the median {} is one of the runs {:?}", p99.median, p99.runs);
        assert!(figures.contains_key("writes.servers_3.per_second"));
    }

    #[test]
    fn read_figures_names_missing_file() {
        let out = tempfile::tempdir().unwrap();

        let error = read_figures(out.path()).unwrap_err();

        assert!(format!("{error:#}").contains(RESULTS_FILE), "the error names the file: {error:#}");
    }

    #[test]
    fn verdict_of_quick_run_is_not_checked() {
        let below_one = |value: f64| value < 1.0;

        assert_eq!(Verdict::of(Some(0.5), below_one, false), Verdict::Met);
        assert_eq!(Verdict::of(Some(2.0), below_one, false), Verdict::Missed);
        assert_eq!(Verdict::of(None, below_one, false), Verdict::NotMeasured);
        assert_eq!(Verdict::of(Some(2.0), below_one, true), Verdict::NotChecked);
        assert_eq!(Verdict::of(None, below_one, true), Verdict::NotMeasured);
        assert_eq!(Verdict::NotChecked.met(), None);
        assert_eq!(serde_json::to_string(&Verdict::NotChecked).unwrap(), "\"not_checked\"");
    }

    #[test]
    fn check_writable_leaves_no_file() {
        let out = tempfile::tempdir().unwrap();

        check_writable(out.path()).unwrap();

        assert!(!out.path().join(RESULTS_FILE).exists(), "the check left an empty results.json");
    }

    #[test]
    fn check_writable_keeps_existing_results() {
        let out = tempfile::tempdir().unwrap();
        let path = out.path().join(RESULTS_FILE);
        std::fs::write(&path, "{}\n").unwrap();

        check_writable(out.path()).unwrap();

        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{}\n");
    }

    #[test]
    fn check_writable_rejects_unwritable_path() {
        let out = tempfile::tempdir().unwrap();
        // A folder in the place of the file fails even for root, unlike missing permissions.
        std::fs::create_dir(out.path().join(RESULTS_FILE)).unwrap();

        let error = check_writable(out.path()).unwrap_err();

        let message = format!("{error:#}");
        assert!(message.contains(&out.path().join(RESULTS_FILE).display().to_string()), "{message}");
        assert!(message.contains("--out"), "{message}");
    }

    #[test]
    fn format_value_keeps_three_digits() {
        let cases = [
            (1234.5, "1234"),
            (45.67, "45.7"),
            (0.993, "0.99"),
            (0.0, "0.00"),
            (0.0412, "0.0412"),
            (0.0037274, "0.00373"),
            (0.0000001, "0.000000"),
            (f64::NAN, "-"),
        ];
        for (value, expected) in cases {
            assert_eq!(format_value(value), expected, "format_value({value})");
        }
    }
}
