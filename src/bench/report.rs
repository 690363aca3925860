//! What the bench found, computed from its raw observations, with the targets of
//! this machine judged where the run can judge them; printed for people or as JSON.

use serde::Serialize;

use super::load::{Ceiling, Ceilings, Ingest};
use super::receiver::Tally;
use super::BenchArgs;
use crate::config::Settings;
use crate::simulator::LoggedRequest;

/// One second of the main run (cumulative counts since the daemon started).
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the ingest ended.
    pub t: f64,
    pub polls: u64,
    pub cpu_seconds: f64,
    pub rss_mib: f64,
    pub delivered: u64,
    /// Watches more than 5 s late for their poll and not yet claimed (`/v1/status`).
    pub backlog: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PollRate {
    pub polls: u64,
    /// Polls per second while the daemon had a backlog (watches late), so that
    /// the rate is its capacity rather than the demand.
    pub sustained_per_second: f64,
    /// Seconds that rate was measured over; 0 when there was never a backlog, and
    /// the rate is then the best 10 s of the run (the demand, not the capacity).
    pub saturated_seconds: f64,
    pub ceiling_per_second: f64,
    pub ratio_to_ceiling: f64,
    /// The daemon's user + system CPU per 1,000 polls, after the ingest.
    pub cpu_seconds_per_1000_polls: f64,
    /// On PostgreSQL: the database server's CPU seconds per 1,000 polls of the
    /// whole run (every `postgres` process of this machine).
    pub store_cpu_seconds_per_1000_polls: Option<f64>,
    /// Bytes the daemon wrote to storage per poll, after the ingest (its WAL, its
    /// database file; absent where the kernel does not count them).
    pub bytes_written_per_poll: Option<f64>,
}

impl PollRate {
    pub fn from_timeline(
        timeline: &[Sample],
        polls_at_ingest_end: u64,
        cpu_at_ingest_end: f64,
        ceiling: &Ceiling,
    ) -> PollRate {
        let (mut polls, mut secs) = (0u64, 0.0f64);
        for w in timeline.windows(2) {
            let busy = |s: &Sample| s.backlog.is_some_and(|o| o > 0);
            if busy(&w[0]) && busy(&w[1]) {
                polls += w[1].polls - w[0].polls;
                secs += w[1].t - w[0].t;
            }
        }
        let sustained = if secs > 0.0 {
            polls as f64 / secs
        } else {
            best_window(timeline, 10.0)
        };
        let last = timeline.last();
        let total = last.map_or(0, |s| s.polls);
        let after = total.saturating_sub(polls_at_ingest_end);
        let cpu = last.map_or(0.0, |s| s.cpu_seconds) - cpu_at_ingest_end;
        PollRate {
            polls: total,
            sustained_per_second: sustained,
            saturated_seconds: secs,
            ceiling_per_second: ceiling.per_second,
            ratio_to_ceiling: sustained / ceiling.per_second.max(1e-9),
            cpu_seconds_per_1000_polls: if after > 0 {
                cpu / (after as f64 / 1000.0)
            } else {
                0.0
            },
            bytes_written_per_poll: None,
            store_cpu_seconds_per_1000_polls: None,
        }
    }
}

/// The highest poll rate over any `secs` of the timeline.
fn best_window(timeline: &[Sample], secs: f64) -> f64 {
    let mut best = 0.0f64;
    for (i, a) in timeline.iter().enumerate() {
        if let Some(b) = timeline[i..].iter().find(|b| b.t - a.t >= secs) {
            best = best.max((b.polls - a.polls) as f64 / (b.t - a.t));
        }
    }
    if best == 0.0 {
        if let (Some(a), Some(b)) = (timeline.first(), timeline.last()) {
            if b.t > a.t {
                best = (b.polls - a.polls) as f64 / (b.t - a.t);
            }
        }
    }
    best
}

#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    /// VmHWM of the daemon at the end of the main run.
    pub peak_rss_mib: f64,
    pub rss_at_end_mib: f64,
    pub ingest_cpu_seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// Nearest rank; `None` for no values.
    pub fn of(values: &[f64]) -> Option<Percentiles> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Some(Percentiles {
            p50: rank(0.50),
            p99: rank(0.99),
            max: v[v.len() - 1],
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub expected: u64,
    pub delivered: u64,
    pub duplicates: u64,
    pub rejected: u64,
    pub first_problem: Option<String>,
    pub by_type: std::collections::BTreeMap<String, u64>,
    /// Seconds from the end of the ingest to the last watch delivered (or the give-up).
    pub seconds: f64,
    /// Milliseconds from the job's end upstream to the webhook's arrival.
    pub from_job_end_ms: Option<Percentiles>,
    /// Milliseconds from the poll that saw the end to the webhook's arrival.
    pub beyond_cadence_ms: Option<Percentiles>,
}

impl Latency {
    pub fn from_tally(t: &Tally, expected: u64, seconds: f64) -> Latency {
        Latency {
            expected,
            delivered: t.distinct,
            duplicates: t.duplicates,
            rejected: t.rejected,
            first_problem: t.first_problem.clone(),
            by_type: t.by_type.clone(),
            seconds,
            from_job_end_ms: Percentiles::of(&t.from_job_end_ms),
            beyond_cadence_ms: Percentiles::of(&t.beyond_cadence_ms),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RateLimited {
    pub watches: u64,
    pub limit_per_second: f64,
    /// Seconds judged: from `--limited-settle` (10 s) after the first request to the end.
    pub judged_seconds: f64,
    pub requests: u64,
    pub answered_429: u64,
    /// Requests answered (not 429) per second, over the judged seconds.
    pub achieved_per_second: f64,
    pub fraction_of_limit: f64,
    pub fraction_429: f64,
    /// 429s before the judged seconds (the start, not judged).
    pub answered_429_while_settling: u64,
}

impl RateLimited {
    pub fn from_log(
        log: &[LoggedRequest],
        watches: u64,
        limit: f64,
        stopped_ms: f64,
        settle: std::time::Duration,
    ) -> RateLimited {
        let first = log.iter().map(|r| r.t_ms).fold(f64::INFINITY, f64::min);
        let from = first + settle.as_secs_f64() * 1000.0;
        let judged: Vec<&LoggedRequest> = log
            .iter()
            .filter(|r| r.t_ms >= from && r.t_ms <= stopped_ms)
            .collect();
        let requests = judged.len() as u64;
        let answered_429 = judged.iter().filter(|r| r.status == 429).count() as u64;
        let answered = judged
            .iter()
            .filter(|r| r.status != 429 && r.status != 0)
            .count() as u64;
        let secs = ((stopped_ms - from) / 1000.0).max(0.0);
        let achieved = if secs > 0.0 {
            answered as f64 / secs
        } else {
            0.0
        };
        RateLimited {
            watches,
            limit_per_second: limit,
            judged_seconds: secs,
            requests,
            answered_429,
            achieved_per_second: achieved,
            fraction_of_limit: achieved / limit,
            fraction_429: if requests > 0 {
                answered_429 as f64 / requests as f64
            } else {
                0.0
            },
            answered_429_while_settling: log
                .iter()
                .filter(|r| r.t_ms < from && r.status == 429)
                .count() as u64,
        }
    }
}

/// One target of issue 7, with whether this run met it (`None`: this run cannot say).
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub name: &'static str,
    pub target: String,
    pub measured: String,
    pub met: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunSettings {
    pub cores: usize,
    pub upstream_max_in_flight: usize,
    pub poller_initial_interval_ms: u128,
    pub poller_max_interval_ms: u128,
    pub poller_growth: f64,
    pub job_min_running_ms: u128,
    pub job_max_running_ms: u128,
    pub daemon_overrides: Vec<String>,
    /// `sqlite`, or `postgres` with this many replicas.
    pub store: String,
    pub replicas: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub watches: u64,
    pub settings: RunSettings,
    pub ingest: Ingest,
    /// The minimal client in a process of its own, as the daemon is: the ceiling
    /// the poll rate is judged by.
    pub ceiling: Ceiling,
    /// The same client in the bench's process, beside the simulator (the ceiling
    /// of sessions 1-5), for reference.
    pub ceiling_in_process: Ceiling,
    /// The ceiling's loops sending each request through the daemon's upstream
    /// client (URL, headers, timeout, the answer parsed), in a process of their
    /// own, for reference: the request path alone, without the claim, the decision
    /// and the store around it.
    pub ceiling_upstream_client: Ceiling,
    pub poll: PollRate,
    pub memory: Memory,
    pub latency: Latency,
    pub rate_limited: Option<RateLimited>,
    pub targets: Vec<Target>,
    pub wall_seconds: f64,
    pub timeline: Vec<Sample>,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        args: &BenchArgs,
        settings: Settings,
        ingest: Ingest,
        ceilings: Ceilings,
        poll: PollRate,
        memory: Memory,
        latency: Latency,
        rate_limited: Option<RateLimited>,
        timeline: Vec<Sample>,
        wall_seconds: f64,
    ) -> Report {
        let n = u64::from(args.watches);
        let mut r = Report {
            watches: n,
            settings: RunSettings {
                cores: std::thread::available_parallelism().map_or(1, |c| c.get()),
                upstream_max_in_flight: settings.upstream.max_in_flight,
                poller_initial_interval_ms: settings.poller.initial_interval.as_millis(),
                poller_max_interval_ms: settings.poller.max_interval.as_millis(),
                poller_growth: settings.poller.growth,
                job_min_running_ms: args.min_running.as_millis(),
                job_max_running_ms: args.max_running.as_millis(),
                daemon_overrides: args.set.clone(),
                store: if args.store == "sqlite" {
                    "sqlite".into()
                } else {
                    "postgres".into()
                },
                replicas: args.replicas,
            },
            ingest,
            ceiling: ceilings.judged,
            ceiling_in_process: ceilings.in_process,
            ceiling_upstream_client: ceilings.upstream_client,
            poll,
            memory,
            latency,
            rate_limited,
            targets: Vec::new(),
            wall_seconds,
            timeline,
        };
        r.targets = r.judge();
        r
    }

    fn judge(&self) -> Vec<Target> {
        let n = self.watches;
        let mut t = Vec::new();
        let rss = self.memory.peak_rss_mib;
        let (rss_target, rss_applies) = if n >= 1_000_000 {
            (300.0, true)
        } else {
            (100.0, n >= 100_000)
        };
        t.push(Target {
            name: "memory",
            target: format!(
                "peak RSS <= {rss_target} MiB at {} watches",
                if n >= 1_000_000 {
                    "1,000,000"
                } else {
                    "100,000"
                }
            ),
            measured: format!("{rss:.1} MiB at {n} watches"),
            met: rss_applies.then_some(rss <= rss_target),
        });
        let saturated = self.poll.saturated_seconds > 0.0;
        t.push(Target {
            name: "poll_rate",
            target: ">= 70% of the measured ceiling".into(),
            measured: format!(
                "{:.0}% ({:.0} of {:.0} polls/s){}",
                self.poll.ratio_to_ceiling * 100.0,
                self.poll.sustained_per_second,
                self.poll.ceiling_per_second,
                if saturated {
                    ""
                } else {
                    "; never saturated: this is the demand"
                }
            ),
            met: saturated.then_some(self.poll.ratio_to_ceiling >= 0.7),
        });
        t.push(Target {
            name: "ingest",
            target: ">= 50,000 ids/s".into(),
            measured: format!("{:.0} ids/s", self.ingest.ids_per_second),
            met: (n >= 10_000).then_some(self.ingest.ids_per_second >= 50_000.0),
        });
        let beyond = self.latency.beyond_cadence_ms.as_ref().map(|p| p.p99);
        t.push(Target {
            name: "latency",
            target: "p99 beyond the cadence <= 250 ms at 10,000 watches".into(),
            measured: beyond.map_or("no deliveries".into(), |p| {
                format!("{p:.0} ms at {n} watches")
            }),
            met: beyond.filter(|_| n <= 10_000).map(|p| p <= 250.0),
        });
        if let Some(rl) = &self.rate_limited {
            t.push(Target {
                name: "rate_limited",
                target: ">= 90% of the limit used, <= 1% answered 429 after the first 10 s".into(),
                measured: format!(
                    "{:.1}% of {}/s, {:.2}% answered 429",
                    rl.fraction_of_limit * 100.0,
                    rl.limit_per_second,
                    rl.fraction_429 * 100.0
                ),
                met: Some(rl.fraction_of_limit >= 0.9 && rl.fraction_429 <= 0.01),
            });
        }
        t
    }

    /// Did the run finish its work: every watch delivered, nothing rejected, and the
    /// rate-limited run (when asked for) polled?
    pub fn complete(&self) -> bool {
        self.latency.delivered == self.latency.expected
            && self.latency.rejected == 0
            && self
                .rate_limited
                .as_ref()
                .is_none_or(|rl| rl.requests > 0 && rl.achieved_per_second > 0.0)
    }

    pub fn print(&self) {
        let s = &self.settings;
        println!(
            "jobwatch bench: {} watches on {} cores (upstream.max_in_flight {}, cadence {} ms growing x{} to {} ms; jobs run {}-{} ms)",
            self.watches,
            s.cores,
            s.upstream_max_in_flight,
            s.poller_initial_interval_ms,
            s.poller_growth,
            s.poller_max_interval_ms,
            s.job_min_running_ms,
            s.job_max_running_ms
        );
        if !s.daemon_overrides.is_empty() {
            println!("  daemon settings:  {}", s.daemon_overrides.join(" "));
        }
        let i = &self.ingest;
        println!(
            "  ingest:           {} ids in {:.2} s = {:.0} ids/s acknowledged (202, durable); {} POSTs of {}, {} at once",
            i.ids, i.seconds, i.ids_per_second, i.posts, i.chunk, i.concurrency
        );
        let p = &self.poll;
        println!(
            "  poll rate:        {:.0} polls/s sustained{}; ceiling {:.0}/s (minimal client in its own process, {} in flight; measured {}): {:.0}%",
            p.sustained_per_second,
            if p.saturated_seconds > 0.0 {
                format!(" (over {:.0} s with a backlog)", p.saturated_seconds)
            } else {
                " (best 10 s; never saturated, so this is the demand)".into()
            },
            p.ceiling_per_second,
            self.ceiling.concurrency,
            self.ceiling
                .measured
                .iter()
                .map(|m| format!("{m:.0}"))
                .collect::<Vec<_>>()
                .join(" and "),
            p.ratio_to_ceiling * 100.0
        );
        let here = &self.ceiling_in_process;
        println!(
            "                    the same client in the bench's process, beside the simulator: {:.0}/s ({:.0}% of it)",
            here.per_second,
            p.sustained_per_second / here.per_second.max(1e-9) * 100.0
        );
        let us = |c: &Ceiling| {
            c.process_cpu_us_per_request
                .map_or("-".to_string(), |u| format!("{u:.1} us"))
        };
        let via = &self.ceiling_upstream_client;
        println!(
            "                    the daemon's upstream client alone (its own process, nothing stored): {:.0}/s ({:.0}% of the ceiling), {} per request",
            via.per_second,
            via.per_second / p.ceiling_per_second.max(1e-9) * 100.0,
            us(via)
        );
        println!(
            "  daemon CPU:       {:.3} s per 1,000 polls ({} polls in all); ingest took {:.2} CPU s; the minimal client: {} per request ({} with the simulator, in one process)",
            p.cpu_seconds_per_1000_polls,
            p.polls,
            self.memory.ingest_cpu_seconds,
            us(&self.ceiling),
            us(here)
        );
        if let Some(b) = p.bytes_written_per_poll {
            println!("  daemon disk:      {b:.0} bytes written per poll, after the ingest");
        }
        if let Some(c) = p.store_cpu_seconds_per_1000_polls {
            println!(
                "  store CPU:        {c:.3} s per 1,000 polls (PostgreSQL's processes, {} replica(s))",
                self.settings.replicas
            );
        }
        println!(
            "  daemon memory:    peak RSS {:.1} MiB (VmHWM), {:.1} MiB at the end",
            self.memory.peak_rss_mib, self.memory.rss_at_end_mib
        );
        let l = &self.latency;
        let fmt = |p: &Option<Percentiles>| {
            p.as_ref().map_or("-".to_string(), |p| {
                format!(
                    "p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
                    p.p50, p.p99, p.max
                )
            })
        };
        println!("  job end -> hook:  {}", fmt(&l.from_job_end_ms));
        println!(
            "  poll -> hook:     {} (beyond the cadence)",
            fmt(&l.beyond_cadence_ms)
        );
        println!(
            "  delivered:        {}/{} watches in {:.1} s after the ingest ({} redelivered, {} refused){}",
            l.delivered,
            l.expected,
            l.seconds,
            l.duplicates,
            l.rejected,
            l.first_problem
                .as_ref()
                .map_or(String::new(), |p| format!("; first problem: {p}"))
        );
        if let Some(rl) = &self.rate_limited {
            println!(
                "  rate-limited:     {} watches, limit {}/s: {:.1}/s answered over the judged {:.0} s = {:.1}% of the limit; {} of {} requests answered 429 ({:.2}%); {} 429s before",
                rl.watches,
                rl.limit_per_second,
                rl.achieved_per_second,
                rl.judged_seconds,
                rl.fraction_of_limit * 100.0,
                rl.answered_429,
                rl.requests,
                rl.fraction_429 * 100.0,
                rl.answered_429_while_settling
            );
        }
        println!("targets:");
        for t in &self.targets {
            let mark = match t.met {
                Some(true) => "met   ",
                Some(false) => "MISSED",
                None => "n/a   ",
            };
            println!(
                "  {mark} {:<13} {} (target {})",
                t.name, t.measured, t.target
            );
        }
        println!("wall time {:.0} s", self.wall_seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logged(t_ms: f64, status: u16) -> LoggedRequest {
        LoggedRequest {
            t_ms,
            method: "GET".into(),
            path: "/".into(),
            status,
            retry_after_ms: None,
        }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = Percentiles::of(&v).unwrap();
        assert_eq!((p.p50, p.p99, p.max), (50.0, 99.0, 100.0));
        assert!(Percentiles::of(&[]).is_none());
    }

    #[test]
    fn the_rate_limited_run_is_judged_after_it_settles() {
        // 10 s of 429s at the start, then 100 answered and 1 refused per second for 10 s.
        let mut log: Vec<LoggedRequest> =
            (0..50).map(|i| logged(f64::from(i) * 200.0, 429)).collect();
        for s in 10..20 {
            for k in 0..100 {
                log.push(logged(f64::from(s) * 1000.0 + f64::from(k) * 9.0, 200));
            }
            log.push(logged(f64::from(s) * 1000.0 + 950.0, 429));
        }
        let rl = RateLimited::from_log(
            &log,
            10,
            100.0,
            20_000.0,
            std::time::Duration::from_secs(10),
        );
        assert_eq!(rl.answered_429_while_settling, 50);
        assert_eq!(rl.requests, 1010);
        assert_eq!(rl.answered_429, 10);
        assert!((rl.fraction_of_limit - 1.0).abs() < 1e-9, "{rl:?}");
        assert!((rl.fraction_429 - 10.0 / 1010.0).abs() < 1e-9);
    }

    #[test]
    fn the_sustained_rate_counts_only_seconds_with_a_backlog() {
        let s = |t: f64, polls: u64, backlog: Option<i64>| Sample {
            t,
            polls,
            cpu_seconds: t / 10.0,
            rss_mib: 1.0,
            delivered: 0,
            backlog,
        };
        // 1000/s while overdue, then 100/s once the backlog is gone.
        let tl = vec![
            s(0.0, 0, Some(5)),
            s(1.0, 1000, Some(5)),
            s(2.0, 2000, Some(3)),
            s(3.0, 2100, Some(0)),
            s(4.0, 2200, Some(0)),
        ];
        let ceiling = Ceiling {
            concurrency: 1,
            seconds: 1.0,
            requests: 2000,
            per_second: 2000.0,
            measured: vec![2000.0],
            process_cpu_us_per_request: None,
        };
        let p = PollRate::from_timeline(&tl, 0, 0.0, &ceiling);
        assert_eq!(p.saturated_seconds, 2.0);
        assert_eq!(p.sustained_per_second, 1000.0);
        assert_eq!(p.ratio_to_ceiling, 0.5);
        assert!((p.cpu_seconds_per_1000_polls - 0.4 / 2.2).abs() < 1e-9);
    }
}
