//! The repl: PUT/GET/DELETE/STATUS/EXIT lines, with line editing and history on a terminal,
//! or a script read from a pipe (no prompt, exit status 2 if any line failed).

use super::output::{describe_outcome, Format};
use super::{status, EXIT_ERROR};
use anyhow::Context as _;
use paxoskv_client::{Client, KeyRange, ReadMode};
use rustyline::error::ReadlineError;
use std::io::IsTerminal;
use std::path::PathBuf;
use tokio::io::{AsyncBufReadExt, BufReader};

const PROMPT: &str = "paxoskv> ";
/// Keys a SCAN prints at most.
const SCAN_LIMIT: usize = 100;
const USAGE: &str = "usage: PUT <key> <value> | GET <key> | DELETE <key> | SCAN [prefix] | \
                     COUNT [prefix] | STATUS | HELP | EXIT \
                     (quote keys or values with spaces: PUT \"my key\" \"a value \")";

/// One parsed REPL line.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ReplCommand {
    Put {
        key: String,
        value: String,
    },
    Get {
        key: String,
    },
    Delete {
        key: String,
    },
    /// The first [`SCAN_LIMIT`] keys with this prefix, in byte order.
    Scan {
        prefix: String,
    },
    Count {
        prefix: String,
    },
    Status,
    Help,
    Exit,
    /// A blank line.
    Empty,
}

/// Parses one line. Verbs are case-insensitive. Keys and values may be quoted: "..." (with
/// \" \\ \n \t escapes) or '...' (literal); a quoted value is kept exactly, spaces included.
/// An unquoted PUT value is the rest of the line without its trailing whitespace.
pub(crate) fn parse_line(line: &str) -> Result<ReplCommand, String> {
    let line = line.trim_end_matches(['\n', '\r']);
    let Some((verb, rest)) = next_token(line)? else {
        return Ok(ReplCommand::Empty);
    };
    let verb = verb.to_ascii_uppercase();
    let bad = || format!("cannot parse {line:?}; {USAGE}");
    match verb.as_str() {
        "PUT" => {
            let (key, rest) = next_token(rest)?.ok_or_else(bad)?;
            let value = rest_value(rest)?.ok_or_else(bad)?;
            Ok(ReplCommand::Put { key, value })
        }
        "GET" => Ok(ReplCommand::Get {
            key: only_key(rest)?.ok_or_else(bad)?,
        }),
        "DELETE" | "DEL" => Ok(ReplCommand::Delete {
            key: only_key(rest)?.ok_or_else(bad)?,
        }),
        "SCAN" => Ok(ReplCommand::Scan {
            prefix: prefix_arg(rest)?.ok_or_else(bad)?,
        }),
        "COUNT" => Ok(ReplCommand::Count {
            prefix: prefix_arg(rest)?.ok_or_else(bad)?,
        }),
        "STATUS" if rest.trim().is_empty() => Ok(ReplCommand::Status),
        "HELP" | "?" => Ok(ReplCommand::Help),
        "EXIT" | "QUIT" if rest.trim().is_empty() => Ok(ReplCommand::Exit),
        _ => Err(bad()),
    }
}

/// An optional prefix (none: every key) and nothing after it.
fn prefix_arg(text: &str) -> Result<Option<String>, String> {
    if text.trim().is_empty() {
        return Ok(Some(String::new()));
    }
    only_key(text)
}

/// One key and nothing after it.
fn only_key(text: &str) -> Result<Option<String>, String> {
    match next_token(text)? {
        Some((key, rest)) if rest.trim().is_empty() => Ok(Some(key)),
        _ => Ok(None),
    }
}

/// A PUT's value: one quoted token, or the unquoted rest of the line.
fn rest_value(text: &str) -> Result<Option<String>, String> {
    let text = text.trim_start();
    if text.starts_with(['"', '\'']) {
        return match next_token(text)? {
            Some((value, rest)) if rest.trim().is_empty() => Ok(Some(value)),
            Some(_) => Err("text after the closing quote of the value".to_string()),
            None => Ok(None),
        };
    }
    let value = text.trim_end();
    Ok((!value.is_empty()).then(|| value.to_string()))
}

/// The next whitespace-separated token (quotes removed) and the text after it.
fn next_token(text: &str) -> Result<Option<(String, &str)>, String> {
    let text = text.trim_start();
    let mut chars = text.char_indices();
    let Some((_, first)) = chars.next() else {
        return Ok(None);
    };
    let (token, end) = match first {
        '"' => double_quoted(text)?,
        '\'' => {
            let close = text[1..].find('\'').ok_or("missing closing ' quote")?;
            (text[1..1 + close].to_string(), close + 2)
        }
        _ => {
            let end = text.find(char::is_whitespace).unwrap_or(text.len());
            (text[..end].to_string(), end)
        }
    };
    let rest = &text[end..];
    if !rest.is_empty() && !rest.starts_with(char::is_whitespace) {
        return Err("a closing quote must be followed by a space".to_string());
    }
    Ok(Some((token, rest)))
}

/// A "..." token starting at `text[0]`; returns it unescaped and the index after the quote.
fn double_quoted(text: &str) -> Result<(String, usize), String> {
    let mut token = String::new();
    let mut chars = text.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((token, i + 1)),
            '\\' => match chars.next() {
                Some((_, 'n')) => token.push('\n'),
                Some((_, 't')) => token.push('\t'),
                Some((_, other)) => token.push(other),
                None => break,
            },
            other => token.push(other),
        }
    }
    Err("missing closing \" quote".to_string())
}

/// Runs the repl until EXIT or end of input.
pub(crate) async fn run(client: &mut Client) -> anyhow::Result<u8> {
    if std::io::stdin().is_terminal() {
        interactive(client).await
    } else {
        scripted(client).await
    }
}

/// A terminal: line editing, history in ~/.paxoskv_history, errors reported and forgotten.
async fn interactive(client: &mut Client) -> anyhow::Result<u8> {
    let mut editor = rustyline::DefaultEditor::new().context("cannot start the line editor")?;
    let history = history_path();
    if let Some(path) = &history {
        // A missing history file is the normal first run.
        let _ = editor.load_history(path);
    }
    eprintln!("paxoskv repl; {USAGE}");
    loop {
        // rustyline blocks on the terminal; keep the runtime's other worker going meanwhile.
        let line = tokio::task::block_in_place(|| editor.readline(PROMPT));
        let line = match line {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e).context("cannot read the terminal"),
        };
        if !line.trim().is_empty() {
            let _ = editor.add_history_entry(line.as_str());
        }
        match parse_line(&line) {
            Ok(ReplCommand::Exit) => break,
            Ok(command) => {
                let _ = execute(client, command).await;
            }
            Err(hint) => eprintln!("error: {hint}"),
        }
    }
    if let Some(path) = &history {
        if let Err(e) = editor.save_history(path) {
            eprintln!("warning: cannot save history to {}: {e}", path.display());
        }
    }
    Ok(0)
}

/// A pipe: no prompt, every line run, exit status 2 if any of them failed.
async fn scripted(client: &mut Client) -> anyhow::Result<u8> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut failed = 0usize;
    let mut number = 0usize;
    while let Some(line) = lines.next_line().await.context("cannot read stdin")? {
        number += 1;
        let ok = match parse_line(&line) {
            Ok(ReplCommand::Exit) => break,
            Ok(command) => execute(client, command).await,
            Err(hint) => {
                eprintln!("error: line {number}: {hint}");
                false
            }
        };
        failed += usize::from(!ok);
    }
    if failed > 0 {
        eprintln!("error: {failed} of {number} lines failed");
        return Ok(EXIT_ERROR);
    }
    Ok(0)
}

fn history_path() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    Some(PathBuf::from(home).join(".paxoskv_history"))
}

/// Runs one command; answers go to stdout, errors to stderr. Returns false on an error.
async fn execute(client: &mut Client, command: ReplCommand) -> bool {
    let result = match command {
        ReplCommand::Put { key, value } => client
            .put(&key, value.into_bytes())
            .await
            .map(|o| Some(describe_outcome(&o).to_string())),
        ReplCommand::Get { key } => client.get(&key).await.map(|v| match v {
            Some(value) => Some(String::from_utf8_lossy(&value).into_owned()),
            None => {
                eprintln!("(not found)");
                None
            }
        }),
        ReplCommand::Delete { key } => client
            .delete(&key)
            .await
            .map(|o| Some(describe_outcome(&o).to_string())),
        ReplCommand::Scan { prefix } => client
            .scan(
                &KeyRange::Prefix(prefix),
                SCAN_LIMIT,
                ReadMode::Linearizable,
            )
            .await
            .map(|(entries, more)| {
                let mut lines: Vec<String> = entries
                    .iter()
                    .map(|(k, v)| format!("{k}={}", String::from_utf8_lossy(v)))
                    .collect();
                if more {
                    lines.push(format!(
                        "(more than {SCAN_LIMIT} keys; use paxoskv scan --limit)"
                    ));
                }
                (!lines.is_empty()).then(|| lines.join("\n"))
            }),
        ReplCommand::Count { prefix } => client
            .count(&KeyRange::Prefix(prefix), ReadMode::Linearizable)
            .await
            .map(|n| Some(n.to_string())),
        ReplCommand::Status => {
            return status::print(client, Format::Table).await.has_majority();
        }
        ReplCommand::Help => Ok(Some(USAGE.to_string())),
        ReplCommand::Exit | ReplCommand::Empty => Ok(None),
    };
    match result {
        Ok(Some(text)) => {
            println!("{text}");
            true
        }
        Ok(None) => true,
        Err(e) => {
            eprintln!("error: {e}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str) -> ReplCommand {
        ReplCommand::Put {
            key: key.into(),
            value: value.into(),
        }
    }

    #[test]
    fn verbs_are_case_insensitive() {
        assert_eq!(parse_line("PUT k v"), Ok(put("k", "v")));
        assert_eq!(parse_line("put k v"), Ok(put("k", "v")));
        assert_eq!(
            parse_line("Get k"),
            Ok(ReplCommand::Get { key: "k".into() })
        );
        assert_eq!(
            parse_line("scan user/"),
            Ok(ReplCommand::Scan {
                prefix: "user/".into()
            })
        );
        assert_eq!(
            parse_line("COUNT"),
            Ok(ReplCommand::Count {
                prefix: String::new()
            })
        );
        assert_eq!(
            parse_line("delete k"),
            Ok(ReplCommand::Delete { key: "k".into() })
        );
        assert_eq!(parse_line("exit"), Ok(ReplCommand::Exit));
        assert_eq!(parse_line("EXIT"), Ok(ReplCommand::Exit));
    }

    #[test]
    fn put_value_is_the_rest_of_the_line() {
        assert_eq!(
            parse_line("PUT greeting hello  big world \n"),
            Ok(put("greeting", "hello  big world"))
        );
        assert_eq!(parse_line("  PUT\tk\t v1 v2"), Ok(put("k", "v1 v2")));
        assert_eq!(parse_line(r#"PUT k say "hi""#), Ok(put("k", r#"say "hi""#)));
    }

    #[test]
    fn quoted_keys_and_values_are_kept_verbatim() {
        assert_eq!(parse_line(r#"PUT "my key" v"#), Ok(put("my key", "v")));
        assert_eq!(
            parse_line(r#"PUT "my key" "v w  ""#),
            Ok(put("my key", "v w  "))
        );
        assert_eq!(parse_line("PUT 'a b' '  x\\n '"), Ok(put("a b", "  x\\n ")));
        assert_eq!(
            parse_line(r#"put k "line\none \"q\"""#),
            Ok(put("k", "line\none \"q\""))
        );
        assert_eq!(
            parse_line(r#"GET "my key""#),
            Ok(ReplCommand::Get {
                key: "my key".into()
            })
        );
        assert_eq!(
            parse_line("DEL 'my key'"),
            Ok(ReplCommand::Delete {
                key: "my key".into()
            })
        );
    }

    #[test]
    fn bad_quotes_are_errors() {
        for line in [
            r#"PUT "k v"#,
            "PUT k 'v",
            r#"PUT k "v" extra"#,
            r#"GET "a"b"#,
        ] {
            assert!(parse_line(line).is_err(), "{line}");
        }
    }

    #[test]
    fn blank_lines_are_empty() {
        assert_eq!(parse_line(""), Ok(ReplCommand::Empty));
        assert_eq!(parse_line("   \n"), Ok(ReplCommand::Empty));
    }

    #[test]
    fn malformed_lines_get_a_usage_hint() {
        for line in [
            "PUT",
            "PUT k",
            "GET",
            "GET a b",
            "DELETE",
            "DELETE a b",
            "FROB k",
            "EXIT now",
            r#"GET "a" b"#,
        ] {
            let error = parse_line(line).unwrap_err();
            assert!(error.contains("usage:"), "{line}: {error}");
        }
    }
}
