//! Limits on what agents may put in a session, and the checks that enforce them.
//!
//! Every check runs before anything changes, so bad input changes nothing.

use std::collections::BTreeMap;

/// Bytes in a user name or universal id.
pub const MAX_USER_LEN: usize = 256;
/// Bytes in a user agent string (longer ones are refused, not cut).
pub const MAX_USER_AGENT_LEN: usize = 512;
/// Attributes on one session.
pub const MAX_ATTRIBUTES: usize = 64;
/// Bytes in an attribute name.
pub const MAX_ATTRIBUTE_KEY_LEN: usize = 128;
/// Bytes in an attribute value.
pub const MAX_ATTRIBUTE_VALUE_LEN: usize = 4096;

/// A field that breaks a limit or a rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InputError {
    pub field: String,
    pub message: String,
}

impl InputError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        InputError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A user name or universal id: 1 to 256 bytes, no control characters.
pub fn check_name(field: &str, value: &str) -> Result<(), InputError> {
    if value.is_empty() {
        return Err(InputError::new(field, "must not be empty"));
    }
    if value.len() > MAX_USER_LEN {
        return Err(InputError::new(
            field,
            format!("longer than {MAX_USER_LEN} bytes"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(InputError::new(field, "contains control characters"));
    }
    Ok(())
}

pub fn check_user_agent(value: &str) -> Result<(), InputError> {
    if value.len() > MAX_USER_AGENT_LEN {
        return Err(InputError::new(
            "client.user_agent",
            format!("longer than {MAX_USER_AGENT_LEN} bytes"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(InputError::new(
            "client.user_agent",
            "contains control characters",
        ));
    }
    Ok(())
}

fn check_attribute_key(field: &str, key: &str) -> Result<(), InputError> {
    if key.is_empty() || key.len() > MAX_ATTRIBUTE_KEY_LEN {
        return Err(InputError::new(
            field,
            format!("attribute names are 1 to {MAX_ATTRIBUTE_KEY_LEN} bytes"),
        ));
    }
    if key.chars().any(char::is_control) {
        return Err(InputError::new(
            field,
            "attribute names contain no control characters",
        ));
    }
    Ok(())
}

/// The attributes a session would hold after `set` and `remove` are applied to `current`.
pub fn apply_attributes(
    current: &BTreeMap<String, String>,
    set: &BTreeMap<String, String>,
    remove: &[String],
) -> Result<BTreeMap<String, String>, InputError> {
    for key in remove {
        check_attribute_key("remove", key)?;
        if set.contains_key(key) {
            return Err(InputError::new(
                "remove",
                format!("`{key}` is both set and removed"),
            ));
        }
    }
    let mut next = current.clone();
    for key in remove {
        next.remove(key);
    }
    for (k, v) in set {
        check_attribute_key("set", k)?;
        if v.len() > MAX_ATTRIBUTE_VALUE_LEN {
            return Err(InputError::new(
                "set",
                format!("the value of `{k}` is longer than {MAX_ATTRIBUTE_VALUE_LEN} bytes"),
            ));
        }
        next.insert(k.clone(), v.clone());
    }
    if next.len() > MAX_ATTRIBUTES {
        return Err(InputError::new(
            "attributes",
            format!("a session holds at most {MAX_ATTRIBUTES} attributes"),
        ));
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn names_are_bounded_and_printable() {
        assert!(check_name("user", "alice").is_ok());
        assert!(check_name("user", "").is_err());
        assert!(check_name("user", &"a".repeat(257)).is_err());
        assert!(check_name("user", "al\nice").is_err());
    }

    #[test]
    fn set_and_remove_apply_in_one_step() {
        let cur = map(&[("a", "1"), ("b", "2")]);
        let next = apply_attributes(&cur, &map(&[("c", "3")]), &["a".into()]).unwrap();
        assert_eq!(next, map(&[("b", "2"), ("c", "3")]));
    }

    #[test]
    fn bad_attribute_changes_are_refused_whole() {
        let cur = map(&[("a", "1")]);
        assert!(apply_attributes(&cur, &map(&[("a", "x")]), &["a".into()]).is_err());
        assert!(apply_attributes(&cur, &map(&[("", "x")]), &[]).is_err());
        let big = "v".repeat(MAX_ATTRIBUTE_VALUE_LEN + 1);
        assert!(apply_attributes(&cur, &map(&[("k", &big)]), &[]).is_err());
        let many: BTreeMap<String, String> = (0..=MAX_ATTRIBUTES)
            .map(|i| (format!("k{i}"), String::new()))
            .collect();
        assert!(apply_attributes(&BTreeMap::new(), &many, &[]).is_err());
    }
}
