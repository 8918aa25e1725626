//! [`Text`]: an immutable string kept inside its owner when it is short.
//!
//! A session's user and universal id are read by every validate's answer. Held as separate
//! heap strings, each is one more cache miss after the record's at a million sessions
//! (`examples/hotpath`); held inside the record, they arrive with it. Up to [`INLINE`]
//! bytes (a UUID, most user names and e-mail addresses) live inline; longer ones on the
//! heap, as before.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

use arrayvec::ArrayString;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest string kept inline: the 48 bytes of a [`Text`] less its tag and length.
pub const INLINE: usize = 40;

/// An immutable string, inline up to [`INLINE`] bytes. It compares, hashes, orders and
/// serializes as the `str` it holds, so it replaces a `String` without changing a stored
/// format.
#[derive(Clone)]
pub struct Text(Repr);

#[derive(Clone)]
enum Repr {
    Inline(ArrayString<INLINE>),
    Heap(Box<str>),
}

impl Text {
    pub fn new(s: &str) -> Text {
        match ArrayString::from(s) {
            Ok(inline) => Text(Repr::Inline(inline)),
            Err(_) => Text(Repr::Heap(s.into())),
        }
    }

    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Inline(s) => s,
            Repr::Heap(s) => s,
        }
    }

    /// The first and last bytes of the text, read independently (see
    /// `Session::warm`); 0 for an empty text.
    pub fn ends(&self) -> (u8, u8) {
        let b = self.as_bytes();
        (
            b.first().copied().unwrap_or(0),
            b.last().copied().unwrap_or(0),
        )
    }
}

impl Deref for Text {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for Text {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl Default for Text {
    fn default() -> Text {
        Text::new("")
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Text {
        Text::new(s)
    }
}

impl From<String> for Text {
    fn from(s: String) -> Text {
        if s.len() <= INLINE {
            Text::new(&s)
        } else {
            Text(Repr::Heap(s.into_boxed_str()))
        }
    }
}

impl From<Text> for String {
    fn from(t: Text) -> String {
        match t.0 {
            Repr::Heap(s) => s.into_string(),
            Repr::Inline(s) => s.as_str().to_owned(),
        }
    }
}

impl PartialEq for Text {
    fn eq(&self, other: &Text) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Text {}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialOrd for Text {
    fn partial_cmp(&self, other: &Text) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Text {
    fn cmp(&self, other: &Text) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl Hash for Text {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Text {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Text, D::Error> {
        struct Visitor;

        impl serde::de::Visitor<'_> for Visitor {
            type Value = Text;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text::new(v))
            }

            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Text, E> {
                Ok(Text::from(v))
            }
        }

        d.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_is_the_str_it_was_made_from_inline_or_not() {
        for s in [
            "",
            "alice",
            "7c9e6679-7425-40de-944b-e07fc1f90ae7",
            &"é".repeat(INLINE / 2),
            &"é".repeat(INLINE / 2 + 1),
            &"x".repeat(INLINE),
            &"x".repeat(INLINE + 1),
            &"long ".repeat(100),
        ] {
            let t = Text::new(s);
            assert_eq!(t.as_str(), s);
            assert_eq!(Text::from(s.to_owned()), t);
            assert_eq!(t.to_string(), s);
            assert_eq!(format!("{t:?}"), format!("{s:?}"));
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, serde_json::to_string(s).unwrap());
            assert_eq!(serde_json::from_str::<Text>(&json).unwrap(), t);
        }
    }

    #[test]
    fn short_strings_stay_inline_and_the_type_stays_small() {
        assert_eq!(std::mem::size_of::<Text>(), 48);
        assert_eq!(std::mem::size_of::<Option<Text>>(), 48);
        assert!(matches!(Text::new(&"x".repeat(INLINE)).0, Repr::Inline(_)));
        assert!(matches!(
            Text::new(&"x".repeat(INLINE + 1)).0,
            Repr::Heap(_)
        ));
    }

    #[test]
    fn it_orders_and_hashes_as_its_str() {
        use std::collections::HashMap;
        let mut m = HashMap::new();
        m.insert(Text::new("bob"), 1);
        assert_eq!(m.get("bob"), Some(&1));
        assert!(Text::new("a") < Text::new(&"b".repeat(INLINE + 1)));
    }
}
