//! A kind of job as configured: where its status is (a path template with `{id}`),
//! how to read the answer (JSON pointers to the state, an optional second field, the
//! upstream's times and errors), which state values mean which outcome, and which
//! HTTP statuses mean what. Presets (`config/presets/*.toml`) are these same
//! settings, shipped in the binary; nothing here is specific to one upstream.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Duration;

use http::StatusCode;
use serde::Deserialize;
use serde_json::Value;

use super::pointer::Pointer;
use super::wanted::{type_of, Found, Type, Use, Wanted};
use super::{JobStatus, PollAnswer};
use crate::model::{check_kind_name, Kind, Verdict};

/// A kind as written in the settings or a preset.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KindSpec {
    /// Globally unique (`copy`, `batch`, ...): what clients name in `POST /v1/jobs`.
    pub name: String,
    /// The status path under the upstream's base URL, with `{id}` where the
    /// percent-encoded id goes: `/batches/{id}`.
    pub path: String,
    /// Pointers that must be present in a status answer; without them the body is
    /// not a status document (a transient error, like a body that is not JSON).
    #[serde(default)]
    pub require: Vec<String>,
    /// The state: its pointer and what its values mean.
    pub state: RuleSpec,
    /// The second field, read when the state's value says `then` (Vector: the errors
    /// of a SUCCESS; Google: the `error` of a done operation; GitHub: the conclusion
    /// of a completed run).
    #[serde(default)]
    pub then: Option<RuleSpec>,
    /// Pointers to the upstream's own times and errors; the first present one counts.
    #[serde(default)]
    pub created: Pointers,
    #[serde(default)]
    pub started: Pointers,
    #[serde(default)]
    pub ended: Pointers,
    #[serde(default)]
    pub errors: Pointers,
    /// Which HTTP statuses mean what, where they differ from UPSTREAM.md's table.
    #[serde(default)]
    pub statuses: StatusSpec,
}

/// One field and what its values mean. Values are compared as text: a string as
/// it is, `true`/`false`, a number as JSON writes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub pointer: String,
    #[serde(default)]
    pub running: Vec<Value>,
    #[serde(default)]
    pub succeeded: Vec<Value>,
    #[serde(default)]
    pub failed: Vec<Value>,
    /// Values decided by the second field (`then`); only in the first rule.
    #[serde(default)]
    pub then: Vec<Value>,
    /// What any other present, non-empty value means (default `unknown`: keep polling).
    #[serde(default)]
    pub present: Option<Said>,
    /// What a missing, null or empty value means (default `unknown`).
    #[serde(default)]
    pub absent: Option<Said>,
}

/// What a field's value says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Said {
    Running,
    Succeeded,
    Failed,
    /// Not named by the table: keep polling, record it, warn once.
    Unknown,
    /// Ask the second field.
    Then,
}

/// One pointer or several (the first present one counts).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(untagged)]
pub enum Pointers {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl Pointers {
    fn list(&self) -> &[String] {
        match self {
            Pointers::None => &[],
            Pointers::One(p) => std::slice::from_ref(p),
            Pointers::Many(v) => v,
        }
    }
}

/// HTTP statuses by meaning; each list replaces UPSTREAM.md's default for it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusSpec {
    pub not_found: Option<Vec<u16>>,
    pub rejected: Option<Vec<u16>>,
    pub unauthorized: Option<Vec<u16>>,
    /// With a Retry-After: pause the upstream until then. Without one, only 429
    /// is a rate limit (the bare-429 rate cut); the others fall through to the
    /// next list that names them, else they are transient errors.
    pub rate_limited: Option<Vec<u16>>,
}

/// A kind ready to use: its path split around `{id}`, its rules compiled.
#[derive(Debug, Clone)]
pub struct KindDef {
    pub kind: Kind,
    path_head: String,
    path_tail: String,
    require: Vec<Field>,
    state: Rule,
    then: Option<Rule>,
    created: Vec<Field>,
    started: Vec<Field>,
    ended: Vec<Field>,
    errors: Vec<Field>,
    statuses: Statuses,
    /// The values at the pointers above: all that is read of an answer.
    wanted: Wanted,
}

/// A pointer, and the slot [`Wanted::read`] puts the value it finds in.
#[derive(Debug, Clone)]
struct Field {
    pointer: Pointer,
    slot: usize,
}

impl Field {
    /// `list` as pointers read as `how`; the error names the setting.
    fn all(wanted: &mut Wanted, list: &[String], how: Use) -> Result<Vec<Field>, String> {
        list.iter().map(|p| Field::new(wanted, p, how)).collect()
    }

    fn new(wanted: &mut Wanted, text: &str, how: Use) -> Result<Field, String> {
        let pointer = Pointer::parse(text)?;
        let slot = wanted.add(&pointer, how);
        Ok(Field { pointer, slot })
    }
}

#[derive(Debug, Clone)]
struct Rule {
    field: Field,
    table: HashMap<String, Said>,
    present: Said,
    absent: Said,
}

#[derive(Debug, Clone)]
struct Statuses {
    not_found: Vec<u16>,
    rejected: Vec<u16>,
    unauthorized: Vec<u16>,
    rate_limited: Vec<u16>,
}

impl KindDef {
    /// Check `spec` and compile it; the error says what is wrong, in words.
    pub fn new(spec: &KindSpec) -> Result<KindDef, String> {
        check_kind_name(&spec.name)?;
        let name = &spec.name;
        let (head, tail) = spec
            .path
            .split_once("{id}")
            .ok_or_else(|| format!("kind {name:?}: path {:?} has no {{id}}", spec.path))?;
        if tail.contains("{id}") {
            return Err(format!(
                "kind {name:?}: path {:?} has {{id}} more than once",
                spec.path
            ));
        }
        if !head.starts_with('/') {
            return Err(format!(
                "kind {name:?}: path {:?} must start with /",
                spec.path
            ));
        }
        let mut wanted = Wanted::default();
        let state = Rule::new(&spec.state, true, &mut wanted, Use::Take)
            .map_err(|e| format!("kind {name:?}: state: {e}"))?;
        let then = match &spec.then {
            Some(t) => Some(
                Rule::new(t, false, &mut wanted, Use::Look)
                    .map_err(|e| format!("kind {name:?}: then: {e}"))?,
            ),
            None => None,
        };
        let says_then = state.table.values().any(|s| *s == Said::Then)
            || [state.present, state.absent].contains(&Said::Then);
        if says_then && then.is_none() {
            return Err(format!(
                "kind {name:?}: the state sends some values to `then`, but no `then` rule is given"
            ));
        }
        let s = &spec.statuses;
        let mut fields = |what: &str, list: &[String], how: Use| {
            Field::all(&mut wanted, list, how).map_err(|e| format!("kind {name:?}: {what}: {e}"))
        };
        let require = fields("require", &spec.require, Use::Presence)?;
        let created = fields("created", spec.created.list(), Use::Take)?;
        let started = fields("started", spec.started.list(), Use::Take)?;
        let ended = fields("ended", spec.ended.list(), Use::Take)?;
        let errors = fields("errors", spec.errors.list(), Use::Take)?;
        Ok(KindDef {
            kind: Kind::intern(name),
            path_head: head.to_string(),
            path_tail: tail.to_string(),
            require,
            state,
            then,
            created,
            started,
            ended,
            errors,
            wanted,
            statuses: Statuses {
                not_found: s.not_found.clone().unwrap_or_else(|| vec![404]),
                rejected: s.rejected.clone().unwrap_or_else(|| vec![400, 422]),
                unauthorized: s.unauthorized.clone().unwrap_or_else(|| vec![401, 403]),
                rate_limited: s.rate_limited.clone().unwrap_or_else(|| vec![429, 503]),
            },
        })
    }

    /// Append the status path of `id` (written as given: the caller encodes it)
    /// to `url`, so that a poll's URL is one allocation.
    pub fn write_path(&self, url: &mut String, id: impl std::fmt::Display) {
        use std::fmt::Write as _;
        url.push_str(&self.path_head);
        // Writing into a String cannot fail.
        let _ = write!(url, "{id}");
        url.push_str(&self.path_tail);
    }

    /// An answer in this kind's terms: UPSTREAM.md's error table, as overridden.
    pub fn classify(
        &self,
        status: StatusCode,
        retry_after: Option<Duration>,
        body: &[u8],
    ) -> PollAnswer {
        let code = status.as_u16();
        let s = &self.statuses;
        if status.is_success() {
            return match self.read(body) {
                Ok(st) => PollAnswer::Status(st),
                Err(e) => PollAnswer::Transient {
                    error: format!("HTTP {status}: {e}"),
                },
            };
        }
        if s.rate_limited.contains(&code) && (code == 429 || retry_after.is_some()) {
            return PollAnswer::RateLimited {
                status: code,
                retry_after,
            };
        }
        if s.not_found.contains(&code) {
            PollAnswer::NotFound
        } else if s.rejected.contains(&code) {
            PollAnswer::Rejected {
                status: code,
                detail: super::error_detail(body),
            }
        } else if s.unauthorized.contains(&code) {
            PollAnswer::Unauthorized { status: code }
        } else {
            PollAnswer::Transient {
                error: format!("HTTP {status}{}", super::short_detail(body)),
            }
        }
    }

    /// A 2xx body as a status: the state and its verdict, times and errors. A body
    /// that is not JSON, lacks a required field or has a state of the wrong type is
    /// an error; a time of the wrong type is left out and noted.
    pub fn read(&self, body: &[u8]) -> Result<JobStatus, String> {
        let mut doc = (self.wanted)
            .read(body)
            .map_err(|e| format!("body is not a job status document: {e}"))?;
        if doc.root != Type::Object {
            return Err(format!(
                "body is not a job status document: {}, not an object",
                type_name(doc.root)
            ));
        }
        for f in &self.require {
            if doc.get(f.slot).is_none_or(Value::is_null) {
                return Err(format!(
                    "body is not a job status document of kind {}: nothing at {:?}",
                    self.kind, f.pointer
                ));
            }
        }
        let mut said = self
            .state
            .judge(&doc)
            .map_err(|e| format!("the state at {:?} {e}", self.state.field.pointer))?;
        if said == Said::Then {
            // `new` made sure there is a second rule when the first can say `then`.
            said = match &self.then {
                Some(rule) => rule
                    .judge(&doc)
                    .map_err(|e| format!("the field at {:?} {e}", rule.field.pointer))?,
                None => Said::Unknown,
            };
        }
        let state = doc.take(self.state.field.slot).and_then(text);
        let mut notes = Vec::new();
        let mut time = |fields: &[Field], what: &str| time_at(&mut doc, fields, what, &mut notes);
        let created = time(&self.created, "created");
        let started = time(&self.started, "started");
        let ended = time(&self.ended, "ended");
        let errors = self
            .errors
            .iter()
            .find(|f| doc.get(f.slot).is_some_and(|v| !v.is_null()))
            .and_then(|f| doc.take(f.slot));
        Ok(JobStatus {
            state,
            verdict: match said {
                Said::Running => Verdict::Running,
                Said::Succeeded => Verdict::Succeeded,
                Said::Failed => Verdict::Failed,
                Said::Unknown | Said::Then => Verdict::Unknown,
            },
            created,
            started,
            ended,
            errors,
            note: (!notes.is_empty()).then(|| notes.join("; ")),
        })
    }
}

impl Rule {
    /// The rule of `spec`, its pointer read as `how`; `first`: the state's rule.
    fn new(spec: &RuleSpec, first: bool, wanted: &mut Wanted, how: Use) -> Result<Rule, String> {
        let field = Field::new(wanted, &spec.pointer, how)?;
        let mut table = HashMap::new();
        let lists = [
            (&spec.running, Said::Running, "running"),
            (&spec.succeeded, Said::Succeeded, "succeeded"),
            (&spec.failed, Said::Failed, "failed"),
            (&spec.then, Said::Then, "then"),
        ];
        for (values, said, list) in lists {
            if said == Said::Then && !first && !values.is_empty() {
                return Err("only the first rule may send values to `then`".into());
            }
            for v in values {
                let t = text(v.clone()).ok_or_else(|| {
                    format!("{list}: {v} is not a value a field can have (a string, a number, true or false)")
                })?;
                if let Some(before) = table.insert(t.clone(), said) {
                    return Err(format!(
                        "{t:?} is listed twice (as {before:?} and as {said:?})"
                    ));
                }
            }
        }
        let present = spec.present.unwrap_or(Said::Unknown);
        let absent = spec.absent.unwrap_or(Said::Unknown);
        if !first && (present == Said::Then || absent == Said::Then) {
            return Err("only the first rule may say `then`".into());
        }
        Ok(Rule {
            field,
            table,
            present,
            absent,
        })
    }

    /// What the value found at the rule's pointer says; an error (the rest of a
    /// sentence) when it is a list or an object the rule cannot judge.
    fn judge(&self, doc: &Found) -> Result<Said, String> {
        let Some(v) = doc.get(self.field.slot).filter(|v| !is_empty(v)) else {
            return Ok(self.absent);
        };
        // The text the table compares, copied only for a number.
        let key = match v {
            Value::String(s) => Cow::Borrowed(s.as_str()),
            Value::Bool(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
            Value::Number(n) => Cow::Owned(n.to_string()),
            // A list or an object: only `present` can say what it means.
            Value::Null | Value::Array(_) | Value::Object(_) => {
                if self.table.is_empty() || self.present != Said::Unknown {
                    return Ok(self.present);
                }
                return Err(format!(
                    "is {}; expected a string, a number or true/false",
                    type_name(type_of(v))
                ));
            }
        };
        Ok(self
            .table
            .get(key.as_ref())
            .copied()
            .unwrap_or(self.present))
    }
}

/// A scalar as the text the tables compare: a string as it is, `true`/`false`,
/// a number as JSON writes it. `None` for null, lists and objects.
fn text(v: Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

/// Missing in all but name: null, `""`, `[]`, `{}`.
fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Bool(_) | Value::Number(_) => false,
    }
}

fn type_name(t: Type) -> &'static str {
    match t {
        Type::Null => "null",
        Type::Bool => "a boolean",
        Type::Number => "a number",
        Type::String => "a string",
        Type::Array => "a list",
        Type::Object => "an object",
    }
}

/// The first present time among `pointers`: a string as given, a number as Unix
/// seconds turned into RFC 3339. A value of another type is left out and noted.
fn time_at(
    doc: &mut Found,
    fields: &[Field],
    what: &str,
    notes: &mut Vec<String>,
) -> Option<String> {
    for Field { pointer: p, slot } in fields {
        match doc.get(*slot) {
            None | Some(Value::Null) => continue,
            Some(Value::String(_)) => return doc.take(*slot).and_then(text),
            Some(Value::Number(n)) => match n.as_f64().and_then(unix_seconds) {
                Some(t) => return Some(t),
                None => notes.push(format!(
                    "{what} at {p:?} is {n}, not a time in Unix seconds"
                )),
            },
            Some(v) => notes.push(format!(
                "{what} at {p:?} is {}; a time is an RFC 3339 string or Unix seconds",
                type_name(type_of(v))
            )),
        }
    }
    None
}

fn unix_seconds(secs: f64) -> Option<String> {
    if !secs.is_finite() || !(0.0..=253_402_300_799.0).contains(&secs) {
        return None;
    }
    let whole = secs.trunc() as i64;
    let nanos = ((secs - secs.trunc()) * 1e9) as u32;
    let t = chrono::DateTime::<chrono::Utc>::from_timestamp(whole, nanos)?;
    Some(t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(toml_text: &str) -> KindSpec {
        let c = config::Config::builder()
            .add_source(config::File::from_str(toml_text, config::FileFormat::Toml))
            .build()
            .unwrap();
        c.try_deserialize().unwrap()
    }

    fn github() -> KindDef {
        KindDef::new(&spec(
            r#"
            name = "test-run"
            path = "/actions/runs/{id}"
            require = ["/status"]
            state = { pointer = "/status", running = ["queued", "in_progress"], then = ["completed"] }
            then = { pointer = "/conclusion", succeeded = ["success", "skipped"], failed = ["failure", "cancelled"], absent = "running" }
            created = "/created_at"
            started = ["/run_started_at", "/created_at"]
            ended = "/updated_at"
            "#,
        ))
        .unwrap()
    }

    fn google() -> KindDef {
        KindDef::new(&spec(
            r#"
            name = "test-op"
            path = "/operations/{id}"
            require = ["/name"]
            state = { pointer = "/done", running = [false], then = [true], absent = "running" }
            then = { pointer = "/error", present = "failed", absent = "succeeded" }
            created = "/metadata/createTime"
            ended = "/metadata/endTime"
            errors = "/error"
            "#,
        ))
        .unwrap()
    }

    fn read(def: &KindDef, body: &str) -> Result<JobStatus, String> {
        def.read(body.as_bytes())
    }

    #[test]
    fn the_second_field_decides_a_completed_run() {
        let g = github();
        let v = |b: &str| read(&g, b).unwrap().verdict;
        assert_eq!(
            v(r#"{"status":"queued","conclusion":null}"#),
            Verdict::Running
        );
        assert_eq!(
            v(r#"{"status":"completed","conclusion":"success"}"#),
            Verdict::Succeeded
        );
        assert_eq!(
            v(r#"{"status":"completed","conclusion":"failure"}"#),
            Verdict::Failed
        );
        assert_eq!(
            v(r#"{"status":"completed"}"#),
            Verdict::Running,
            "no conclusion yet"
        );
        assert_eq!(
            v(r#"{"status":"completed","conclusion":"stale"}"#),
            Verdict::Unknown
        );
        assert_eq!(v(r#"{"status":"paused"}"#), Verdict::Unknown);
        let s = read(&g, r#"{"status":"completed","conclusion":"success"}"#).unwrap();
        assert_eq!(s.state.as_deref(), Some("completed"));
    }

    #[test]
    fn done_and_error_decide_an_operation() {
        let g = google();
        let v = |b: &str| read(&g, b).unwrap().verdict;
        assert_eq!(
            v(r#"{"name":"operations/1"}"#),
            Verdict::Running,
            "done omitted while false"
        );
        assert_eq!(
            v(r#"{"name":"operations/1","done":false}"#),
            Verdict::Running
        );
        assert_eq!(
            v(r#"{"name":"operations/1","done":true,"response":{}}"#),
            Verdict::Succeeded
        );
        assert_eq!(
            v(r#"{"name":"operations/1","done":true,"error":{"code":13,"message":"x"}}"#),
            Verdict::Failed
        );
        let s = read(&g, r#"{"name":"o","done":true,"error":{"code":13}}"#).unwrap();
        assert_eq!(s.errors, Some(serde_json::json!({"code":13})));
        assert_eq!(s.state.as_deref(), Some("true"));
    }

    #[test]
    fn sparse_and_null_bodies_keep_polling() {
        let g = github();
        let s = read(&g, r#"{"status":null}"#);
        assert!(s.is_err(), "a required field that is null: {s:?}");
        let s = read(&g, r#"{"status":""}"#).unwrap();
        assert_eq!(s.verdict, Verdict::Unknown);
        assert_eq!(s.state.as_deref(), Some(""));
        let s = read(&google(), r#"{"name":"x","metadata":null}"#).unwrap();
        assert_eq!((s.created, s.ended, s.errors), (None, None, None));
    }

    #[test]
    fn wrong_types_are_clear_errors_never_panics() {
        let g = github();
        let e = read(&g, r#"{"status":{"phase":"x"}}"#).unwrap_err();
        assert!(e.contains("\"/status\"") && e.contains("an object"), "{e}");
        let e = read(&g, r#"{"status":"completed","conclusion":[1]}"#).unwrap_err();
        assert!(e.contains("/conclusion") && e.contains("a list"), "{e}");
        let e = read(&g, "[1,2,3]").unwrap_err();
        assert!(e.contains("a list, not an object"), "{e}");
        let e = read(&g, r#"{"state":"queued"}"#).unwrap_err();
        assert!(e.contains("kind test-run: nothing at \"/status\""), "{e}");
        let e = read(&g, "<html>").unwrap_err();
        assert!(e.contains("not a job status document"), "{e}");
        // A time of the wrong type is left out and noted; the state still counts.
        let s = read(
            &g,
            r#"{"status":"queued","created_at":{"t":1},"run_started_at":true}"#,
        )
        .unwrap();
        assert_eq!(s.verdict, Verdict::Running);
        assert_eq!(s.created, None);
        let note = s.note.unwrap();
        assert!(
            note.contains("created at \"/created_at\" is an object"),
            "{note}"
        );
        assert!(
            note.contains("started at \"/run_started_at\" is a boolean"),
            "{note}"
        );
        // Numbers that are no time.
        let s = read(&g, r#"{"status":"queued","created_at":-5}"#).unwrap();
        assert!(s.note.unwrap().contains("not a time in Unix seconds"));
    }

    #[test]
    fn unix_seconds_become_rfc3339_and_strings_stay_as_given() {
        let g = github();
        let s = read(
            &g,
            r#"{"status":"queued","created_at":1711471533,"run_started_at":"2024-03-26T16:45:33Z"}"#,
        )
        .unwrap();
        assert_eq!(s.created.as_deref(), Some("2024-03-26T16:45:33Z"));
        assert_eq!(s.started.as_deref(), Some("2024-03-26T16:45:33Z"));
        // The first present pointer counts.
        let s = read(&g, r#"{"status":"queued","created_at":1.5}"#).unwrap();
        assert_eq!(s.started.as_deref(), Some("1970-01-01T00:00:01.500Z"));
    }

    #[test]
    fn status_overrides_change_what_an_answer_means() {
        let mut sp = spec(
            r#"
            name = "gh"
            path = "/runs/{id}"
            state = { pointer = "/status" }
            statuses = { rate_limited = [429, 403], rejected = [422] }
            "#,
        );
        let def = KindDef::new(&sp).unwrap();
        let secs = Some(Duration::from_secs(5));
        let c = |code: u16, ra| def.classify(StatusCode::from_u16(code).unwrap(), ra, b"{}");
        assert!(matches!(
            c(403, secs),
            PollAnswer::RateLimited { status: 403, .. }
        ));
        assert_eq!(c(403, None), PollAnswer::Unauthorized { status: 403 });
        assert!(matches!(c(400, None), PollAnswer::Transient { .. }));
        assert!(
            matches!(c(503, secs), PollAnswer::Transient { .. }),
            "503 not listed"
        );
        assert!(matches!(
            c(429, None),
            PollAnswer::RateLimited {
                retry_after: None,
                ..
            }
        ));
        sp.path = "/runs".into();
        assert!(KindDef::new(&sp).unwrap_err().contains("has no {id}"));
    }

    #[test]
    fn bad_tables_are_refused_with_the_reason() {
        let err = |t: &str| KindDef::new(&spec(t)).unwrap_err();
        let e = err(r#"
            name = "k"
            path = "/k/{id}"
            state = { pointer = "/s", running = ["A"], failed = ["A"] }"#);
        assert!(e.contains("\"A\" is listed twice"), "{e}");
        let e = err(r#"
            name = "k"
            path = "/k/{id}"
            state = { pointer = "/s", then = ["DONE"] }"#);
        assert!(e.contains("no `then` rule"), "{e}");
        let e = err(r#"
            name = "k"
            path = "/k/{id}"
            state = { pointer = "status" }"#);
        assert!(e.contains("not a JSON pointer"), "{e}");
        let e = err(r#"
            name = "Bad Name"
            path = "/k/{id}"
            state = { pointer = "/s" }"#);
        assert!(e.contains("not a kind name"), "{e}");
    }

    #[test]
    fn paths_put_the_id_in_its_place() {
        let g = github();
        let mut path = String::new();
        g.write_path(&mut path, "12%3A3");
        assert_eq!(path, "/actions/runs/12%3A3");
    }
}
