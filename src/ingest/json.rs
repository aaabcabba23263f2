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
