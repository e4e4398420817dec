//! How keys and values are written on the command line and printed: as they are, in hex, or
//! in base64. Keys travel as UTF-8 strings on the wire, so a decoded key must be UTF-8;
//! values are arbitrary bytes.

use anyhow::Context as _;
use base64::Engine as _;
use std::io::Read;
use std::path::Path;

/// Encoding of command-line keys and values and of printed values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Encoding {
    /// Bytes as given (values may be any bytes; keys must be UTF-8).
    #[default]
    Raw,
    /// Hexadecimal, two digits per byte.
    Hex,
    /// Standard base64 with padding.
    Base64,
}

impl Encoding {
    /// The encoding the `--hex` / `--base64` switches ask for (clap keeps them exclusive).
    pub(crate) fn from_flags(hex: bool, base64: bool) -> Encoding {
        match (hex, base64) {
            (true, _) => Encoding::Hex,
            (_, true) => Encoding::Base64,
            _ => Encoding::Raw,
        }
    }

    /// Decodes a command-line value.
    pub(crate) fn decode(self, text: &[u8]) -> anyhow::Result<Vec<u8>> {
        match self {
            Encoding::Raw => Ok(text.to_vec()),
            Encoding::Hex => hex::decode(text.trim_ascii()).context("not valid hex"),
            Encoding::Base64 => base64::engine::general_purpose::STANDARD
                .decode(text.trim_ascii())
                .context("not valid base64"),
        }
    }

    /// Decodes a command-line key; keys must come out as UTF-8.
    pub(crate) fn decode_key(self, text: &str) -> anyhow::Result<String> {
        let bytes = self
            .decode(text.as_bytes())
            .with_context(|| format!("key {text:?}"))?;
        String::from_utf8(bytes).map_err(|_| {
            anyhow::anyhow!(
                "key {text:?} decodes to bytes that are not UTF-8: keys are UTF-8 strings \
                 (values may be any bytes)"
            )
        })
    }

    /// [`Encoding::decode_key`], but the empty string stays empty (a prefix of every key).
    pub(crate) fn decode_key_or_empty(self, text: &str) -> anyhow::Result<String> {
        if text.is_empty() {
            return Ok(String::new());
        }
        self.decode_key(text)
    }

    /// The value as printable text; `Raw` keeps UTF-8 and falls back to base64 otherwise.
    pub(crate) fn encode_text(self, value: &[u8]) -> (String, &'static str) {
        match self {
            Encoding::Hex => (hex::encode(value), "hex"),
            Encoding::Base64 => (base64_text(value), "base64"),
            Encoding::Raw => match std::str::from_utf8(value) {
                Ok(text) => (text.to_string(), "utf8"),
                Err(_) => (base64_text(value), "base64"),
            },
        }
    }
}

fn base64_text(value: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(value)
}

/// Reads at most `limit + 1` bytes, so an oversized input is refused by the size check with
/// its real limit instead of filling memory first.
pub(crate) fn read_bounded(reader: impl Read, limit: usize) -> std::io::Result<Vec<u8>> {
    let mut value = Vec::new();
    reader.take(limit as u64 + 1).read_to_end(&mut value)?;
    Ok(value)
}

/// A value from a file, read raw.
pub(crate) fn read_file(path: &Path, limit: usize) -> anyhow::Result<Vec<u8>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    read_bounded(file, limit).with_context(|| format!("cannot read {}", path.display()))
}

/// A value from standard input, read raw.
pub(crate) fn read_stdin(limit: usize) -> anyhow::Result<Vec<u8>> {
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        eprintln!("reading the value from stdin; end it with Ctrl-D");
    }
    read_bounded(std::io::stdin().lock(), limit).context("cannot read the value from stdin")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let bytes = [0u8, 0xff, b'a', b'\n'];
        for e in [Encoding::Hex, Encoding::Base64] {
            let (text, _) = e.encode_text(&bytes);
            assert_eq!(e.decode(text.as_bytes()).unwrap(), bytes);
        }
        assert!(Encoding::Hex.decode(b"6b65 79\n").is_err());
        assert_eq!(Encoding::Hex.decode(b"6b6579\n").unwrap(), b"key");
    }

    #[test]
    fn keys_must_decode_to_utf8() {
        assert_eq!(Encoding::Hex.decode_key("6b").unwrap(), "k");
        let error = Encoding::Hex.decode_key("ff").unwrap_err().to_string();
        assert!(error.contains("not UTF-8"), "{error}");
        assert!(Encoding::Base64.decode_key("!!").is_err());
    }

    #[test]
    fn raw_text_falls_back_to_base64() {
        assert_eq!(Encoding::Raw.encode_text(b"blue"), ("blue".into(), "utf8"));
        assert_eq!(
            Encoding::Raw.encode_text(&[0xff]),
            ("/w==".into(), "base64")
        );
    }

    #[test]
    fn bounded_reads_stop_one_past_the_limit() {
        let data = [7u8; 100];
        assert_eq!(read_bounded(&data[..], 10).unwrap().len(), 11);
        assert_eq!(read_bounded(&data[..], 1000).unwrap().len(), 100);
    }
}
