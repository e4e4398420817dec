//! `paxoskv txn` (a transaction in a small text form, from stdin), conditional put/delete,
//! and `get --show-meta`.
//!
//! The text form, one clause a line (blank lines and `#` comments skipped):
//!
//! ```text
//! if version(k1) == 3          # also !=, <, >; mod_revision(k) likewise
//! if value(k2) == "x"          # bytes compared in order; false for an absent key
//! if absent(k3)                # or exists(k3)
//! then put k1 "v"              # run when every `if` holds
//! then delete k2
//! else get k1                  # run otherwise
//! ```
//!
//! Keys and values are bare words or "double-quoted" (with \" and \\ escapes).

use super::codec::Encoding;
use super::output::Format;
use super::EXIT_CONDITION_FAILED;
use paxoskv_client::{
    Check, Client, CmpOp, Compare, KeyMeta, ReadMode, Txn, TxnOp, TxnOutcome, TxnResult,
};
use serde_json::json;

/// Why a transaction text did not parse, with the line it is about.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: {message}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Parses the text form into a transaction.
pub fn parse_txn(text: &str) -> Result<Txn, ParseError> {
    let mut txn = Txn::default();
    for (i, raw) in text.lines().enumerate() {
        let err = |message: String| ParseError {
            line: i + 1,
            message,
        };
        let tokens = tokenize(raw).map_err(err)?;
        let Some((head, rest)) = tokens.split_first() else {
            continue;
        };
        match head.as_str() {
            "if" => txn.compares.push(parse_compare(rest).map_err(err)?),
            "then" => txn.success.push(parse_op(rest).map_err(err)?),
            "else" => txn.failure.push(parse_op(rest).map_err(err)?),
            other => return Err(err(format!("expected if, then or else, got {other:?}"))),
        }
    }
    Ok(txn)
}

/// Splits a line into words: bare words, quoted strings, and the punctuation `(`, `)`.
/// A quoted string keeps a leading `"` marker-free; comments start at an unquoted `#`.
fn tokenize(line: &str) -> Result<Vec<String>, String> {
    let mut tokens = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            '#' => break,
            c if c.is_whitespace() => {
                chars.next();
            }
            '(' | ')' => {
                tokens.push(c.to_string());
                chars.next();
            }
            '"' => {
                chars.next();
                let mut word = String::new();
                loop {
                    match chars.next() {
                        None => return Err("unterminated quoted string".into()),
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(e @ ('"' | '\\')) => word.push(e),
                            Some('n') => word.push('\n'),
                            other => return Err(format!("bad escape \\{other:?}")),
                        },
                        Some(c) => word.push(c),
                    }
                }
                tokens.push(word);
            }
            _ => {
                let mut word = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || c == '(' || c == ')' || c == '#' {
                        break;
                    }
                    word.push(c);
                    chars.next();
                }
                tokens.push(word);
            }
        }
    }
    Ok(tokens)
}

fn parse_cmp(op: &str) -> Result<CmpOp, String> {
    match op {
        "==" | "=" => Ok(CmpOp::Eq),
        "!=" => Ok(CmpOp::Ne),
        "<" => Ok(CmpOp::Lt),
        ">" => Ok(CmpOp::Gt),
        other => Err(format!("expected ==, !=, < or >, got {other:?}")),
    }
}

fn parse_compare(tokens: &[String]) -> Result<Compare, String> {
    let t: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let (target, key, rest) = match t.as_slice() {
        [target, "(", key, ")", rest @ ..] => (*target, (*key).to_string(), rest),
        _ => return Err("expected TARGET(KEY) ...".into()),
    };
    let number = |n: &str| {
        n.parse::<u64>()
            .map_err(|_| format!("expected a number, got {n:?}"))
    };
    let check = match (target, rest) {
        ("exists", []) => Check::Exists,
        ("absent", []) => Check::Absent,
        ("version", [op, n]) => Check::Version(parse_cmp(op)?, number(n)?),
        ("mod_revision", [op, n]) => Check::ModRevision(parse_cmp(op)?, number(n)?),
        ("value", [op, v]) => Check::Value(parse_cmp(op)?, v.as_bytes().to_vec()),
        _ => return Err(
            "expected version(K) OP N, mod_revision(K) OP N, value(K) OP V, exists(K) or absent(K)"
                .into(),
        ),
    };
    Ok(Compare { key, check })
}

fn parse_op(tokens: &[String]) -> Result<TxnOp, String> {
    match tokens {
        [verb, key, value] if verb == "put" => Ok(TxnOp::Put {
            key: key.clone(),
            value: value.as_bytes().to_vec(),
        }),
        [verb, key] if verb == "delete" => Ok(TxnOp::Delete { key: key.clone() }),
        [verb, key] if verb == "get" => Ok(TxnOp::Get { key: key.clone() }),
        _ => Err("expected put K V, delete K or get K".into()),
    }
}

/// Runs a transaction and prints its outcome; exit 0 if the compares held, 3 if not.
pub(crate) async fn cmd_txn(client: &mut Client, txn: Txn, format: Format) -> anyhow::Result<u8> {
    let branch = |ok: bool| if ok { &txn.success } else { &txn.failure };
    let outcome = client.txn(txn.clone()).await?;
    print_txn(format, branch(outcome.succeeded), &outcome);
    Ok(exit_of(&outcome))
}

fn exit_of(outcome: &TxnOutcome) -> u8 {
    if outcome.succeeded {
        0
    } else {
        EXIT_CONDITION_FAILED
    }
}

fn print_txn(format: Format, ops: &[TxnOp], outcome: &TxnOutcome) {
    let results = ops.iter().zip(&outcome.results);
    if format == Format::Json {
        let items: Vec<_> = results.map(|(op, r)| result_json(op.key(), r)).collect();
        let object = json!({
            "succeeded": outcome.succeeded,
            "revision": outcome.revision,
            "results": items,
        });
        println!("{object}");
        return;
    }
    let word = if outcome.succeeded {
        "SUCCEEDED"
    } else {
        "FAILED"
    };
    println!("{word} (revision {})", outcome.revision);
    for (op, result) in results {
        let key = op.key();
        match result {
            TxnResult::Put { replaced: true } => println!("put {key}: replaced"),
            TxnResult::Put { replaced: false } => println!("put {key}: created"),
            TxnResult::Delete { existed: true } => println!("delete {key}: deleted"),
            TxnResult::Delete { existed: false } => println!("delete {key}: did not exist"),
            TxnResult::Get {
                value: Some(v),
                meta,
            } => println!(
                "get {key}: {} ({})",
                String::from_utf8_lossy(v),
                meta.map(meta_text).unwrap_or_default()
            ),
            TxnResult::Get { value: None, .. } => println!("get {key}: not found"),
        }
    }
}

fn result_json(key: &str, result: &TxnResult) -> serde_json::Value {
    match result {
        TxnResult::Put { replaced } => json!({"op": "put", "key": key, "replaced": replaced}),
        TxnResult::Delete { existed } => json!({"op": "delete", "key": key, "existed": existed}),
        TxnResult::Get { value, meta } => {
            let mut object = json!({"op": "get", "key": key, "found": value.is_some()});
            if let (Some(v), Some(m)) = (value, meta) {
                object["value"] = json!(String::from_utf8_lossy(v));
                object["create_revision"] = json!(m.create_revision);
                object["mod_revision"] = json!(m.mod_revision);
                object["version"] = json!(m.version);
            }
            object
        }
    }
}

fn meta_text(m: KeyMeta) -> String {
    format!(
        "create_revision={} mod_revision={} version={}",
        m.create_revision, m.mod_revision, m.version
    )
}

/// The condition flags of `put` and `delete`, as compares on the key.
pub(crate) fn conditions(
    key: &str,
    if_version: Option<u64>,
    if_absent: bool,
    if_value: Option<String>,
) -> Vec<Compare> {
    let on = |check| Compare {
        key: key.to_string(),
        check,
    };
    let mut compares = Vec::new();
    if let Some(n) = if_version {
        compares.push(on(Check::Version(CmpOp::Eq, n)));
    }
    if if_absent {
        compares.push(on(Check::Absent));
    }
    if let Some(v) = if_value {
        compares.push(on(Check::Value(CmpOp::Eq, v.into_bytes())));
    }
    compares
}

/// A put or delete under conditions: prints OK, or a line saying the condition failed
/// (exit 3, not an error).
pub(crate) async fn cmd_conditional(
    client: &mut Client,
    txn: Txn,
    key: &str,
    format: Format,
) -> anyhow::Result<u8> {
    let outcome = client.txn(txn).await?;
    match format {
        Format::Json => println!(
            "{}",
            json!({"key": key, "ok": outcome.succeeded, "revision": outcome.revision})
        ),
        Format::Simple | Format::Table if outcome.succeeded => {
            println!("OK (revision {})", outcome.revision)
        }
        Format::Simple | Format::Table => {
            println!("condition failed: {key} not written")
        }
    }
    Ok(exit_of(&outcome))
}

/// `get --show-meta` and `get -w json`: the value with its revisions.
pub(crate) async fn cmd_get_meta(
    client: &Client,
    key: &str,
    mode: ReadMode,
    format: Format,
    encoding: Encoding,
) -> anyhow::Result<u8> {
    let reply = client.get_meta(key, mode).await?;
    let (Some(value), Some(meta)) = (reply.value, reply.meta) else {
        super::output::print_not_found(format, key);
        return Ok(super::EXIT_NOT_FOUND);
    };
    let (text, encoding_name) = encoding.encode_text(&value);
    match format {
        Format::Json => println!(
            "{}",
            json!({
                "key": key,
                "found": true,
                "value": text,
                "encoding": encoding_name,
                "create_revision": meta.create_revision,
                "mod_revision": meta.mod_revision,
                "version": meta.version,
                "lease": reply.lease,
                "revision": reply.revision,
            })
        ),
        Format::Simple | Format::Table => {
            println!("{text}");
            match reply.lease {
                Some(lease) => println!("{} lease={lease}", meta_text(meta)),
                None => println!("{}", meta_text(meta)),
            }
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses() {
        let text = "if version(k1) == 3\nif value(k2) == \"x\"\nif absent(k3)\n\
                    then put k1 \"v\"\nthen delete k2\nelse get k1\n";
        let txn = parse_txn(text).unwrap();
        assert_eq!(txn.compares.len(), 3);
        assert_eq!(txn.compares[0].check, Check::Version(CmpOp::Eq, 3));
        assert_eq!(
            txn.compares[1].check,
            Check::Value(CmpOp::Eq, b"x".to_vec())
        );
        assert_eq!(txn.compares[2].check, Check::Absent);
        assert_eq!(
            txn.success,
            [
                TxnOp::Put {
                    key: "k1".into(),
                    value: b"v".to_vec()
                },
                TxnOp::Delete { key: "k2".into() }
            ]
        );
        assert_eq!(txn.failure, [TxnOp::Get { key: "k1".into() }]);
    }

    #[test]
    fn comments_quotes_and_errors() {
        let txn =
            parse_txn("# c\n\nif mod_revision(\"a b\") < 7 # x\nthen put k \"q\\\"#\"").unwrap();
        assert_eq!(txn.compares[0].key, "a b");
        assert_eq!(txn.compares[0].check, Check::ModRevision(CmpOp::Lt, 7));
        assert_eq!(
            txn.success[0],
            TxnOp::Put {
                key: "k".into(),
                value: b"q\"#".to_vec()
            }
        );
        assert_eq!(parse_txn("then put k").unwrap_err().line, 1);
        assert_eq!(parse_txn("\nif version(k) ~ 1").unwrap_err().line, 2);
        assert!(parse_txn("when x").is_err());
        assert!(parse_txn("if value(k) == \"open").is_err());
    }
}
