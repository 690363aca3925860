//! A JSON pointer (RFC 6901) split into its tokens once, when the configuration is
//! read. `serde_json::Value::pointer` splits and unescapes its text on every call:
//! two allocations a token, for each of a kind's seven pointers, on every poll.

use std::fmt;

use serde_json::Value;

#[derive(Clone, PartialEq, Eq)]
pub struct Pointer {
    text: String,
    /// Unescaped (`~1` is `/`, `~0` is `~`), each with its array index if it is one.
    tokens: Vec<(String, Option<usize>)>,
}

impl Pointer {
    /// `text` as a pointer: empty (the whole document) or `/` then tokens.
    pub fn parse(text: &str) -> Result<Pointer, String> {
        if !(text.is_empty() || text.starts_with('/')) {
            return Err(format!(
                "{text:?} is not a JSON pointer (RFC 6901: \"/status\", \"/data/attributes/state\")"
            ));
        }
        let tokens = text
            .split('/')
            .skip(1)
            .map(|t| {
                let token = t.replace("~1", "/").replace("~0", "~");
                let index = array_index(&token);
                (token, index)
            })
            .collect();
        Ok(Pointer {
            text: text.to_string(),
            tokens,
        })
    }

    /// The value at this pointer in `doc`, as `Value::pointer` finds it.
    pub fn find<'a>(&self, doc: &'a Value) -> Option<&'a Value> {
        Pointer::find_tokens(doc, &self.tokens)
    }

    /// The value at `tokens` (some of a pointer's, from [`Pointer::tokens`]) in `doc`.
    pub fn find_tokens<'a>(
        doc: &'a Value,
        tokens: &[(String, Option<usize>)],
    ) -> Option<&'a Value> {
        tokens.iter().try_fold(doc, |at, (token, index)| match at {
            Value::Object(map) => map.get(token),
            Value::Array(list) => index.and_then(|i| list.get(i)),
            _ => None,
        })
    }

    /// The unescaped tokens, each with its array index if it is one.
    pub fn tokens(&self) -> &[(String, Option<usize>)] {
        &self.tokens
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// A token read as an array index: digits, no sign, no leading zero (as serde_json).
fn array_index(token: &str) -> Option<usize> {
    if token.starts_with('+') || (token.starts_with('0') && token.len() != 1) {
        return None;
    }
    token.parse().ok()
}

/// As written: `"/data/attributes/state"`.
impl fmt::Debug for Pointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.text, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_what_serde_json_finds() {
        let doc = serde_json::json!({
            "data": {"attributes": {"state": "RUNNING", "errors": [{"code": 1}]}},
            "a/b": {"m~n": 2},
            "": {"": 3},
            "list": [10, 11, 12],
        });
        for text in [
            "",
            "/data/attributes/state",
            "/data/attributes/errors/0/code",
            "/data/attributes/missing",
            "/a~1b/m~0n",
            "//",
            "/list/2",
            "/list/02",
            "/list/+1",
            "/list/3",
            "/list/-",
            "/data/attributes/state/0",
        ] {
            let p = Pointer::parse(text).unwrap();
            assert_eq!(p.find(&doc), doc.pointer(text), "{text:?}");
            assert_eq!(format!("{p:?}"), format!("{text:?}"));
        }
    }

    #[test]
    fn text_that_is_not_a_pointer_is_refused_by_name() {
        let e = Pointer::parse("status").unwrap_err();
        assert!(e.contains("\"status\" is not a JSON pointer"), "{e}");
    }
}
