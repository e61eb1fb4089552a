//! The description of the machine printed with the figures, and the open-file limit.

use anyhow::Context;
use serde::Serialize;

/// The machine the figures were measured on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu: String,
    pub memory_mib: u64,
    pub kernel: String,
    /// The soft RLIMIT_NOFILE of this process and of the servers it starts.
    pub open_file_limit: u64,
    /// The 1-minute load average when the run started. Other work on the machine above the
    /// core count makes the figures slower and noisier.
    pub load_average: f64,
}

/// Reads the core count, CPU model, memory and kernel release from /proc.
pub fn describe(open_file_limit: u64) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name").and_then(|rest| rest.split_once(':')).map(|(_, name)| name.trim().to_owned()))
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_kib = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse::<u64>().ok())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned();
    let load_average = load_average().unwrap_or(f64::NAN);
    Machine {
        cores: std::thread::available_parallelism().map(|cores| cores.get()).unwrap_or(1),
        cpu,
        memory_mib: memory_kib / 1024,
        kernel,
        open_file_limit,
        load_average,
    }
}

/// Returns the 1-minute load average from /proc/loadavg.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

/// Raises this process's soft limit on open files to its hard limit and returns the new
/// soft limit. Child processes inherit it, so the servers can hold as many connections.
pub fn raise_open_file_limit() -> anyhow::Result<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(std::io::Error::last_os_error()).context("failed to read RLIMIT_NOFILE");
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            return Err(std::io::Error::last_os_error()).context("failed to raise RLIMIT_NOFILE to its hard limit");
        }
    }
    Ok(limit.rlim_cur as u64)
}

/// Returns the resident memory of process `pid` in KiB, read from `/proc/PID/status`.
pub fn resident_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("failed to read {path}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .with_context(|| format!("{path} has no VmRSS line"))
}
