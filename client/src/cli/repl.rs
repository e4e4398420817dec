//! The interactive `repl` command: PUT/GET/DELETE/EXIT lines from stdin.

use super::{describe_outcome, status};
use paxoskv_client::Client;
use std::io::Write;
use tokio::io::{AsyncBufReadExt, BufReader};

const PROMPT: &str = "paxoskv> ";
const USAGE: &str = "usage: PUT <key> <value> | GET <key> | DELETE <key> | STATUS | HELP | EXIT";

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
    Status,
    Help,
    Exit,
    /// A blank line.
    Empty,
}

/// Parses one line. Verbs are case-insensitive; a PUT's value is the rest of the line and may
/// contain spaces. Returns a usage hint for a malformed line.
pub(crate) fn parse_line(line: &str) -> Result<ReplCommand, String> {
    let line = line.trim();
    if line.is_empty() {
        return Ok(ReplCommand::Empty);
    }
    let (verb, rest) = split_word(line);
    let (key, value) = split_word(rest);
    let key = key.to_string();
    let command = match verb.to_ascii_uppercase().as_str() {
        "PUT" if !key.is_empty() && !value.is_empty() => ReplCommand::Put {
            key,
            value: value.to_string(),
        },
        "GET" if !key.is_empty() && value.is_empty() => ReplCommand::Get { key },
        "DELETE" | "DEL" if !key.is_empty() && value.is_empty() => ReplCommand::Delete { key },
        "STATUS" if rest.is_empty() => ReplCommand::Status,
        "HELP" | "?" => ReplCommand::Help,
        "EXIT" | "QUIT" if rest.is_empty() => ReplCommand::Exit,
        _ => return Err(format!("cannot parse {line:?}; {USAGE}")),
    };
    Ok(command)
}

/// The first whitespace-separated word and the rest with leading whitespace removed.
fn split_word(text: &str) -> (&str, &str) {
    match text.split_once(char::is_whitespace) {
        Some((word, rest)) => (word, rest.trim_start()),
        None => (text, ""),
    }
}

/// Runs the REPL until EXIT or end of input. Errors of single commands are printed and the
/// loop goes on.
pub(crate) async fn run(client: &mut Client) -> anyhow::Result<u8> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        print!("{PROMPT}");
        std::io::stdout().flush()?;
        let Some(line) = lines.next_line().await? else {
            println!();
            return Ok(0);
        };
        match parse_line(&line) {
            Ok(ReplCommand::Exit) => return Ok(0),
            Ok(command) => execute(client, command).await,
            Err(hint) => println!("{hint}"),
        }
    }
}

async fn execute(client: &mut Client, command: ReplCommand) {
    let result = match command {
        ReplCommand::Put { key, value } => client
            .put(&key, value.into_bytes())
            .await
            .map(|o| describe_outcome(&o).to_string()),
        ReplCommand::Get { key } => client.get(&key).await.map(|v| match v {
            Some(value) => String::from_utf8_lossy(&value).into_owned(),
            None => "(not found)".to_string(),
        }),
        ReplCommand::Delete { key } => client
            .delete(&key)
            .await
            .map(|o| describe_outcome(&o).to_string()),
        ReplCommand::Status => {
            status::print(client).await;
            return;
        }
        ReplCommand::Help => Ok(USAGE.to_string()),
        ReplCommand::Exit | ReplCommand::Empty => return,
    };
    match result {
        Ok(text) => println!("{text}"),
        Err(e) => println!("error: {e}"),
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
        ] {
            let error = parse_line(line).unwrap_err();
            assert!(error.contains("usage:"), "{line}: {error}");
        }
    }
}
