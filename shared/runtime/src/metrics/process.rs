//! The process's own metrics, in the Prometheus client libraries' names (`process_*`), read
//! from `/proc` at each scrape and served on every admin port of the process. Nothing is
//! written where `/proc` is absent.

use std::fmt::Write as _;

/// Clock ticks per second of `/proc/self/stat` (`CLK_TCK`, 100 on every Linux we run on).
const TICKS_PER_SECOND: f64 = 100.0;

/// Appends the process's metrics to `out`.
pub(super) fn render(out: &mut String) {
    let Some(process) = read() else {
        return;
    };
    let mut family = |name: &str, kind: &str, help: &str, value: f64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    family(
        "process_cpu_seconds_total",
        "counter",
        "CPU time the process used, user and system, in seconds.",
        process.cpu_seconds,
    );
    family(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory of the process in bytes.",
        process.resident_bytes,
    );
    family(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory of the process in bytes.",
        process.virtual_bytes,
    );
    family(
        "process_threads",
        "gauge",
        "Threads of the process.",
        process.threads,
    );
    family(
        "process_open_fds",
        "gauge",
        "File descriptors the process has open.",
        process.open_fds,
    );
    if let Some(max) = process.max_fds {
        family(
            "process_max_fds",
            "gauge",
            "Most file descriptors the process may open.",
            max,
        );
    }
    if let Some(start) = process.start_time_seconds {
        family(
            "process_start_time_seconds",
            "gauge",
            "When the process started, in seconds since the Unix epoch.",
            start,
        );
    }
}

#[derive(Debug, PartialEq)]
struct Process {
    cpu_seconds: f64,
    resident_bytes: f64,
    virtual_bytes: f64,
    threads: f64,
    open_fds: f64,
    max_fds: Option<f64>,
    start_time_seconds: Option<f64>,
}

fn read() -> Option<Process> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as f64;
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let boot = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    parse(&stat, &status, open_fds, &limits, &boot)
}

/// From the texts of `/proc/self/stat`, `/proc/self/status`, `/proc/self/limits` and
/// `/proc/stat`.
fn parse(stat: &str, status: &str, open_fds: f64, limits: &str, boot: &str) -> Option<Process> {
    // The fields after the command name (which may hold spaces and parentheses); the first
    // of them is field 3 of proc(5).
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let field = |n: usize| -> Option<f64> { fields.get(n - 3)?.parse().ok() };
    let cpu_seconds = (field(14)? + field(15)?) / TICKS_PER_SECOND;
    let kib = |key: &str| -> Option<f64> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        Some(
            line[key.len()..]
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()?
                * 1024.0,
        )
    };
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    let max_fds = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok());
    let booted: Option<f64> = boot
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok());
    let start_time_seconds = booted.zip(field(22)).map(|(b, t)| b + t / TICKS_PER_SECOND);
    Some(Process {
        cpu_seconds,
        resident_bytes: kib("VmRSS:").unwrap_or(0.0),
        virtual_bytes: kib("VmSize:").unwrap_or(0.0),
        threads,
        open_fds,
        max_fds,
        start_time_seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_texts_are_read_field_by_field() {
        // A command name with a space and a parenthesis, as proc(5) allows.
        let stat = "4242 (boardroom (x) y) S 1 4242 4242 0 -1 4194560 2000 0 0 0 \
                    250 130 0 0 20 0 9 0 1500 1073741824 20000 18446744073709551615";
        let status = "Name:\tboardroom\nVmSize:\t 1048576 kB\nVmRSS:\t   51200 kB\nThreads:\t9\n";
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        let process =
            parse(stat, status, 17.0, limits, "cpu 1 2 3\nbtime 1700000000\n").expect("parsed");
        assert_eq!(
            process,
            Process {
                cpu_seconds: 3.8,
                resident_bytes: 51200.0 * 1024.0,
                virtual_bytes: 1048576.0 * 1024.0,
                threads: 9.0,
                open_fds: 17.0,
                max_fds: Some(1024.0),
                start_time_seconds: Some(1_700_000_015.0),
            }
        );
    }

    #[test]
    fn this_process_reports_itself() {
        let mut out = String::new();
        render(&mut out);
        if std::path::Path::new("/proc/self/stat").exists() {
            assert!(
                out.contains("# TYPE process_cpu_seconds_total counter\n"),
                "{out}"
            );
            assert!(out.contains("\nprocess_resident_memory_bytes "), "{out}");
        }
    }
}
