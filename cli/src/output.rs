//! Readable tables for people, JSON for scripts (`--json`). Text from the
//! server is escaped before it reaches the terminal ([`tenantai::tenancy::text::escape_terminal`]):
//! a stored name cannot move the cursor, recolour or reorder what is shown.

use serde_json::Value;
use tenantai::tenancy::text::escape_terminal;

/// Prints `rows` (JSON objects) as a table of `columns`, or the raw JSON.
pub fn print(value: &Value, columns: &[&str], json: bool) {
    print!("{}", render(value, columns, json));
}

/// Prints one line of server-given text, escaped.
pub fn line(text: &str) {
    println!("{}", escape_terminal(text));
}

/// What [`print`] prints. JSON output escapes every non-ASCII character and
/// DEL (`\uXXXX`), so it holds no raw control or bidirectional characters either.
pub fn render(value: &Value, columns: &[&str], json: bool) -> String {
    if json {
        return format!("{}\n", ascii_json(value));
    }
    let mut out = String::new();
    let rows: Vec<&Value> = match value.get("data").and_then(Value::as_array) {
        Some(items) => items.iter().collect(),
        None => vec![value],
    };
    let cell = |row: &Value, col: &str| -> String {
        let raw = match row.get(col) {
            None | Some(Value::Null) => "-".into(),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| v.as_str().map_or(v.to_string(), str::to_string))
                .collect::<Vec<_>>()
                .join(","),
            Some(other) => other.to_string(),
        };
        escape_terminal(&raw).into_owned()
    };
    let widths: Vec<usize> = columns
        .iter()
        .map(|c| {
            rows.iter()
                .map(|r| cell(r, c).chars().count())
                .max()
                .unwrap_or(0)
                .max(c.len())
        })
        .collect();
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let header = columns.iter().map(|c| c.to_uppercase()).collect();
    out.push_str(&format!("{}\n", line(header)));
    for row in &rows {
        out.push_str(&format!(
            "{}\n",
            line(columns.iter().map(|c| cell(row, c)).collect())
        ));
    }
    if value.get("has_more") == Some(&Value::Bool(true)) {
        if let Some(next) = value.get("next").and_then(Value::as_str) {
            out.push_str(&format!("(more: --after {})\n", escape_terminal(next)));
        }
    }
    out
}

/// Pretty JSON with every non-ASCII character and DEL written as a `\u`
/// escape (serde_json escapes the other control characters itself).
fn ascii_json(value: &Value) -> String {
    let pretty = serde_json::to_string_pretty(value).unwrap_or_default();
    let mut out = String::with_capacity(pretty.len());
    for c in pretty.chars() {
        if c.is_ascii() && c != '\u{7f}' {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn what_is_printed_holds_no_control_or_bidi_characters() {
        let evil = "Acme\u{1b}[31m\u{202e}gnp.exe\u{0}\u{9b}\u{7f}";
        let v = json!({"data": [{"id": "ten_1", "name": evil}], "has_more": false});
        for json in [false, true] {
            let out = render(&v, &["id", "name"], json);
            assert!(
                !out.chars()
                    .any(|c| c != '\n' && tenantai::tenancy::text::forbidden(c).is_some()),
                "{out:?}"
            );
            assert!(out.contains("Acme"), "{out}");
        }
        let table = render(&v, &["id", "name"], false);
        assert!(table.contains("\\u{1b}[31m\\u{202e}"), "{table}");
        let raw = render(&v, &[], true);
        let back: Value = serde_json::from_str(&raw).unwrap();
        assert_eq!(back["data"][0]["name"], evil, "JSON output round-trips");
    }
}
