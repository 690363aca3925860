//! Issue 6: the client commands (`watch`, `wait`, `status`) and `demo`, run as the real
//! binary against a live daemon and simulator started in this process.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt as _;
use tokio::process::Command;

use crate::helpers::*;

/// One run of the binary.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `jobwatch ARGS` with `stdin` as its standard input; fails the test after `secs`.
async fn jobwatch_in(
    args: &[&str],
    stdin: Option<&str>,
    cwd: Option<&std::path::Path>,
    secs: u64,
) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jobwatch"));
    cmd.args(args)
        .env_remove("JOBWATCH_SERVER")
        .env_remove("JOBWATCH_TOKEN")
        .env_remove("RUST_LOG")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let mut child = cmd.spawn().expect("spawn jobwatch");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        pipe.write_all(text.as_bytes()).await.expect("write stdin");
        drop(pipe);
    }
    let out = tokio::time::timeout(Duration::from_secs(secs), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("jobwatch {args:?} still running after {secs}s"))
        .expect("jobwatch output");
    Run {
        code: out.status.code().expect("exited, not killed by a signal"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn jobwatch(args: &[&str]) -> Run {
    jobwatch_in(args, None, None, 60).await
}

/// A daemon on a fast simulator.
async fn live(extra: &[(&str, &str)]) -> (Sim, tempfile::TempDir, App) {
    let sim = Sim::start(Sim::fast()).await;
    let (dir, db) = temp_db();
    let app = App::start(settings(&db, &sim.url, extra)).await;
    (sim, dir, app)
}

/// `wait --watch --kind copy IDS --server URL [more]`.
async fn wait_for(app: &App, ids: &[&str], more: &[&str]) -> Run {
    let mut args = vec!["wait", "--watch", "--kind", "copy", "--server", &app.url];
    args.extend_from_slice(more);
    args.extend_from_slice(ids);
    jobwatch(&args).await
}

#[tokio::test]
async fn wait_exits_0_and_prints_a_line_per_id_when_every_job_succeeds() {
    let (_sim, _dir, app) = live(&[]).await;
    let run = wait_for(&app, &["succeed-a", "succeed-b", "done-c"], &[]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let mut lines: Vec<&str> = run.stdout.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            "copy/done-c succeeded",
            "copy/succeed-a succeeded",
            "copy/succeed-b succeeded"
        ],
        "{run:?}"
    );
    assert!(run.stderr.contains("3 new"), "{run:?}");
}

#[tokio::test]
async fn wait_exits_1_when_a_job_failed() {
    let (_sim, _dir, app) = live(&[]).await;
    let run = wait_for(&app, &["succeed-a", "failed-b"], &[]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.contains("copy/failed-b failed"), "{run:?}");
    assert!(run.stdout.contains("copy/succeed-a succeeded"), "{run:?}");
}

#[tokio::test]
async fn wait_exits_2_when_its_own_timeout_passes_first() {
    let (_sim, _dir, app) = live(&[]).await;
    let started = std::time::Instant::now();
    let run = wait_for(&app, &["running-a"], &["--timeout", "1s"]).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stdout.contains("copy/running-a timed_out"), "{run:?}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    // The client gave up; the watch goes on in the daemon.
    let (_, w) = app.get("/v1/jobs/copy/running-a").await;
    assert!(w["outcome"].is_null(), "{w}");
}

#[tokio::test]
async fn wait_exits_3_when_the_job_is_not_found() {
    let (_sim, _dir, app) = live(&[]).await;
    let run = wait_for(&app, &["notfound-a"], &[]).await;
    assert_eq!(run.code, 3, "{run:?}");
    assert!(run.stdout.contains("copy/notfound-a not_found"), "{run:?}");
}

#[tokio::test]
async fn wait_exits_4_when_the_upstream_rejects_the_id() {
    let (_sim, _dir, app) = live(&[]).await;
    let run = wait_for(&app, &["badrequest-a"], &[]).await;
    assert_eq!(run.code, 4, "{run:?}");
    assert!(run.stdout.contains("copy/badrequest-a rejected"), "{run:?}");
}

#[tokio::test]
async fn wait_exits_5_when_the_watch_was_cancelled() {
    let (_sim, _dir, app) = live(&[]).await;
    let (status, body) = app
        .post_jobs(json!({"kind": "copy", "ids": ["running-a"]}))
        .await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = app.delete("/v1/jobs/copy/running-a").await;
    assert_eq!(status, 200, "{body}");
    let run = jobwatch(&["wait", "--kind", "copy", "--server", &app.url, "running-a"]).await;
    assert_eq!(run.code, 5, "{run:?}");
    assert!(run.stdout.contains("copy/running-a cancelled"), "{run:?}");
}

#[tokio::test]
async fn mixed_outcomes_exit_with_the_most_severe_in_the_documented_order() {
    let (_sim, _dir, app) = live(&[]).await;
    // failed > rejected > not_found > timed_out > cancelled.
    let run = wait_for(&app, &["notfound-a", "failed-b", "succeed-c"], &[]).await;
    assert_eq!(run.code, 1, "failed wins over not_found: {run:?}");
    let run = wait_for(&app, &["notfound-d", "badrequest-e"], &[]).await;
    assert_eq!(run.code, 4, "rejected wins over not_found: {run:?}");
    let run = wait_for(&app, &["notfound-f", "running-g"], &["--timeout", "3s"]).await;
    assert_eq!(run.code, 3, "not_found wins over timed_out: {run:?}");
    assert!(run.stderr.contains("1 not_found, 1 timed_out"), "{run:?}");
}

#[tokio::test]
async fn an_unreachable_daemon_exits_69() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let server = format!("http://127.0.0.1:{port}");
    let started = std::time::Instant::now();
    let run = jobwatch(&["wait", "--kind", "copy", "--server", &server, "a", "b", "c"]).await;
    assert_eq!(run.code, 69, "{run:?}");
    assert!(run.stderr.contains("cannot connect"), "{run:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "gave up only after {:?}",
        started.elapsed()
    );
    for args in [
        vec!["watch", "--kind", "copy", "--server", &server, "a"],
        vec!["status", "--server", &server],
    ] {
        let run = jobwatch(&args).await;
        assert_eq!(run.code, 69, "{args:?}: {run:?}");
    }
    let run = jobwatch(&["healthcheck", "--server", &server]).await;
    assert_eq!(run.code, 1, "{run:?}");
}

#[tokio::test]
async fn bad_usage_exits_64() {
    let (_sim, _dir, app) = live(&[]).await;
    let cases: Vec<Vec<&str>> = vec![
        vec![],
        vec!["wait", "a"],                                        // no --kind
        vec!["wait", "--kind", "bogus", "a"],                     // unknown kind
        vec!["wait", "--kind", "copy"],                           // no ids
        vec!["wait", "--kind", "copy", "--timeout", "soon", "a"], // bad duration
        vec!["wait", "--kind", "copy", "--frobnicate", "a"],      // unknown flag
        vec!["watch", "--kind", "copy", "--metadata", "[1]", "a"],
        vec!["status", "--server", "not a url"],
        vec!["nonsense"],
    ];
    for args in cases {
        let run = jobwatch(&args).await;
        assert_eq!(run.code, 64, "{args:?}: {run:?}");
        assert!(!run.stderr.is_empty(), "{args:?} says why: {run:?}");
    }
    // Ids the API would refuse, and ids the daemon is not watching.
    let run = jobwatch(&["wait", "--kind", "copy", "--server", &app.url, "a/b"]).await;
    assert_eq!(run.code, 64, "{run:?}");
    let run = jobwatch(&[
        "wait",
        "--kind",
        "copy",
        "--server",
        &app.url,
        "never-posted",
    ])
    .await;
    assert_eq!(run.code, 64, "{run:?}");
    assert!(
        run.stdout.contains("copy/never-posted not_watched"),
        "{run:?}"
    );
    // A POST the daemon refuses: a webhook URL without webhooks.signing_secret.
    let run = jobwatch(&[
        "watch",
        "--kind",
        "copy",
        "--server",
        &app.url,
        "--webhook",
        "http://127.0.0.1:9/hook",
        "a",
    ])
    .await;
    assert_eq!(run.code, 64, "{run:?}");
    assert!(run.stderr.contains("signing_secret"), "{run:?}");
    // Help is not an error.
    assert_eq!(jobwatch(&["wait", "--help"]).await.code, 0);
}

#[tokio::test]
async fn wait_help_documents_the_exit_codes() {
    let run = jobwatch(&["wait", "--help"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    for want in [
        "Exit codes",
        "64",
        "69",
        "failed (1) > rejected (4) > not_found (3)",
    ] {
        assert!(
            run.stdout.contains(want),
            "{want:?} missing: {}",
            run.stdout
        );
    }
}

#[tokio::test]
async fn a_refused_token_exits_77_and_the_right_one_works() {
    let (_sim, _dir, app) = live(&[("api.token", "s3cret-token")]).await;
    let run = wait_for(&app, &["succeed-a"], &[]).await;
    assert_eq!(run.code, 77, "{run:?}");
    let run = wait_for(&app, &["succeed-a"], &["--token", "s3cret-token"]).await;
    assert_eq!(run.code, 0, "{run:?}");
}

#[tokio::test]
async fn watch_posts_ids_from_arguments_and_stdin_in_batches() {
    let (_sim, _dir, app) = live(&[("api.max_ids_per_request", "3")]).await;
    let args = [
        "watch",
        "--kind",
        "delete",
        "--server",
        &app.url,
        "--timeout",
        "1h",
    ];
    let mut with_ids = args.to_vec();
    with_ids.extend(["succeed-1", "-"]);
    // 7 ids against a limit of 3 per request: the client halves its batches until they fit.
    let run = jobwatch_in(
        &with_ids,
        Some("succeed-2 succeed-3\nsucceed-4\n succeed-5 succeed-6 succeed-1 succeed-7\n"),
        None,
        60,
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.stdout.trim(),
        "delete: 7 new, 0 already watched",
        "{run:?}"
    );
    let mut again = args.to_vec();
    again.extend(["succeed-1", "succeed-8"]);
    let run = jobwatch(&again).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.stdout.trim(),
        "delete: 1 new, 1 already watched",
        "{run:?}"
    );
    let (_, w) = app.get("/v1/jobs/delete/succeed-7").await;
    assert!(w["deadline"].is_string(), "--timeout sets a deadline: {w}");
}

#[tokio::test]
async fn status_json_is_the_daemons_json_with_every_section() {
    let (_sim, _dir, app) = live(&[]).await;
    let run = wait_for(&app, &["succeed-a", "succeed-b", "failed-c"], &[]).await;
    assert_eq!(run.code, 1, "{run:?}");
    let run = jobwatch(&["status", "--json", "--server", &app.url]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let s: Value = serde_json::from_str(&run.stdout).expect("status --json is JSON");
    for section in ["watches", "upstream", "webhooks"] {
        assert!(s[section].is_object(), "no {section}: {s}");
    }
    assert_eq!(s["watches"]["ended_by_outcome"]["succeeded"], 2, "{s}");
    assert_eq!(s["watches"]["ended_by_outcome"]["failed"], 1, "{s}");
    assert_eq!(s["watches"]["running"], 0, "{s}");
}

#[tokio::test]
async fn status_prints_a_table_with_the_counts() {
    let (_sim, _dir, app) = live(&[]).await;
    let run = wait_for(&app, &["succeed-a", "succeed-b", "failed-c"], &[]).await;
    assert_eq!(run.code, 1, "{run:?}");
    let (status, body) = app
        .post_jobs(json!({"kind": "copy", "ids": ["running-x"]}))
        .await;
    assert_eq!(status, 202, "{body}");
    let run = jobwatch(&["status", "--server", &app.url]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let row = |label: &str| -> Vec<String> {
        run.stdout
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("no {label:?} row in\n{}", run.stdout))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(row("succeeded"), ["succeeded", "2"], "{}", run.stdout);
    assert_eq!(row("failed"), ["failed", "1"], "{}", run.stdout);
    assert_eq!(row("ended"), ["ended", "3"], "{}", run.stdout);
    assert_eq!(row("running"), ["running", "1"], "{}", run.stdout);
    for section in [
        "Watches",
        "Upstream",
        "Webhook deliveries",
        "oldest running",
    ] {
        assert!(run.stdout.contains(section), "{section}: {}", run.stdout);
    }
    assert!(run.stdout.contains("copy/running-x"), "{}", run.stdout);
    let run = jobwatch(&["healthcheck", "--server", &app.url, "--ready"]).await;
    assert_eq!(run.code, 0, "{run:?}");
}

#[tokio::test]
async fn the_demo_runs_to_its_summary_and_exits_0() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A stale file from an earlier tour is replaced, not reused.
    std::fs::write(dir.path().join("jobwatch-demo.db"), b"not a database").expect("write");
    let run = jobwatch_in(
        &[
            "demo",
            "--exit-when-done",
            "--jobs",
            "120",
            "--deadline",
            "90s",
        ],
        None,
        Some(dir.path()),
        120,
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    let out = &run.stdout;
    assert!(
        out.contains("Tour complete") && out.contains("all 120 outcomes delivered and verified"),
        "{out}"
    );
    let verified = out
        .lines()
        .find(|l| l.trim_start().starts_with("verified"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("no verified row: {out}"));
    assert_eq!(verified, "120", "{out}");
    let failed = out
        .lines()
        .find(|l| l.trim_start().starts_with("failed verification"))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or_else(|| panic!("no failed verification row: {out}"));
    assert_eq!(failed, "0", "{out}");
    for outcome in ["succeeded", "failed", "not_found", "rejected", "timed_out"] {
        assert!(
            out.lines().any(|l| {
                let words: Vec<&str> = l.split_whitespace().collect();
                words.len() == 2
                    && words[0] == outcome
                    && words[1].parse::<u32>().is_ok_and(|n| n > 0)
            }),
            "no {outcome} count in the summary: {out}"
        );
    }
    assert!(out.contains("job end -> webhook arrival: p50"), "{out}");
    assert!(
        dir.path()
            .join("jobwatch-demo.db")
            .metadata()
            .expect("db")
            .len()
            > 1000,
        "the demo's store is in the current directory"
    );
}

/// `TOKIO_WORKER_THREADS` sets the daemon's worker threads (README, Settings): a
/// value that is not a count is refused by name, as a usage error, by every
/// command (tokio itself would panic on it).
#[tokio::test]
async fn a_worker_thread_count_that_is_not_a_count_is_refused_by_name() {
    for bad in ["lots", "0", "-2", ""] {
        let out = Command::new(env!("CARGO_BIN_EXE_jobwatch"))
            .args(["status", "--server", "http://127.0.0.1:9"])
            .env("TOKIO_WORKER_THREADS", bad)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .output()
            .await
            .expect("run jobwatch");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{bad:?}: {stderr}");
        assert!(
            stderr.contains("TOKIO_WORKER_THREADS") && !stderr.contains("panicked"),
            "{bad:?}: {stderr}"
        );
    }
    // A count is taken: the command runs (and finds no daemon there: 69).
    let out = Command::new(env!("CARGO_BIN_EXE_jobwatch"))
        .args(["status", "--server", "http://127.0.0.1:9"])
        .env("TOKIO_WORKER_THREADS", "3")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run jobwatch");
    assert_eq!(out.status.code(), Some(69), "{out:?}");
}
