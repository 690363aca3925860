//! The daemon under test, run as a separate process (`jobwatch serve` of this very
//! binary) so that its memory and CPU are its own: settings go in as `JOBWATCH__`
//! environment variables, its log goes to a file in the bench's work directory, and
//! `/proc/PID` says what it costs. The child is killed when its handle is dropped,
//! so every way out of the bench (an error, Ctrl-C, a panic) takes it down.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// How long a fresh daemon may take to answer `/healthz`.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Ports tried when the one picked was taken by someone else in between.
const START_TRIES: usize = 3;

pub struct DaemonProcess {
    child: tokio::process::Child,
    pub pid: u32,
    pub url: String,
    log: PathBuf,
}

/// What `/proc` says about the daemon at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    /// User plus system CPU time, in seconds.
    pub cpu_seconds: f64,
    pub rss_kib: u64,
    /// Peak resident set size so far (VmHWM).
    pub peak_rss_kib: u64,
    /// Bytes it caused to be written to storage (`/proc/PID/io`), where the
    /// kernel keeps that count.
    pub write_bytes: Option<u64>,
}

/// `KEY=VALUE` of `--set` as the environment variable the daemon reads.
pub fn env_name(key: &str) -> String {
    format!("JOBWATCH__{}", key.replace('.', "__").to_uppercase())
}

impl DaemonProcess {
    /// Start `exe serve` with `settings` (dotted keys) on a free loopback port, and
    /// wait until it answers `/healthz`.
    pub async fn start(
        exe: &Path,
        settings: &BTreeMap<String, String>,
        dir: &Path,
        name: &str,
    ) -> anyhow::Result<DaemonProcess> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let mut last_error = None;
        for attempt in 0..START_TRIES {
            // Ask the kernel for a free port; the tiny race with another program
            // taking it meanwhile is covered by trying again.
            let port = StdListener::bind((Ipv4Addr::LOCALHOST, 0))?
                .local_addr()?
                .port();
            let log = dir.join(format!("{name}-daemon-{attempt}.log"));
            let mut cmd = tokio::process::Command::new(exe);
            cmd.arg("serve")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(std::fs::File::create(&log).with_context(
                    || format!("creating the daemon log {}", log.display()),
                )?))
                .kill_on_drop(true)
                // Its own settings only: a RUST_LOG meant for the bench must not
                // turn the daemon's logging (and its cost) up.
                .env_remove("RUST_LOG");
            for (key, value) in settings {
                cmd.env(env_name(key), value);
            }
            cmd.env(env_name("api.listen"), format!("127.0.0.1:{port}"));
            let mut child = cmd
                .spawn()
                .with_context(|| format!("starting {} serve", exe.display()))?;
            let pid = child.id().context("the daemon exited at once")?;
            let url = format!("http://127.0.0.1:{port}");
            let started = Instant::now();
            loop {
                if let Some(status) = child.try_wait()? {
                    last_error = Some(format!(
                        "the daemon exited with {status} before answering: {}",
                        tail(&log)
                    ));
                    break;
                }
                if let Ok(r) = http.get(format!("{url}/healthz")).send().await {
                    if r.status().is_success() {
                        return Ok(DaemonProcess {
                            child,
                            pid,
                            url,
                            log,
                        });
                    }
                }
                if started.elapsed() > START_TIMEOUT {
                    bail!(
                        "the daemon did not answer /healthz within {START_TIMEOUT:?}: {}",
                        tail(&log)
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        bail!(last_error.unwrap_or_else(|| "the daemon did not start".into()))
    }

    /// The daemon's CPU and memory now; `None` once it is gone.
    pub fn sample(&self) -> Option<ProcSample> {
        proc_sample(self.pid)
    }

    /// Has it died on its own? Then say why, from its log.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("the daemon exited with {status}: {}", tail(&self.log));
        }
        Ok(())
    }

    /// Kill it and reap it.
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

/// The last lines of a log, for an error message.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(15);
    if lines.is_empty() {
        format!("(its log {} is empty)", path.display())
    } else {
        format!(
            "its log {} ends with:\n{}",
            path.display(),
            lines[from..].join("\n")
        )
    }
}

/// One daemon, or several replicas of it sharing a PostgreSQL store, measured
/// together: CPU, memory and writes add up; requests go to the first.
pub struct Daemons {
    procs: Vec<DaemonProcess>,
    pub url: String,
}

impl Daemons {
    /// `n` daemons with `settings`, one after another (each answers `/healthz`
    /// before the next starts).
    pub async fn start(
        exe: &Path,
        settings: &BTreeMap<String, String>,
        dir: &Path,
        name: &str,
        n: usize,
    ) -> anyhow::Result<Daemons> {
        let mut procs = Vec::with_capacity(n);
        for i in 0..n.max(1) {
            let label = if n > 1 {
                format!("{name}-{i}")
            } else {
                name.to_string()
            };
            procs.push(DaemonProcess::start(exe, settings, dir, &label).await?);
        }
        let url = procs[0].url.clone();
        Ok(Daemons { procs, url })
    }

    pub fn first_pid(&self) -> u32 {
        self.procs[0].pid
    }

    pub fn pids(&self) -> String {
        let pids: Vec<String> = self.procs.iter().map(|p| p.pid.to_string()).collect();
        pids.join(" ")
    }

    /// The sum over the daemons; `None` once one is gone.
    pub fn sample(&self) -> Option<ProcSample> {
        let samples: Vec<ProcSample> = self
            .procs
            .iter()
            .map(DaemonProcess::sample)
            .collect::<Option<_>>()?;
        Some(ProcSample {
            cpu_seconds: samples.iter().map(|s| s.cpu_seconds).sum(),
            rss_kib: samples.iter().map(|s| s.rss_kib).sum(),
            peak_rss_kib: samples.iter().map(|s| s.peak_rss_kib).sum(),
            write_bytes: samples.iter().map(|s| s.write_bytes).sum(),
        })
    }

    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        self.procs
            .iter_mut()
            .try_for_each(DaemonProcess::check_alive)
    }

    pub async fn stop(self) {
        for p in self.procs {
            p.stop().await;
        }
    }
}

/// CPU seconds of every PostgreSQL server process on this machine (its backends
/// do the store's work for the daemons on a shared store).
pub fn postgres_cpu_seconds() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
        })
        .filter_map(|pid| proc_sample(pid).map(|s| s.cpu_seconds))
        .sum()
}

/// CPU seconds of `pid` and every process below it (a peer's interpreter may
/// start workers); those that ended are not counted, so the tree is read while
/// it runs.
pub fn tree_cpu_seconds(pid: u32) -> f64 {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
                continue;
            };
            // After the name: state, then the parent's pid.
            let ppid = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().nth(1)?.parse::<u32>().ok());
            if let Some(ppid) = ppid {
                parents.push((p, ppid));
            }
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    tree.iter()
        .filter_map(|p| proc_sample(*p).map(|s| s.cpu_seconds))
        .sum()
}

/// Clock ticks per second of `/proc/PID/stat` times (`getconf CLK_TCK`, 100 on Linux).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

pub fn proc_sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime field 14, stime field 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let write_bytes = std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|l| l.strip_prefix("write_bytes:"))
                .and_then(|v| v.trim().parse().ok())
        });
    Some(ProcSample {
        cpu_seconds: (utime + stime) / clock_ticks(),
        rss_kib: kib("VmRSS:"),
        peak_rss_kib: kib("VmHWM:"),
        write_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_keys_become_the_environment_names_the_daemon_reads() {
        assert_eq!(
            env_name("upstream.max_in_flight"),
            "JOBWATCH__UPSTREAM__MAX_IN_FLIGHT"
        );
        assert_eq!(env_name("api.listen"), "JOBWATCH__API__LISTEN");
    }

    #[test]
    fn this_process_can_be_sampled() {
        let s = proc_sample(std::process::id()).expect("/proc of this process");
        assert!(s.rss_kib > 0 && s.peak_rss_kib >= s.rss_kib, "{s:?}");
        assert!(s.cpu_seconds >= 0.0);
        assert!(s.write_bytes.is_some(), "no write_bytes in /proc/self/io");
    }
}
