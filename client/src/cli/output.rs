//! `-w simple|table|json`: how get, put, delete and status print their answers.

use super::codec::Encoding;
use paxoskv_client::Outcome;
use serde_json::json;
use std::io::{IsTerminal, Write};

/// Output format (etcdctl's `-w`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// The bare answer: a get prints the value's bytes and nothing else.
    #[default]
    Simple,
    /// Aligned columns with a header.
    Table,
    /// One JSON object per command.
    Json,
}

/// Prints a found value. In simple format the bytes go out unchanged, with a newline only
/// when stdout is a terminal (so `paxoskv get k > file` stores exactly the value).
pub(crate) fn print_value(
    format: Format,
    encoding: Encoding,
    key: &str,
    value: &[u8],
) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    match (format, encoding) {
        (Format::Simple, Encoding::Raw) => {
            out.write_all(value)?;
            if std::io::stdout().is_terminal() {
                out.write_all(b"\n")?;
            }
        }
        (Format::Simple, _) => writeln!(out, "{}", encoding.encode_text(value).0)?,
        (Format::Table, _) => {
            let (text, _) = encoding.encode_text(value);
            write!(
                out,
                "{}",
                table(&["KEY", "VALUE"], &[vec![key.into(), text]])
            )?;
        }
        (Format::Json, _) => {
            let (text, name) = encoding.encode_text(value);
            let object = json!({"key": key, "found": true, "value": text, "encoding": name});
            writeln!(out, "{object}")?;
        }
    }
    out.flush()
}

/// Reports a missing key: on stderr, except in json where the object says `found: false`.
pub(crate) fn print_not_found(format: Format, key: &str) {
    match format {
        Format::Json => println!("{}", json!({"key": key, "found": false})),
        Format::Simple | Format::Table => eprintln!("not found: {key}"),
    }
}

/// Prints the outcome of a put or delete.
pub(crate) fn print_outcome(format: Format, key: &str, outcome: &Outcome) {
    match format {
        Format::Simple => println!("{}", describe_outcome(outcome)),
        Format::Table => print!(
            "{}",
            table(
                &["KEY", "OUTCOME"],
                &[vec![key.into(), outcome_word(outcome).into()]]
            )
        ),
        Format::Json => println!("{}", outcome_json(key, outcome)),
    }
}

/// The line printed for a write's outcome in simple format.
pub(crate) fn describe_outcome(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Delete { existed: false } => "OK (key did not exist)",
        _ => "OK",
    }
}

fn outcome_word(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Put { replaced: true } => "replaced",
        Outcome::Put { replaced: false } => "created",
        Outcome::Delete { existed: true } => "deleted",
        Outcome::Delete { existed: false } => "did not exist",
        Outcome::Registered => "session opened",
        Outcome::Txn(t) if t.succeeded => "condition held",
        Outcome::Txn(_) => "condition failed",
        Outcome::LeaseGranted { .. } => "lease granted",
        Outcome::LeaseRevoked { .. } => "lease revoked",
        Outcome::LeaseFailed(_) => "lease refused",
    }
}

fn outcome_json(key: &str, outcome: &Outcome) -> serde_json::Value {
    match outcome {
        Outcome::Put { replaced } => json!({"key": key, "ok": true, "replaced": replaced}),
        Outcome::Delete { existed } => json!({"key": key, "ok": true, "existed": existed}),
        Outcome::Registered => json!({"key": key, "ok": true, "session": "opened"}),
        Outcome::Txn(t) => {
            json!({"key": key, "ok": t.succeeded, "succeeded": t.succeeded, "revision": t.revision})
        }
        other => {
            json!({"key": key, "ok": !matches!(other, Outcome::LeaseFailed(_)), "outcome": outcome_word(other)})
        }
    }
}

/// Prints a scan: `key=value` lines (values as `get` prints them in text), a table, or one
/// JSON object with the entries and whether the range holds more than the limit.
pub(crate) fn print_scan(
    format: Format,
    encoding: Encoding,
    entries: &[(String, Vec<u8>)],
    more: bool,
) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    match format {
        Format::Simple => {
            for (key, value) in entries {
                writeln!(out, "{key}={}", encoding.encode_text(value).0)?;
            }
        }
        Format::Table => {
            let rows: Vec<Vec<String>> = entries
                .iter()
                .map(|(k, v)| vec![k.clone(), encoding.encode_text(v).0])
                .collect();
            write!(out, "{}", table(&["KEY", "VALUE"], &rows))?;
        }
        Format::Json => writeln!(out, "{}", scan_json(encoding, entries, more))?,
    }
    out.flush()
}

fn scan_json(encoding: Encoding, entries: &[(String, Vec<u8>)], more: bool) -> serde_json::Value {
    let entries: Vec<serde_json::Value> = entries
        .iter()
        .map(|(key, value)| {
            let (text, name) = encoding.encode_text(value);
            json!({"key": key, "value": text, "encoding": name})
        })
        .collect();
    json!({"count": entries.len(), "entries": entries, "more": more})
}

/// Left-aligned columns separated by two spaces, header first.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        text.push_str(cells.join("  ").trim_end());
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let text = table(
            &["ID", "ROLE"],
            &[
                vec!["0".into(), "leader".into()],
                vec!["10".into(), "follower".into()],
            ],
        );
        assert_eq!(text, "ID  ROLE\n0   leader\n10  follower\n");
    }

    #[test]
    fn scans_print_as_json_with_encoding() {
        let entries = vec![("a".to_string(), b"1".to_vec())];
        assert_eq!(
            scan_json(Encoding::Raw, &entries, true).to_string(),
            r#"{"count":1,"entries":[{"encoding":"utf8","key":"a","value":"1"}],"more":true}"#
        );
    }

    #[test]
    fn outcomes_have_words_and_json() {
        assert_eq!(outcome_word(&Outcome::Put { replaced: true }), "replaced");
        assert_eq!(
            outcome_json("k", &Outcome::Delete { existed: false }).to_string(),
            r#"{"existed":false,"key":"k","ok":true}"#
        );
    }
}
