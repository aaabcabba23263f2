//! Small JSON helpers every decoder shares: naming a value's type in an error, turning a JSON
//! value into a [`RawValue`], and the whole-message `malformed_payload` rejection.

use serde_json::Value;

use crate::validate::{RawValue, Reason, Rejection};

/// "a string", "a list", ...: for error details staff read.
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A measurement's value as the payload had it; validation decides what it is worth.
pub fn raw_value(v: &Value) -> RawValue {
    match v {
        Value::Number(n) => n
            .as_f64()
            .map(RawValue::Number)
            .unwrap_or(RawValue::Other("a number out of range")),
        Value::String(s) => RawValue::Text(s.clone()),
        other => RawValue::Other(type_name(other)),
    }
}

pub fn malformed(detail: impl Into<String>) -> Rejection {
    Rejection::new(Reason::MalformedPayload, detail)
}

/// proptest strategies the decoders' property tests share.
#[cfg(test)]
pub mod strategies {
    use proptest::prelude::*;
    use serde_json::Value;

    /// Arbitrary JSON, up to four levels deep, whose object keys come from `keys`.
    pub fn json_with_keys(
        keys: impl Strategy<Value = String> + Clone + 'static,
    ) -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            (-1e12f64..1e12).prop_map(Value::from),
            "[ -~]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(keys.clone(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Arbitrary JSON with short identifier-like keys.
    pub fn json_value() -> impl Strategy<Value = Value> {
        json_with_keys("[a-zA-Z_]{1,10}")
    }

    /// The values of an object, counting nested objects' values: what a decoder must account for.
    pub fn leaves(v: &Value) -> usize {
        match v {
            Value::Object(m) => m.values().map(leaves).sum(),
            _ => 1,
        }
    }
}
