//! Reading and writing msgpack maps by key, whatever the message they carry.

use rmpv::ValueRef;

/// Why a map's field cannot be read as the value asked for; each names the field's key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FieldError {
    /// The map has no such key.
    #[error("missing field {0:?}")]
    Missing(String),
    /// A str field whose bytes are not UTF-8.
    #[error("field {0:?} is not UTF-8")]
    NotUtf8(String),
    /// A field that is not a str.
    #[error("field {0:?} must be a string")]
    NotText(String),
    /// A field that is not a non-negative integer.
    #[error("field {0:?} must be a non-negative integer")]
    NotUint(String),
}

/// A borrowed view of a msgpack map, looked up by key (str or bin).
pub(crate) struct MapRef<'v, 'a> {
    entries: &'v [(ValueRef<'a>, ValueRef<'a>)],
}

impl<'v, 'a> MapRef<'v, 'a> {
    /// The map `value` is, or `None` if it is not one.
    pub(crate) fn new(value: &'v ValueRef<'a>) -> Option<MapRef<'v, 'a>> {
        match value {
            ValueRef::Map(entries) => Some(MapRef { entries }),
            _ => None,
        }
    }

    /// The value under `key`, which may be encoded as str or as bin.
    pub(crate) fn get(&self, key: &str) -> Option<&'v ValueRef<'a>> {
        self.entries
            .iter()
            .find(|(k, _)| key_bytes(k) == Some(key.as_bytes()))
            .map(|(_, v)| v)
    }

    /// Every key and value, in the order sent.
    pub(crate) fn entries(&self) -> &'v [(ValueRef<'a>, ValueRef<'a>)] {
        self.entries
    }

    /// The value under `key`, or an error naming the missing field.
    pub(crate) fn field(&self, key: &str) -> Result<&'v ValueRef<'a>, FieldError> {
        self.get(key)
            .ok_or_else(|| FieldError::Missing(key.to_owned()))
    }

    /// The str under `key`.
    pub(crate) fn text(&self, key: &str) -> Result<&'v str, FieldError> {
        match self.field(key)? {
            ValueRef::String(s) => s
                .as_str()
                .ok_or_else(|| FieldError::NotUtf8(key.to_owned())),
            _ => Err(FieldError::NotText(key.to_owned())),
        }
    }

    /// The non-negative integer under `key`.
    pub(crate) fn uint(&self, key: &str) -> Result<u64, FieldError> {
        self.field(key)?
            .as_u64()
            .ok_or_else(|| FieldError::NotUint(key.to_owned()))
    }

    /// The value under `key`, if there is one and it is not nil: nil stands for absent.
    pub(crate) fn optional(&self, key: &str) -> Option<&'v ValueRef<'a>> {
        self.get(key).filter(|v| !matches!(v, ValueRef::Nil))
    }
}

/// The text of a msgpack str.
pub(crate) fn as_str<'v>(value: &'v ValueRef<'_>) -> Option<&'v str> {
    match value {
        ValueRef::String(s) => s.as_str(),
        _ => None,
    }
}

/// A key's bytes: peers send str keys, openpi's arrays bin keys.
pub(crate) fn key_bytes<'v>(key: &'v ValueRef<'_>) -> Option<&'v [u8]> {
    match key {
        ValueRef::String(s) => Some(s.as_bytes()),
        ValueRef::Binary(b) => Some(b),
        _ => None,
    }
}

/// A map with str keys.
pub(crate) fn obj<'a>(entries: Vec<(&'a str, ValueRef<'a>)>) -> ValueRef<'a> {
    ValueRef::Map(
        entries
            .into_iter()
            .map(|(k, v)| (ValueRef::from(k), v))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_found_under_str_or_bin_keys_and_misfits_are_named() {
        let value = ValueRef::Map(vec![
            (ValueRef::from("n"), ValueRef::from(3u64)),
            (ValueRef::Binary(b"s"), ValueRef::from("text")),
            (ValueRef::from("nil"), ValueRef::Nil),
            (ValueRef::from("neg"), ValueRef::from(-1i64)),
        ]);
        let map = MapRef::new(&value).unwrap();
        assert_eq!(map.uint("n"), Ok(3));
        assert_eq!(map.text("s"), Ok("text"));
        assert!(map.optional("nil").is_none() && map.get("nil").is_some());
        let err = |e: FieldError| e.to_string();
        assert_eq!(
            err(map.uint("neg").unwrap_err()),
            "field \"neg\" must be a non-negative integer"
        );
        assert_eq!(
            err(map.text("n").unwrap_err()),
            "field \"n\" must be a string"
        );
        assert_eq!(err(map.field("x").unwrap_err()), "missing field \"x\"");
        assert!(MapRef::new(&ValueRef::from(1u64)).is_none());
    }
}
