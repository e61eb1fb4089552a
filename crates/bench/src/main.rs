//! `forum-bench`: measures the forum on this machine and writes the figures as JSON and SVG.
//!
//! It starts everything it measures itself, on 127.0.0.1 only. Each server runs in its own
//! process: a copy of this binary started with a hidden subcommand that runs the same library
//! code as the `dataserver` and `webserver` binaries. So a server's resident memory is read
//! from `/proc/PID/status` without the load generator's share. docs/benchmarks.md describes
//! every figure.

mod catch_up;
mod children;
mod cpu;
mod data_client;
mod end_to_end;
mod fan_out;
mod forum;
mod interrupt;
mod machine;
mod memory;
mod plot;
mod report;
mod roles;
mod sse;
mod stats;
mod transport;
mod writes;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use crate::report::Report;

/// Measures transport ceilings, data server writes, end-to-end delivery, fan-out, catch-up
/// and memory, and writes the figures to <OUT>/results.json with plots as SVG.
#[derive(Parser, Debug)]
#[command(version)]
struct Arguments {
    #[command(flatten)]
    options: Options,

    #[command(subcommand)]
    role: Option<roles::Role>,
}

/// The sizes and durations of the measurements.
#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// Runs a tiny configuration that takes seconds and only shows that the tool still works.
    /// Its figures mean nothing, so the targets are not checked. Sizes given explicitly still
    /// apply.
    #[arg(long)]
    quick: bool,

    /// The number of runs of each figure; the tool prints the median [default: 3, quick: 1].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=20))]
    runs: Option<u32>,

    /// The length of each timed run, in seconds, from 0.1 to 60 [default: 3, quick: 0.5].
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds, allow_negative_numbers = true)]
    seconds: Option<f64>,

    /// Event-stream clients on each of the three web servers in the end-to-end benchmark
    /// [default: 20, quick: 2].
    #[arg(long, value_name = "N")]
    streams_per_web: Option<usize>,

    /// Event-stream clients on the one web server of the fan-out benchmark
    /// [default: 10000, quick: 100].
    #[arg(long, value_name = "N")]
    fan_out_streams: Option<usize>,

    /// Changes that a stopped data server misses before the catch-up benchmark restarts it
    /// [default: 100000, quick: 1000].
    #[arg(long, value_name = "N")]
    catch_up_changes: Option<u64>,

    /// Messages stored in the data server of the memory benchmark [default: 1000000, quick: 5000].
    #[arg(long, value_name = "N")]
    stored_messages: Option<u64>,

    /// Requests in flight on each of the 4 DEALER connections of (a) and (b), at most 256,
    /// because a data server replies `Overloaded` beyond 1024 in all. The echo and the writes
    /// get the same window. A data server needs a deep one, because the writes
    /// that arrive while a commit waits for the disk go into the next commit.
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=256))]
    write_window: u64,

    /// The size of each post's text, in bytes; every benchmark uses it.
    #[arg(long, value_name = "BYTES", default_value_t = 140, value_parser = clap::value_parser!(u64).range(16..=4096))]
    text_bytes: u64,

    /// The benchmarks to run, as letters: a transport, b writes, c end to end, d fan-out,
    /// e catch-up, f memory. (b) needs (a) for its ratio.
    #[arg(long, value_name = "LETTERS", default_value = "abcdef", value_parser = parse_benchmarks)]
    only: String,

    /// The load levels of the end-to-end benchmark, comma-separated, in percent of its peak
    /// rate. `--levels 50` with a longer `--seconds` runs one level long enough to profile.
    #[arg(long, value_name = "PERCENTS", value_delimiter = ',', default_value = "5,25,50,90",
          value_parser = clap::value_parser!(u32).range(1..=100))]
    levels: Vec<u32>,

    /// Redraws the SVG plots in the --out folder from its results.json, without measuring
    /// anything, for example after a change to the plots.
    #[arg(long)]
    replot: bool,

    /// The folder for results.json and the SVG plots; created when missing.
    #[arg(long, value_name = "DIR", default_value = "target/forum-bench")]
    out: PathBuf,

    /// The folder under which the data servers' stores are created (in a fresh temporary
    /// folder that is removed at the end) [default: the system's temporary folder].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

/// The range of `--seconds`. A run shorter than 0.1 s measures mostly its own start.
const RUN_SECONDS: std::ops::RangeInclusive<f64> = 0.1..=60.0;

/// Parses `--seconds`: a number of seconds in [`RUN_SECONDS`].
fn parse_seconds(value: &str) -> Result<f64, String> {
    let seconds: f64 = value.trim().parse().map_err(|_| "expected a number of seconds, such as 0.5 or 3".to_owned())?;
    // NaN is in no range, so it is rejected here too.
    if !RUN_SECONDS.contains(&seconds) {
        return Err(format!("must be from {} to {} seconds", RUN_SECONDS.start(), RUN_SECONDS.end()));
    }
    Ok(seconds)
}

/// Parses `--only`: one or more letters from a to f.
fn parse_benchmarks(value: &str) -> Result<String, String> {
    if value.is_empty() {
        return Err("expected at least one benchmark letter from a to f, such as ab".to_owned());
    }
    if let Some(unknown) = value.chars().find(|letter| !"abcdef".contains(*letter)) {
        return Err(format!("{unknown:?} is not a benchmark; use letters from a to f, such as ab"));
    }
    Ok(value.to_owned())
}

/// Returns a note when `only` selects (b) without (a), because (b)'s ratio to the
/// DEALER/ROUTER ceiling needs the ceiling that (a) measures.
fn missing_ceiling_note(only: &str) -> Option<&'static str> {
    (only.contains('b') && !only.contains('a'))
        .then_some("note: (b) reports no ratio to the DEALER/ROUTER ceiling, because (a) measures that ceiling; add a to --only for it")
}

/// The resolved sizes of one invocation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Plan {
    pub quick: bool,
    pub runs: u32,
    pub run_length: Duration,
    pub streams_per_web: usize,
    pub fan_out_streams: usize,
    pub catch_up_changes: u64,
    pub stored_messages: u64,
    pub text_bytes: usize,
    /// Pipelined connections of the write benchmarks, and requests in flight on each.
    pub write_connections: usize,
    pub write_window: usize,
    /// HTTP requests in flight on each web server while the end-to-end peak is measured.
    pub posts_in_flight_per_web: usize,
    /// The end-to-end load levels, in percent of the peak.
    pub load_levels: Vec<u32>,
}

impl Plan {
    fn from_options(options: &Options) -> Plan {
        let quick = options.quick;
        Plan {
            quick,
            runs: options.runs.unwrap_or(if quick { 1 } else { 3 }),
            run_length: Duration::from_secs_f64(options.seconds.unwrap_or(if quick { 0.5 } else { 3.0 })),
            streams_per_web: options.streams_per_web.unwrap_or(if quick { 2 } else { 20 }).max(1),
            fan_out_streams: options.fan_out_streams.unwrap_or(if quick { 100 } else { 10_000 }).max(1),
            catch_up_changes: options.catch_up_changes.unwrap_or(if quick { 1_000 } else { 100_000 }).max(2),
            stored_messages: options.stored_messages.unwrap_or(if quick { 5_000 } else { 1_000_000 }).max(1),
            text_bytes: options.text_bytes as usize,
            write_connections: 4,
            write_window: options.write_window as usize,
            posts_in_flight_per_web: 16,
            load_levels: options.levels.clone(),
        }
    }
}

fn main() -> anyhow::Result<()> {
    let arguments = Arguments::parse();
    if let Some(role) = arguments.role {
        return roles::run(role);
    }
    if arguments.options.replot {
        return replot(&arguments.options);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("failed to start tokio")?;
    let result = runtime.block_on(measure(arguments.options));
    drop(runtime);
    if let Err(error) = &result {
        if let Some(interrupted) = error.downcast_ref::<interrupt::Interrupted>() {
            eprintln!("{interrupted}");
            std::process::exit(interrupted.exit_code());
        }
    }
    result
}

/// Draws the plots again from the figures of an earlier run in `options.out`.
fn replot(options: &Options) -> anyhow::Result<()> {
    let mut report = Report::new(machine::describe(0), Plan::from_options(options), options.out.clone());
    report.figures = report::read_figures(&options.out)?;
    plot::draw(&report)?;
    println!("redrew the plots in {} from its {}", options.out.display(), report::RESULTS_FILE);
    Ok(())
}

async fn measure(options: Options) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    // Listens before any server starts, so that no signal can end the tool with its default
    // action and leave servers and stores behind.
    let mut interrupts = interrupt::Interrupts::listen()?;
    let plan = Plan::from_options(&options);
    let open_files = machine::raise_open_file_limit()?;
    std::fs::create_dir_all(&options.out)
        .with_context(|| format!("failed to create the output folder {}", options.out.display()))?;
    report::check_writable(&options.out)?;
    let scratch = match &options.data_dir {
        Some(parent) => tempfile::Builder::new().prefix("forum-bench-").tempdir_in(parent),
        None => tempfile::Builder::new().prefix("forum-bench-").tempdir(),
    }
    .context("failed to create a temporary folder for the data servers' stores")?;

    let machine = machine::describe(open_files);
    let mut report = Report::new(machine, plan.clone(), options.out.clone());
    report.print_header();
    if let Some(note) = missing_ceiling_note(&options.only) {
        println!("{note}");
    }

    // On a signal, the benchmark future is dropped, which kills every child process it owns
    // (`ChildProcess` kills on drop), and then the scratch folder is removed.
    let signal = tokio::select! {
        result = run_benchmarks(&options.only, &plan, scratch.path(), &mut report) => {
            result?;
            None
        }
        signal = interrupts.recv() => Some(signal),
    };
    if let Some(signal) = signal {
        let removal = interrupt::remove_scratch(scratch.path()).await;
        return Err(interrupt::Interrupted { signal, scratch: scratch.path().to_owned(), removal }.into());
    }

    report.print_targets();
    report.write_json()?;
    plot::draw(&report)?;
    println!("\nwrote {}", options.out.display());
    Ok(())
}

/// Runs the benchmarks whose letters are in `only`, in alphabetical order.
async fn run_benchmarks(only: &str, plan: &Plan, scratch: &std::path::Path, report: &mut Report) -> anyhow::Result<()> {
    let selected = |letter: char| only.contains(letter);
    if selected('a') {
        transport::measure(plan, scratch, report).await?;
    }
    if selected('b') {
        writes::measure(plan, scratch, report).await?;
    }
    if selected('c') {
        end_to_end::measure(plan, scratch, report).await?;
    }
    if selected('d') {
        fan_out::measure(plan, scratch, report).await?;
    }
    if selected('e') {
        catch_up::measure(plan, scratch, report).await?;
    }
    if selected('f') {
        memory::measure(plan, scratch, report).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::{missing_ceiling_note, Arguments};

    fn parse(arguments: &[&str]) -> Result<Arguments, clap::Error> {
        Arguments::try_parse_from(std::iter::once("forum-bench").chain(arguments.iter().copied()))
    }

    #[test]
    fn seconds_accepts_range_ends() {
        for value in ["0.1", "60", "3"] {
            let arguments = parse(&["--seconds", value]).unwrap_or_else(|error| panic!("--seconds {value}: {error}"));
            assert_eq!(arguments.options.seconds, Some(value.parse().unwrap()), "--seconds {value}");
        }
    }

    #[test]
    fn seconds_rejects_out_of_range() {
        for value in ["0", "-1", "0.09", "60.5", "inf", "nan", "NaN", "three", ""] {
            let error = parse(&["--seconds", value]).err().unwrap_or_else(|| panic!("--seconds {value:?} was accepted"));
            let message = error.to_string();
            assert!(message.contains("--seconds"), "--seconds {value:?}: {message}");
        }
        let message = parse(&["--seconds", "nan"]).err().unwrap().to_string();
        assert!(message.contains("from 0.1 to 60 seconds"), "{message}");
    }

    #[test]
    fn only_rejects_empty_and_unknown() {
        for value in ["", "g", "a b", "A"] {
            assert!(parse(&["--only", value]).is_err(), "--only {value:?} was accepted");
        }
        assert_eq!(parse(&["--only", "ce"]).unwrap().options.only, "ce");
    }

    #[test]
    fn levels_default_and_help() {
        assert_eq!(parse(&[]).unwrap().options.levels, vec![5, 25, 50, 90]);
        assert_eq!(parse(&["--levels", "10,20"]).unwrap().options.levels, vec![10, 20]);

        let help = Arguments::command().render_long_help().to_string();
        assert!(help.contains("[default: 5,25,50,90]"), "{help}");
        assert!(help.contains("from 0.1 to 60"), "{help}");
    }

    #[test]
    fn ceiling_note_only_for_b_without_a() {
        assert!(missing_ceiling_note("b").is_some());
        assert!(missing_ceiling_note("bcd").is_some());
        assert!(missing_ceiling_note("ab").is_none());
        assert!(missing_ceiling_note("cdef").is_none());
    }
}
