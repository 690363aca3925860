//! `jobwatch status`: `GET /v1/status` as a readable table, or unchanged with `--json`.
//! The table reads fields by name and shows `-` for any it does not find, so a daemon of
//! another version still gets a table.

use std::fmt::Write as _;

use serde_json::Value;

use super::{code, CliError, Client, ServerArgs};

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub server: ServerArgs,

    /// Print the daemon's JSON unchanged (for scripts).
    #[arg(long)]
    pub json: bool,
}

pub async fn status(args: StatusArgs) -> Result<u8, CliError> {
    let client = Client::new(&args.server)?;
    let text = client
        .status_text()
        .await?
        .map_err(|r| r.into_error("GET /v1/status"))?;
    if args.json {
        print!("{text}");
        if !text.ends_with('\n') {
            println!();
        }
        return Ok(code::SUCCEEDED);
    }
    let value: Value = serde_json::from_str(&text).map_err(|e| {
        CliError::Unavailable(format!("GET /v1/status: the answer is not JSON: {e}"))
    })?;
    print!("{}", render(&value, client.base().as_str()));
    Ok(code::SUCCEEDED)
}

#[derive(clap::Args, Debug)]
pub struct HealthcheckArgs {
    #[command(flatten)]
    pub server: ServerArgs,

    /// Ask GET /readyz (the store answers and the upstream credentials are not known bad)
    /// instead of GET /healthz (the process is alive).
    #[arg(long)]
    pub ready: bool,
}

/// One quick request, no retries: a container runtime retries on its own schedule, and it
/// reads 0 as healthy and 1 as unhealthy (other codes are reserved there).
pub async fn healthcheck(args: HealthcheckArgs) -> Result<u8, CliError> {
    let client = Client::new(&args.server)?;
    let path = if args.ready { "readyz" } else { "healthz" };
    match client.probe(path).await {
        Ok(()) => Ok(code::SUCCEEDED),
        Err(why) => {
            eprintln!("jobwatch: GET /{path}: {why}");
            Ok(1)
        }
    }
}

/// Rows of `label  value`, in sections, the labels padded to one column.
struct Table {
    rows: Vec<(String, String)>,
}

impl Table {
    fn section(&mut self, title: &str) {
        if !self.rows.is_empty() {
            self.rows.push((String::new(), String::new()));
        }
        self.rows.push((title.to_owned(), String::new()));
    }

    fn row(&mut self, label: impl Into<String>, value: impl Into<String>) {
        self.rows
            .push((format!("  {}", label.into()), value.into()));
    }

    fn render(&self) -> String {
        let width = self
            .rows
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(l, _)| l.chars().count())
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        for (label, value) in &self.rows {
            if value.is_empty() {
                let _ = writeln!(out, "{label}");
            } else {
                let _ = writeln!(out, "{label:<width$}  {value}");
            }
        }
        out
    }
}

fn num(v: &Value) -> String {
    match v {
        Value::Number(n) => n.to_string(),
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn float(v: &Value, decimals: usize) -> String {
    v.as_f64()
        .map(|f| format!("{f:.decimals$}"))
        .unwrap_or_else(|| "-".into())
}

/// `{"a": 1, "b": 2}` as indented rows, largest first.
fn counts(t: &mut Table, v: &Value, indent: &str) {
    let Some(map) = v.as_object() else {
        t.row(format!("{indent}-"), "-");
        return;
    };
    let mut entries: Vec<(&String, &Value)> = map.iter().collect();
    entries.sort_by_key(|(k, v)| (std::cmp::Reverse(v.as_i64().unwrap_or(0)), (*k).clone()));
    for (k, v) in entries {
        t.row(format!("{indent}{k}"), num(v));
    }
}

pub fn render(s: &Value, server: &str) -> String {
    let mut t = Table { rows: Vec::new() };
    let w = &s["watches"];
    t.section("Watches");
    t.row("running", num(&w["running"]));
    counts(&mut t, &w["running_by_state"], "  ");
    let ended: i64 = w["ended_by_outcome"]
        .as_object()
        .map(|m| m.values().filter_map(Value::as_i64).sum())
        .unwrap_or(0);
    t.row("ended", ended.to_string());
    counts(&mut t, &w["ended_by_outcome"], "  ");
    t.row("overdue for a poll", num(&w["overdue"]));
    let oldest = &w["oldest_running"];
    t.row(
        "oldest running",
        if oldest.is_null() {
            "-".to_owned()
        } else {
            format!(
                "{}/{} (watched {}, {} ago)",
                num(&oldest["kind"]),
                num(&oldest["id"]),
                num(&oldest["watched_at"]),
                oldest["age_seconds"]
                    .as_f64()
                    .map(human_secs)
                    .unwrap_or_else(|| "-".into())
            )
        },
    );

    let u = &s["upstream"];
    t.section("Upstream");
    t.row(
        "paused until",
        match &u["paused_until"] {
            Value::Null => "not paused".to_owned(),
            v => num(v),
        },
    );
    let mut credentials = num(&u["credentials"]);
    if let Some(code) = u["credentials_status"].as_u64() {
        credentials.push_str(&format!(" (last answer {code})"));
    }
    t.row("credentials", credentials);
    t.row("429s, last minute", num(&u["rate_limited_last_minute"]));
    t.row(
        "error ratio, last minute",
        u["error_ratio_last_minute"]
            .as_f64()
            .map(|r| format!("{:.1}%", r * 100.0))
            .unwrap_or_else(|| "-".into()),
    );
    t.row(
        "poll rate",
        format!(
            "{}/s (allowed {}/s of {}/s configured)",
            float(&u["polls_per_second"], 1),
            float(&u["allowed_rate"], 1),
            float(&u["configured_rate"], 1)
        ),
    );
    t.row("requests in flight", num(&u["in_flight"]));
    t.row(
        "totals",
        format!(
            "{} answers, {} rate limited, {} errors, {}s paused",
            num(&u["total_answers"]),
            num(&u["total_rate_limited"]),
            num(&u["total_errors"]),
            float(&u["paused_seconds_total"], 1)
        ),
    );

    let h = &s["webhooks"];
    t.section("Webhook deliveries");
    t.row("backlog (pending + retrying)", num(&h["backlog"]));
    let d = &h["deliveries"];
    for status in ["pending", "retrying", "delivered", "dead", "gone"] {
        t.row(status, num(&d[status]));
    }

    t.section("Daemon");
    t.row("server", server.trim_end_matches('/'));
    t.row("store", num(&s["store"]["url"]));
    t.row(
        "uptime",
        s["uptime_seconds"]
            .as_f64()
            .map(human_secs)
            .unwrap_or_else(|| "-".into()),
    );
    t.row("version", num(&s["version"]));
    t.render()
}

/// `3h 12m`, `4m 05s`, `12.3s`.
fn human_secs(secs: f64) -> String {
    if secs < 60.0 {
        return format!("{secs:.1}s");
    }
    let s = secs as u64;
    match (s / 86_400, (s % 86_400) / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, m, s) => format!("{m}m {s:02}s"),
        (0, h, m, _) => format!("{h}h {m:02}m"),
        (d, h, _, _) => format!("{d}d {h:02}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_table_shows_every_section_and_tolerates_missing_fields() {
        let s = json!({
            "watches": {"running": 3, "running_by_state": {"RUNNING": 2, "PENDING": 1},
                        "ended_by_outcome": {"succeeded": 10, "failed": 2}, "overdue": 0,
                        "oldest_running": {"kind": "copy", "id": "a1", "watched_at": "t", "age_seconds": 75.0}},
            "upstream": {"paused_until": null, "credentials": "ok", "error_ratio_last_minute": 0.25},
            "webhooks": {"backlog": 1, "deliveries": {"pending": 1, "delivered": 11}},
        });
        let out = render(&s, "http://127.0.0.1:8080/");
        for want in [
            "Watches",
            "running",
            "RUNNING",
            "ended",
            "12",
            "succeeded",
            "10",
            "copy/a1",
            "1m 15s",
            "Upstream",
            "not paused",
            "25.0%",
            "Webhook deliveries",
            "delivered",
            "http://127.0.0.1:8080",
        ] {
            assert!(out.contains(want), "{want:?} missing from\n{out}");
        }
        assert!(render(&json!({}), "x").contains("Watches"));
    }
}
