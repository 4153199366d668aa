//! The process's own figures in the Prometheus text format, read from
//! `/proc/self` when `/metrics` is scraped (nothing is sampled in between):
//! the standard `process_*` series every Prometheus client exports, and
//! `duplex_build_info`. Where `/proc` is missing (not Linux) only the build
//! info is written.

use std::fmt::Write;

/// Clock ticks per second of `/proc/self/stat`'s CPU times (`USER_HZ`, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// Appends the process series and the build info to `out`.
pub fn render(out: &mut String) {
    let _ = writeln!(
        out,
        "# HELP duplex_build_info The running build: always 1, its version as a label.\n\
         # TYPE duplex_build_info gauge\n\
         duplex_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    if let Some((cpu_seconds, start_ticks)) = stat() {
        series(
            out,
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time, seconds.",
            cpu_seconds,
        );
        if let Some(boot) = boot_time() {
            let started = boot + start_ticks / TICKS_PER_SECOND;
            series(
                out,
                "process_start_time_seconds",
                "gauge",
                "Start time, seconds since the Unix epoch.",
                started,
            );
        }
    }
    if let Some(rss) = status_kib("VmRSS:") {
        series(
            out,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory, bytes.",
            rss * 1024.0,
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        series(
            out,
            "process_open_fds",
            "gauge",
            "Open file descriptors.",
            fds.count() as f64,
        );
    }
    if let Some(max) = max_fds() {
        series(
            out,
            "process_max_fds",
            "gauge",
            "The limit of open file descriptors.",
            max,
        );
    }
}

fn series(out: &mut String, name: &str, kind: &str, help: &str, value: f64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
}

/// CPU seconds (user + system) and the start time in ticks after boot.
fn stat() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces); the first of them is field 3.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<f64>().ok();
    Some(((field(14)? + field(15)?) / TICKS_PER_SECOND, field(22)?))
}

fn boot_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines().find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
}

fn status_kib(key: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].trim().trim_end_matches("kB").trim().parse().ok()
}

fn max_fds() -> Option<f64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_process_series_and_the_build_are_rendered_with_real_values() {
        let mut out = String::new();
        super::render(&mut out);
        assert!(
            out.contains(&format!(
                "duplex_build_info{{version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            )),
            "{out}"
        );
        let value = |name: &str| -> f64 {
            let line = out
                .lines()
                .find(|l| l.starts_with(&format!("{name} ")))
                .unwrap_or_else(|| panic!("{name} in {out}"));
            line[name.len() + 1..].parse().unwrap_or_else(|_| panic!("{line}"))
        };
        assert!(value("process_resident_memory_bytes") > 1_000_000.0);
        assert!(value("process_open_fds") >= 3.0);
        assert!(value("process_max_fds") >= value("process_open_fds"));
        assert!(value("process_cpu_seconds_total") >= 0.0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let started = value("process_start_time_seconds");
        assert!(
            started <= now + 1.0 && started > now - 3600.0,
            "started {started}, now {now}"
        );
    }
}
