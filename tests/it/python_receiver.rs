//! Issue 3: a receiver built on the reference `standardwebhooks` package
//! (`tests/receiver/verify_receiver.py`, run unchanged with `python3`) verifies every
//! delivery jobwatch makes, to a configured endpoint and to a per-watch URL, retries
//! included. Needs `pip install -r tests/receiver/requirements.txt`.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use jobwatch::webhook::sign::SigningSecret;
use serde_json::{json, Value};
use tokio::process::{Child, Command};

use crate::helpers::*;
use crate::webhooks::{Endpoint, Hooks};

/// The Python receiver as a child process; killed when dropped.
struct PyReceiver {
    child: Child,
    port: u16,
    out: PathBuf,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl PyReceiver {
    async fn start(secret: &SigningSecret, fail_first: u32) -> PyReceiver {
        let dir = tempfile::tempdir().expect("tempdir");
        let port_file = dir.path().join("port");
        let out = dir.path().join("received.jsonl");
        let stderr = dir.path().join("stderr.txt");
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/receiver/verify_receiver.py");
        let mut child = Command::new("python3")
            .arg(&script)
            .arg("--secret")
            .arg(secret.to_whsec())
            .arg("--port-file")
            .arg(&port_file)
            .arg("--out")
            .arg(&out)
            .arg("--fail-first")
            .arg(fail_first.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .kill_on_drop(true)
            .spawn()
            .expect(
                "python3 runs (install it, then `pip install -r tests/receiver/requirements.txt`)",
            );
        let deadline = Instant::now() + Duration::from_secs(15);
        let port = loop {
            if let Some(port) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|s| s.trim().parse::<u16>().ok())
            {
                break port;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "verify_receiver.py exited with {status} before listening \
                     (is `standardwebhooks` installed? pip install -r tests/receiver/requirements.txt): {}",
                    std::fs::read_to_string(&stderr).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "verify_receiver.py wrote no port within 15 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        PyReceiver {
            child,
            port,
            out,
            stderr,
            _dir: dir,
        }
    }

    /// Every request it received so far, as it recorded them.
    fn lines(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("the receiver writes JSON lines"))
            .collect()
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// Waits until `py` recorded `n` deliveries (answered 204), then checks what the
/// reference library said of every request: all verified, retries under the
/// webhook-id of their delivery, one webhook-id per delivery. Returns the deliveries.
async fn verified_deliveries(py: &PyReceiver, n: usize, failures: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let lines = loop {
        let lines = py.lines();
        if let Some(refused) = lines.iter().find(|l| l["verified"] != true) {
            panic!("refused by standardwebhooks: {refused}");
        }
        if lines.iter().filter(|l| l["status"] == 204).count() >= n {
            break lines;
        }
        assert!(
            Instant::now() < deadline,
            "{n} deliveries not verified within 20 s: {lines:#?}\nstderr: {}",
            std::fs::read_to_string(&py.stderr).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for l in &lines {
        assert_eq!(l["verified"], true, "refused by standardwebhooks: {l}");
        assert!(l.get("error").is_none(), "{l}");
    }
    let delivered: Vec<Value> = lines
        .iter()
        .filter(|l| l["status"] == 204)
        .cloned()
        .collect();
    let retried: Vec<&Value> = lines.iter().filter(|l| l["status"] == 500).collect();
    assert_eq!(delivered.len(), n, "{lines:#?}");
    assert_eq!(retried.len(), failures, "{lines:#?}");
    let ids: HashSet<&str> = delivered
        .iter()
        .map(|l| l["webhook_id"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(ids.len(), n, "one webhook-id per event and endpoint");
    for l in &retried {
        let id = l["webhook_id"].as_str().unwrap_or_default();
        assert!(ids.contains(id), "a retry came under a new webhook-id: {l}");
    }
    delivered
}

fn count(lines: &[Value], f: impl Fn(&Value) -> bool) -> usize {
    lines.iter().filter(|l| f(l)).count()
}

#[tokio::test]
async fn the_reference_standardwebhooks_receiver_verifies_every_delivery() {
    let sim = Sim::start(Sim::fast()).await;
    // The per-watch secret and the endpoint's own secret, each checked by its receiver.
    let watch_secret = SigningSecret::generate();
    let endpoint_secret = SigningSecret::generate();
    let py_watch = PyReceiver::start(&watch_secret, 2).await;
    let py_endpoint = PyReceiver::start(&endpoint_secret, 1).await;
    let per_watch = format!("http://127.0.0.1:{}/watch", py_watch.port);
    let endpoint = format!("http://127.0.0.1:{}/endpoint", py_endpoint.port);
    let hooks = Hooks::new(
        &watch_secret,
        &["100ms"; 5],
        &[Endpoint {
            url: &endpoint,
            secret: &endpoint_secret,
            events: None,
        }],
        true,
    );
    let app = hooks.start(&sim).await;
    // Non-ASCII in the body: the signature covers the exact bytes sent.
    let (status, body) = app
        .post_jobs(json!({
            "kind": "delete",
            "ids": ["succeed-py1", "failed-py2", "doneerr-py3"],
            "webhook_url": per_watch,
            "metadata": {"owner": "équipe ✓", "ticket": 42},
        }))
        .await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = app
        .post_jobs(json!({"kind": "copy", "ids": ["succeed-py4"]}))
        .await;
    assert_eq!(status, 202, "{body}");

    // 3 events to the per-watch URL, 4 to the endpoint; the first requests fail.
    let watch = verified_deliveries(&py_watch, 3, 2).await;
    let endpoint = verified_deliveries(&py_endpoint, 4, 1).await;
    let succeeded = |l: &Value| l["type"] == "job.succeeded";
    let failed = |l: &Value| l["type"] == "job.failed";
    assert_eq!((count(&watch, succeeded), count(&watch, failed)), (1, 2));
    assert_eq!(
        (count(&endpoint, succeeded), count(&endpoint, failed)),
        (2, 2)
    );
    let with_metadata = |l: &Value| l["body"]["data"]["metadata"]["owner"] == "équipe ✓";
    assert_eq!(count(&watch, with_metadata), 3, "{watch:#?}");
    assert_eq!(count(&endpoint, with_metadata), 3, "{endpoint:#?}");

    let (_, s) = app.get("/v1/status").await;
    assert_eq!(s["webhooks"]["deliveries"]["dead"], 0, "{s}");
    app.stop().await;
    py_watch.stop().await;
    py_endpoint.stop().await;
}
