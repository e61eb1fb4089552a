//! CPU use during a timed run: the CPU time of groups of processes, read from
//! `/proc/PID/stat`, and the busy fraction of the whole machine, read from `/proc/stat`.
//!
//! Both files count in clock ticks (USER_HZ, usually 100 per second), so a figure from a short
//! run is coarse: one tick is 10 ms of CPU time spread over all the run's posts.

use anyhow::Context;

use crate::report::Report;

/// Processes whose CPU time is added up into one figure, such as all the data servers.
pub struct ProcessGroup {
    /// The key suffix of the figure, such as `data` in `cpu_ms_per_post_data`.
    pub key: &'static str,
    /// The group's name in the figure's label, such as "data servers".
    pub label: &'static str,
    pub pids: Vec<u32>,
}

/// The CPU time of each process group and of the machine at one moment, in clock ticks.
pub struct CpuReading {
    machine: MachineTicks,
    group_ticks: Vec<u64>,
}

/// The machine's CPU time in clock ticks since boot, summed over all cores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MachineTicks {
    busy: u64,
    total: u64,
}

/// Collects the CPU use of the runs of one figure and adds it to the report.
///
/// A failed reading of `/proc` does not stop the benchmark: the first error is kept and
/// reported in place of the CPU figures.
pub struct CpuMeter {
    groups: Vec<ProcessGroup>,
    ticks_per_second: f64,
    busy_fractions: Vec<f64>,
    /// CPU milliseconds per item, by group and then by run.
    ms_per_item: Vec<Vec<f64>>,
    failure: Option<String>,
}

impl CpuMeter {
    pub fn new(groups: Vec<ProcessGroup>) -> CpuMeter {
        let ms_per_item = groups.iter().map(|_| Vec::new()).collect();
        CpuMeter { groups, ticks_per_second: clock_ticks_per_second(), busy_fractions: Vec::new(), ms_per_item, failure: None }
    }

    /// Reads the CPU time so far, or returns `None` and keeps the error when `/proc` could not
    /// be read.
    pub fn read(&mut self) -> Option<CpuReading> {
        match self.try_read() {
            Ok(reading) => Some(reading),
            Err(error) => {
                self.failure.get_or_insert_with(|| format!("{error:#}"));
                None
            }
        }
    }

    fn try_read(&self) -> anyhow::Result<CpuReading> {
        let machine = read_machine_ticks()?;
        let mut group_ticks = Vec::with_capacity(self.groups.len());
        for group in &self.groups {
            let mut ticks = 0;
            for pid in &group.pids {
                ticks += read_process_ticks(*pid)?;
            }
            group_ticks.push(ticks);
        }
        Ok(CpuReading { machine, group_ticks })
    }

    /// Reads the CPU time again and records the use since `start` for a run that handled
    /// `items` posts or writes.
    pub fn record_run(&mut self, start: Option<CpuReading>, items: u64) {
        let Some(start) = start else { return };
        let Some(end) = self.read() else { return };

        let busy = end.machine.busy.saturating_sub(start.machine.busy);
        let total = end.machine.total.saturating_sub(start.machine.total);
        self.busy_fractions.push(if total == 0 { f64::NAN } else { busy as f64 / total as f64 });

        for (index, runs) in self.ms_per_item.iter_mut().enumerate() {
            let ticks = end.group_ticks[index].saturating_sub(start.group_ticks[index]);
            let ms = ticks as f64 * 1000.0 / self.ticks_per_second;
            runs.push(if items == 0 { f64::NAN } else { ms / items as f64 });
        }
    }

    /// Adds `<key>.cpu_busy` and `<key>.cpu_ms_per_<item>_<group>` for each group, or one
    /// unavailable entry `<key>.cpu` with the first error.
    pub fn add_figures(self, report: &mut Report, key: &str, item: &str) {
        if let Some(reason) = self.failure {
            report.add_unavailable(&format!("{key}.cpu"), "  CPU use", &reason);
            return;
        }
        report.add(&format!("{key}.cpu_busy"), "  machine busy (all cores)", "", self.busy_fractions);
        for (group, runs) in self.groups.iter().zip(self.ms_per_item) {
            let label = format!("  CPU per {item}: {}", group.label);
            report.add(&format!("{key}.cpu_ms_per_{item}_{}", group.key), &label, "ms", runs);
        }
    }
}

/// Returns the clock ticks per second (USER_HZ) in which `/proc` counts CPU time.
fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a system setting.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    // sysconf returns -1 only on error. USER_HZ is 100 on x86 and Arm Linux.
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// Returns the user and system CPU time of process `pid` (all its threads) in clock ticks.
fn read_process_ticks(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("failed to read {path}"))?;
    parse_process_ticks(&stat).with_context(|| format!("{path} has no valid utime and stime fields"))
}

/// Returns utime + stime from the text of a `/proc/PID/stat` file.
///
/// The second field, the command name in parentheses, may itself contain spaces and
/// parentheses, so the fields are counted from the last `)`. After it come state (field 3)
/// up to utime (field 14) and stime (field 15), as proc(5) numbers them.
fn parse_process_ticks(stat: &str) -> Option<u64> {
    let (_, after_name) = stat.rsplit_once(')')?;
    let mut fields = after_name.split_whitespace().skip(14 - 3);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn read_machine_ticks() -> anyhow::Result<MachineTicks> {
    let stat = std::fs::read_to_string("/proc/stat").context("failed to read /proc/stat")?;
    parse_machine_ticks(&stat).context("/proc/stat has no valid `cpu` line")
}

/// Returns the busy and total ticks from the `cpu` line (all cores) of `/proc/stat`.
///
/// The line contains user, nice, system, idle, iowait, irq, softirq and steal, then guest and
/// guest_nice, which user and nice already include and so are left out. Idle and iowait
/// count as not busy.
fn parse_machine_ticks(stat: &str) -> Option<MachineTicks> {
    let line = stat.lines().find(|line| line.split_whitespace().next() == Some("cpu"))?;
    let ticks: Vec<u64> = line.split_whitespace().skip(1).take(8).map(|field| field.parse().ok()).collect::<Option<_>>()?;
    if ticks.len() < 5 {
        return None;
    }
    let total: u64 = ticks.iter().sum();
    let idle = ticks[3] + ticks[4];
    Some(MachineTicks { busy: total - idle, total })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_ticks_of_plain_name() {
        let stat = "4242 (forum-bench) S 1 4242 4242 0 -1 4194560 1500 0 0 0 250 75 0 0 20 0 8 0 100 0 0";
        assert_eq!(parse_process_ticks(stat), Some(325));
    }

    #[test]
    fn process_ticks_of_name_with_parentheses() {
        let stat = "77 (a) b (c) d) R 1 77 77 0 -1 4194560 10 0 0 0 31 9 2 3 20 0 1 0 5 0 0";
        assert_eq!(parse_process_ticks(stat), Some(40));
    }

    #[test]
    fn process_ticks_of_truncated_line() {
        assert_eq!(parse_process_ticks("77 (forum-bench) S 1 77 77"), None);
        assert_eq!(parse_process_ticks("no parenthesis"), None);
    }

    #[test]
    fn machine_ticks_of_all_cores() {
        let stat = "cpu  100 5 40 800 20 3 2 0 7 0\ncpu0 50 2 20 400 10 1 1 0 7 0\nintr 1 2 3\n";
        let ticks = parse_machine_ticks(stat).expect("a valid cpu line");
        assert_eq!(ticks.total, 970);
        assert_eq!(ticks.busy, 150);
    }

    #[test]
    fn machine_ticks_without_cpu_line() {
        assert_eq!(parse_machine_ticks("cpu0 50 2 20 400 10\n"), None);
    }

    #[test]
    fn proc_files_of_this_machine_parse() {
        assert!(read_process_ticks(std::process::id()).is_ok());
        assert!(read_machine_ticks().is_ok());
    }
}
