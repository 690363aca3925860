//! Reads of a status answer only the values a kind's pointers name. A status
//! body is mostly fields no rule looks at (a Vector status: the job's id, type,
//! its product's attributes); parsing it whole into a `Value` built a map, a key
//! and a string for each of them, and the pointers then copied what they found:
//! about a fifth of the daemon's allocations per poll at 400 polls/s. Here the
//! body is still checked as JSON from end to end, but only the values at the
//! pointers are built, each into its slot, from where the reader moves it out.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize as _;
use serde_json::Value;
use smallvec::SmallVec;

use super::pointer::Pointer;

/// The pointers a kind reads, as a tree of their tokens, each ending in a slot.
#[derive(Debug, Default, Clone)]
pub struct Wanted {
    root: Node,
    /// How many readers take each slot's value: the last one to
    /// [`Found::take`] it moves the value out, the others copy it.
    readers: Vec<u8>,
    /// Each slot's pointer, to find what a slot below a whole value holds.
    pointers: Vec<Pointer>,
}

#[derive(Debug, Default, Clone)]
struct Node {
    /// How many tokens lead here.
    depth: usize,
    slot: Option<usize>,
    /// The value here is read; otherwise only whether it is there and not null.
    whole: bool,
    /// The tokens below, each with its array index if it is one.
    below: Vec<(String, Option<usize>, Node)>,
    /// The slots in this subtree (itself included): a key met twice counts
    /// only the last time, as in serde_json's own maps.
    subtree: Vec<usize>,
}

/// How a slot's value is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// Only whether it is there and not null.
    Presence,
    /// Looked at ([`Found::get`]).
    Look,
    /// Taken ([`Found::take`]): moved out for its last taker.
    Take,
}

/// A JSON value's type: all that is kept of the document itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Null,
    Bool,
    Number,
    String,
    Array,
    Object,
}

/// What a read found: a value (or, for a slot read only for presence, a stand-in
/// of the same null-ness) in each slot whose pointer was present.
#[derive(Debug)]
pub struct Found {
    pub root: Type,
    /// Each slot's value and how many takers it has left; on the stack for up
    /// to eight pointers (as many as the `openai-batch` preset names).
    slots: SmallVec<[(Option<Value>, u8); 8]>,
}

impl Wanted {
    /// The slot of `pointer`, to be read as `how`. A pointer added twice has one
    /// slot.
    pub fn add(&mut self, pointer: &Pointer, how: Use) -> usize {
        let mut at = &mut self.root;
        for (depth, (token, index)) in pointer.tokens().iter().enumerate() {
            let i = match at.below.iter().position(|(t, _, _)| t == token) {
                Some(i) => i,
                None => {
                    let node = Node {
                        depth: depth + 1,
                        ..Node::default()
                    };
                    at.below.push((token.clone(), *index, node));
                    at.below.len() - 1
                }
            };
            at = &mut at.below[i].2;
        }
        at.whole |= how != Use::Presence;
        let slot = *at.slot.get_or_insert(self.readers.len());
        if slot == self.readers.len() {
            self.readers.push(0);
            self.pointers.push(pointer.clone());
        }
        if how == Use::Take {
            self.readers[slot] = self.readers[slot].saturating_add(1);
        }
        self.root.index();
        slot
    }

    /// What `body` holds at each slot's pointer; an error if it is not JSON.
    pub fn read(&self, body: &[u8]) -> serde_json::Result<Found> {
        let mut found = Found {
            root: Type::Null,
            slots: self.readers.iter().map(|takers| (None, *takers)).collect(),
        };
        let mut de = serde_json::Deserializer::from_slice(body);
        found.root = At {
            node: &self.root,
            wanted: self,
            values: &mut found.slots,
        }
        .deserialize(&mut de)?;
        de.end()?;
        Ok(found)
    }
}

impl Node {
    fn index(&mut self) {
        let mut subtree: Vec<usize> = self.slot.into_iter().collect();
        for (_, _, child) in &mut self.below {
            child.index();
            subtree.extend_from_slice(&child.subtree);
        }
        self.subtree = subtree;
    }

    fn child(&self, key: &str) -> Option<&Node> {
        self.below
            .iter()
            .find(|(t, _, _)| t == key)
            .map(|(_, _, n)| n)
    }

    fn at_index(&self, i: usize) -> Option<&Node> {
        self.below
            .iter()
            .find(|(_, index, _)| *index == Some(i))
            .map(|(_, _, n)| n)
    }
}

impl Found {
    /// The value at `slot`'s pointer, if present (null included).
    pub fn get(&self, slot: usize) -> Option<&Value> {
        self.slots[slot].0.as_ref()
    }

    /// The value at `slot`'s pointer, moved out for its last taker.
    pub fn take(&mut self, slot: usize) -> Option<Value> {
        let (value, left) = &mut self.slots[slot];
        *left = left.saturating_sub(1);
        if *left == 0 {
            value.take()
        } else {
            value.clone()
        }
    }
}

/// Reading the value at one node.
struct At<'a> {
    node: &'a Node,
    wanted: &'a Wanted,
    values: &'a mut [(Option<Value>, u8)],
}

impl<'de> DeserializeSeed<'de> for At<'_> {
    type Value = Type;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Type, D::Error> {
        // What an earlier key of the same name left here no longer counts.
        for slot in &self.node.subtree {
            self.values[*slot].0 = None;
        }
        if !self.node.whole {
            return d.deserialize_any(self);
        }
        let value = Value::deserialize(d)?;
        let kind = type_of(&value);
        let here = self.node.depth;
        for slot in self
            .node
            .subtree
            .iter()
            .filter(|s| Some(**s) != self.node.slot)
        {
            // A pointer below a whole value: find it in the value.
            let rest = &self.wanted.pointers[*slot].tokens()[here..];
            self.values[*slot].0 = Pointer::find_tokens(&value, rest).cloned();
        }
        if let Some(slot) = self.node.slot {
            self.values[slot].0 = Some(value);
        }
        Ok(kind)
    }
}

impl At<'_> {
    /// The value at `node`, a node below this one.
    fn below<'b>(&'b mut self, node: &'b Node) -> At<'b> {
        At {
            node,
            wanted: self.wanted,
            values: &mut *self.values,
        }
    }

    /// A value that is not read whole: null, or a stand-in that is not.
    fn seen(self, kind: Type) -> Type {
        if let Some(slot) = self.node.slot {
            self.values[slot].0 = Some(match kind {
                Type::Null => Value::Null,
                _ => Value::Bool(true),
            });
        }
        kind
    }
}

impl<'de> Visitor<'de> for At<'_> {
    type Value = Type;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Type, E> {
        Ok(self.seen(Type::Bool))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Type, E> {
        Ok(self.seen(Type::Number))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Type, E> {
        Ok(self.seen(Type::Number))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Type, E> {
        Ok(self.seen(Type::Number))
    }

    fn visit_str<E>(self, _: &str) -> Result<Type, E> {
        Ok(self.seen(Type::String))
    }

    fn visit_unit<E>(self) -> Result<Type, E> {
        Ok(self.seen(Type::Null))
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Type, A::Error> {
        let node = self.node;
        while let Some(child) = map.next_key_seed(Key(node))? {
            match child {
                Some(child) => map.next_value_seed(self.below(child)).map(drop)?,
                None => map.next_value::<IgnoredAny>().map(drop)?,
            }
        }
        Ok(self.seen(Type::Object))
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<Type, A::Error> {
        let node = self.node;
        for i in 0.. {
            let more = match node.at_index(i) {
                Some(child) => seq.next_element_seed(self.below(child))?.is_some(),
                None => seq.next_element::<IgnoredAny>()?.is_some(),
            };
            if !more {
                break;
            }
        }
        Ok(self.seen(Type::Array))
    }
}

/// An object's key: the wanted node it names, if any (nothing is copied).
struct Key<'a>(&'a Node);

impl<'de, 'a> DeserializeSeed<'de> for Key<'a> {
    type Value = Option<&'a Node>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de, 'a> Visitor<'de> for Key<'a> {
    type Value = Option<&'a Node>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self.0.child(v))
    }
}

pub fn type_of(v: &Value) -> Type {
    match v {
        Value::Null => Type::Null,
        Value::Bool(_) => Type::Bool,
        Value::Number(_) => Type::Number,
        Value::String(_) => Type::String,
        Value::Array(_) => Type::Array,
        Value::Object(_) => Type::Object,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODIES: [&str; 10] = [
        r#"{"data":{"id":"j1","type":"copy_job","attributes":{"state":"RUNNING","errors":[],"created":"2026-01-01T00:00:00Z","name":"x","big":{"a":[1,2,{"b":null}]}}},"links":{"self":"/x"}}"#,
        r#"{"data":{"attributes":{"state":"SUCCESS","errors":[{"code":1,"detail":"bad"}]}}}"#,
        r#"{"data":null}"#,
        r#"{"data":{"attributes":{"state":12.5e0,"errors":null,"created":1}},"data":{"attributes":{"state":7}}}"#,
        r#"{"status":"completed","conclusion":"success","list":[10,11,12,13],"a/b":{"m~n":[true]}}"#,
        r#"{"esc\u0061ped":{"k":"\u00e9"},"":{"":3},"done":true,"error":{"code":13}}"#,
        r#"[1,2,3]"#,
        r#""text""#,
        r#"{"list":[0,{"x":1},2],"data":{"attributes":{"state":["a"],"errors":{"o":1}}}}"#,
        r#"{"error":{"code":13,"message":"x"},"error":{"message":"y"}}"#,
    ];

    /// Read whole: every value found is the one serde_json's own pointer finds.
    const WHOLE: [&str; 15] = [
        "/data/attributes/state",
        "/data/attributes/errors",
        "/data/attributes/created",
        "/data/attributes/errors/0/code",
        "/status",
        "/conclusion",
        "/list/2",
        "/list/1/x",
        "/a~1b/m~0n/0",
        "/escaped/k",
        "//",
        "/done",
        "/error",
        "/error/code",
        "/data/attributes/state",
    ];

    /// Read for presence only: found with the same null-ness.
    const PRESENT: [&str; 4] = ["/data", "/list", "/nowhere", "/error/message"];

    #[test]
    fn every_slot_holds_what_the_pointer_finds_in_the_whole_document() {
        let mut wanted = Wanted::default();
        let present: Vec<usize> = PRESENT
            .iter()
            .map(|p| wanted.add(&Pointer::parse(p).unwrap(), Use::Presence))
            .collect();
        let whole: Vec<usize> = WHOLE
            .iter()
            .map(|p| wanted.add(&Pointer::parse(p).unwrap(), Use::Take))
            .collect();
        assert_eq!(whole[0], whole[14], "one slot for one pointer");
        for body in BODIES {
            let doc: Value = serde_json::from_str(body).unwrap();
            let mut found = wanted.read(body.as_bytes()).unwrap();
            assert_eq!(found.root, type_of(&doc), "{body}");
            for (text, slot) in PRESENT.iter().zip(&present) {
                let null = |v: Option<&Value>| v.map(Value::is_null);
                assert_eq!(
                    null(found.get(*slot)),
                    null(doc.pointer(text)),
                    "{text} in {body}"
                );
            }
            for (text, slot) in WHOLE.iter().zip(&whole) {
                assert_eq!(found.get(*slot), doc.pointer(text), "{text} in {body}");
            }
            // Two takers of one slot: the first gets a copy, the last the value.
            let state = doc.pointer("/data/attributes/state").cloned();
            assert_eq!(found.take(whole[0]), state);
            assert_eq!(found.take(whole[0]), state);
            assert_eq!(found.get(whole[0]), None, "moved out to its last reader");
        }
    }

    #[test]
    fn a_body_that_is_not_json_is_an_error_even_where_nothing_is_wanted() {
        let wanted = Wanted::default();
        for bad in [
            r#"{"data":{"attributes":{"state":"RUNNING"}}"#,
            r#"{"links":{"self":nope}}"#,
            r#"{"data":{}} trailing"#,
            r#"{"links":[1,2,]}"#,
            "",
        ] {
            assert!(wanted.read(bad.as_bytes()).is_err(), "{bad:?}");
            assert!(serde_json::from_str::<Value>(bad).is_err(), "{bad:?}");
        }
    }
}
