//! InfluxDB line protocol for orchardd's schema: measurement = kind, tags `orchard`, `block`,
//! `device` (+ `depth_cm`), field `value`, millisecond timestamps.
//!
//! Identifiers are already `[A-Za-z0-9_-]` when they get here, but the escaping covers free
//! text too (commas, spaces, equals signs, quotes, newlines, non-ASCII), because later record
//! types (alert texts, lot ids) carry it. A backslash in a name is literal in line protocol
//! (InfluxDB 1.x keeps `\\` as two backslashes), so it is left alone; one right before a
//! comma, space, equals sign or the end of a name cannot be written unambiguously at all and is
//! replaced by `/`.

use std::fmt::Write;

/// Escapes a measurement name: commas and spaces (and backslashes before them).
pub fn measurement(out: &mut String, s: &str) {
    escape(out, s, &[',', ' ']);
}

/// Escapes a tag key, tag value or field key: commas, equals signs and spaces.
pub fn tag(out: &mut String, s: &str) {
    escape(out, s, &[',', '=', ' ']);
}

/// A string field value: double quotes and backslashes escaped, inside quotes.
pub fn string_field(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            // A raw newline would end the line; InfluxDB has no escape for it in strings.
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn escape(out: &mut String, s: &str, special: &[char]) {
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        let c = match c {
            // Line protocol cannot carry these in names; an escaped space keeps the line whole.
            '\n' | '\r' | '\t' => ' ',
            c => c,
        };
        if special.contains(&c) {
            out.push('\\');
            out.push(c);
        } else if c == '\\'
            && chars
                .peek()
                .is_none_or(|n| special.contains(n) || n.is_whitespace())
        {
            out.push('/');
        } else {
            out.push(c);
        }
    }
}

/// A float field value that InfluxDB parses back to the same f64.
pub fn float(out: &mut String, v: f64) {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        let _ = write!(out, "{v:.1}");
    } else {
        let _ = write!(out, "{v}");
    }
}

/// One point: `measurement,tag=v,... field=v,... ts` and a newline. Tags must be sorted by key
/// for InfluxDB's best performance; callers pass them sorted.
pub fn point(
    out: &mut String,
    name: &str,
    tags: &[(&str, &str)],
    fields: &[(&str, FieldValue<'_>)],
    ts_ms: i64,
) {
    measurement(out, name);
    for (k, v) in tags {
        if v.is_empty() {
            continue; // an empty tag value is invalid in line protocol: leave the tag out
        }
        out.push(',');
        tag(out, k);
        out.push('=');
        tag(out, v);
    }
    out.push(' ');
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        tag(out, k);
        out.push('=');
        match v {
            FieldValue::Float(f) => float(out, *f),
            FieldValue::Integer(n) => {
                let _ = write!(out, "{n}i");
            }
            FieldValue::Str(s) => string_field(out, s),
        }
    }
    let _ = writeln!(out, " {ts_ms}");
}

#[derive(Debug, Clone, Copy)]
pub enum FieldValue<'a> {
    Float(f64),
    Integer(i64),
    Str(&'a str),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reading_becomes_one_line() {
        let mut out = String::new();
        point(
            &mut out,
            "soil_moisture",
            &[
                ("block", "B3"),
                ("depth_cm", "30"),
                ("device", "probe-1"),
                ("orchard", "fengjie"),
            ],
            &[("value", FieldValue::Float(23.0))],
            1_772_316_000_000,
        );
        assert_eq!(
            out,
            "soil_moisture,block=B3,depth_cm=30,device=probe-1,orchard=fengjie value=23.0 1772316000000\n"
        );
    }

    #[test]
    fn hostile_names_and_values_are_escaped() {
        let mut out = String::new();
        point(
            &mut out,
            "a, b",
            &[("k=1", "v, w=x\\y\\"), ("empty", ""), ("橙", "奉节 脐橙")],
            &[
                ("note", FieldValue::Str("say \"hi\" \\ bye\nnow")),
                ("n", FieldValue::Integer(-3)),
            ],
            5,
        );
        assert_eq!(
            out,
            "a\\,\\ b,k\\=1=v\\,\\ w\\=x\\y/,橙=奉节\\ 脐橙 note=\"say \\\"hi\\\" \\\\ bye\\nnow\",n=-3i 5\n"
        );
    }
}
