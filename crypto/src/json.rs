//! Strict reading of the protocol's JSON objects (crate-internal).
//!
//! Owns the rules PROTOCOL.md sets for every JSON input: a duplicate key is
//! refused (serde_json's own map handling keeps the last one silently, so
//! the map visitor here is our own), an unknown field is refused, `null` is
//! refused where a value is required, strings must be valid Unicode (lone
//! surrogate escapes fail serde_json's `String` decoding), and numbers are
//! kept as their exact text (`RawValue`) so scores are never read through a
//! float. Every error text starts with the field's path.

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::hex;

/// The members of one JSON object, in document order, keys unique; each
/// value is still raw text borrowed from the input.
pub(crate) struct Object<'a> {
    path: String,
    members: Vec<(String, &'a RawValue)>,
}

struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members: Vec<(String, &'de RawValue)> = Vec::new();
                // A set, not a scan of `members`: a hostile object with many
                // keys must cost linear, not quadratic, time.
                let mut seen: HashSet<String> = HashSet::new();
                while let Some(key) = map.next_key::<String>()? {
                    if !seen.insert(key.clone()) {
                        return Err(de::Error::custom(format_args!("duplicate key `{key}`")));
                    }
                    let value = map.next_value::<&'de RawValue>()?;
                    members.push((key, value));
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(V)
    }
}

/// Joins a parent path and a member name for error messages.
pub(crate) fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

fn at(path: &str) -> String {
    if path.is_empty() {
        "document".to_string()
    } else {
        format!("`{path}`")
    }
}

impl<'a> Object<'a> {
    /// Parses `text` as one JSON object (nothing after it but whitespace),
    /// refusing duplicate keys and members not in `allowed`.
    pub(crate) fn parse(path: &str, text: &'a str, allowed: &[&str]) -> Result<Self, String> {
        let Members(members) = serde_json::from_str::<Members<'a>>(text)
            .map_err(|e| format!("{}: {}", at(path), strip_position(&e)))?;
        if let Some((unknown, _)) = members.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
            return Err(format!(
                "{}: unknown field `{unknown}` (allowed: {})",
                at(path),
                allowed.join(", ")
            ));
        }
        Ok(Object {
            path: path.to_string(),
            members,
        })
    }

    /// The path of a member of this object, for error messages.
    pub(crate) fn path_of(&self, name: &str) -> String {
        join(&self.path, name)
    }

    fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.members
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| *v)
    }

    /// A member that must be present and not `null`.
    pub(crate) fn required(&self, name: &str) -> Result<&'a RawValue, String> {
        match self.get(name) {
            None => Err(format!("missing field `{}`", self.path_of(name))),
            Some(v) if v.get() == "null" => {
                Err(format!("`{}` must not be null", self.path_of(name)))
            }
            Some(v) => Ok(v),
        }
    }

    /// A member that may be absent, but is not `null` when present.
    pub(crate) fn optional(&self, name: &str) -> Result<Option<&'a RawValue>, String> {
        match self.get(name) {
            None => Ok(None),
            Some(v) if v.get() == "null" => {
                Err(format!("`{}` must not be null", self.path_of(name)))
            }
            Some(v) => Ok(Some(v)),
        }
    }

    /// A member that must be present and may be `null` (`None`).
    pub(crate) fn nullable(&self, name: &str) -> Result<Option<&'a RawValue>, String> {
        match self.get(name) {
            None => Err(format!("missing field `{}`", self.path_of(name))),
            Some(v) if v.get() == "null" => Ok(None),
            Some(v) => Ok(Some(v)),
        }
    }

    /// A required string member.
    pub(crate) fn string(&self, name: &str) -> Result<String, String> {
        string(&self.path_of(name), self.required(name)?)
    }

    /// A required `0x` hex member of exactly `N` bytes.
    pub(crate) fn hex<const N: usize>(&self, name: &str) -> Result<[u8; N], String> {
        hex_fixed::<N>(&self.path_of(name), self.required(name)?)
    }

    /// A required non-negative integer member (plain digits, no fraction or
    /// exponent) that fits a `u64`.
    pub(crate) fn u64(&self, name: &str) -> Result<u64, String> {
        let raw = self.required(name)?;
        serde_json::from_str::<u64>(raw.get()).map_err(|_| {
            format!(
                "`{}` must be an integer 0..={}, got {}",
                self.path_of(name),
                u64::MAX,
                shorten(raw.get())
            )
        })
    }

    /// A required non-negative integer member that fits a `u32`.
    pub(crate) fn u32(&self, name: &str) -> Result<u32, String> {
        let raw = self.required(name)?;
        serde_json::from_str::<u32>(raw.get()).map_err(|_| {
            format!(
                "`{}` must be an integer 0..={}, got {}",
                self.path_of(name),
                u32::MAX,
                shorten(raw.get())
            )
        })
    }

    /// A required array member, its elements still raw.
    pub(crate) fn array(&self, name: &str) -> Result<Vec<&'a RawValue>, String> {
        let raw = self.required(name)?;
        serde_json::from_str::<Vec<&'a RawValue>>(raw.get()).map_err(|_| {
            format!(
                "`{}` must be an array, got {}",
                self.path_of(name),
                shorten(raw.get())
            )
        })
    }
}

/// A JSON string value (valid Unicode: lone surrogates are refused).
pub(crate) fn string(path: &str, raw: &RawValue) -> Result<String, String> {
    serde_json::from_str::<String>(raw.get()).map_err(|e| {
        if raw.get().starts_with('"') {
            format!(
                "`{path}` is not a valid Unicode string: {}",
                strip_position(&e)
            )
        } else {
            format!("`{path}` must be a string, got {}", shorten(raw.get()))
        }
    })
}

/// A JSON string holding `0x` hex of exactly `N` bytes.
pub(crate) fn hex_fixed<const N: usize>(path: &str, raw: &RawValue) -> Result<[u8; N], String> {
    let text = string(path, raw)?;
    hex::decode_fixed::<N>(&text).map_err(|e| format!("`{path}`: {e}"))
}

/// Raw text for error messages, cut to a readable length.
pub(crate) fn shorten(text: &str) -> String {
    const MAX: usize = 80;
    if text.len() <= MAX {
        return text.to_string();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// serde_json errors end in " at line L column C", which refers to a
/// sub-document here and would mislead; keep the description only.
fn strip_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_duplicates_unknowns_and_non_objects() {
        assert!(Object::parse("", r#"{"a":1,"a":1}"#, &["a"]).is_err());
        assert!(Object::parse("", r#"{"a":1,"\u0061":2}"#, &["a"]).is_err());
        assert!(Object::parse("", r#"{"a":1,"b":2}"#, &["a"]).is_err());
        assert!(Object::parse("", r#"[1]"#, &["a"]).is_err());
        assert!(Object::parse("", r#"null"#, &["a"]).is_err());
        assert!(Object::parse("", r#"{"a":1} x"#, &["a"]).is_err());
        assert!(Object::parse("", r#"{"a":1}{}"#, &["a"]).is_err());
        assert!(Object::parse("", r#"{"\ud800":1}"#, &["a"]).is_err());
        assert!(Object::parse("", " {\"a\" : 1 }\n", &["a"]).is_ok());
    }

    #[test]
    fn many_keys_are_cheap() {
        let mut text = String::from("{");
        for i in 0..200_000 {
            text.push_str(&format!("\"k{i}\":0,"));
        }
        text.push_str("\"k0\":1}");
        let started = std::time::Instant::now();
        let e = Object::parse("", &text, &["a"]).err().unwrap_or_default();
        assert!(e.contains("duplicate key `k0`"), "{e}");
        assert!(
            started.elapsed().as_secs() < 10,
            "duplicate check must be linear"
        );
    }

    #[test]
    fn null_and_missing() {
        let o =
            Object::parse("x", r#"{"a":null,"b": null }"#, &["a", "b", "c"]).expect("valid object");
        assert!(o.required("a").is_err());
        assert!(o.optional("a").is_err());
        assert!(o.optional("c").expect("absent is fine").is_none());
        assert!(o.nullable("b").expect("null is fine").is_none());
        assert!(o.nullable("c").is_err());
        let e = o.required("c").expect_err("missing");
        assert!(e.contains("x.c"), "{e}");
    }

    #[test]
    fn strings_and_integers() {
        let o = Object::parse(
            "",
            r#"{"s":"\ud83d\ude00","lone":"\ud800","n":5,"f":5.0,"e":5e0,"neg":-5,"big":18446744073709551616}"#,
            &["s", "lone", "n", "f", "e", "neg", "big"],
        )
        .expect("valid object");
        assert_eq!(o.string("s"), Ok("😀".to_string()));
        assert!(o.string("lone").is_err());
        assert!(o.string("n").is_err());
        assert_eq!(o.u64("n"), Ok(5));
        assert!(o.u64("f").is_err());
        assert!(o.u64("e").is_err());
        assert!(o.u64("neg").is_err());
        assert!(o.u64("big").is_err());
        assert!(o.u64("s").is_err());
        assert!(o.array("n").is_err());
    }
}
