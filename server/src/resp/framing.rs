//! Splitting a connection's bytes into requests, within bounds.
//!
//! `redis-protocol` decodes the frames, but it has no limits of its own: it recurses into
//! nested arrays (a deep nesting would overflow the stack) and waits for any declared bulk
//! length. So a guard first walks the request's headers the way Redis itself checks them
//! (`*N` of `$L` bulk strings only, N and L within bounds, the whole request within a byte
//! cap) and hands the crate exactly one complete, flat request. Inline commands (telnet
//! style, one line of words) are split here: the crate does not read them.

use redis_protocol::resp2::types::OwnedFrame;

/// Bounds of one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestLimits {
    /// Largest bulk string (a key or a value).
    pub max_bulk_bytes: usize,
    /// Most arguments of one request (the command name included).
    pub max_args: usize,
    /// Longest inline command line.
    pub max_inline_bytes: usize,
    /// Largest request in all, headers included.
    pub max_request_bytes: usize,
}

/// Redis's own inline limit (`PROTO_INLINE_MAX_SIZE`).
pub const DEFAULT_MAX_INLINE_BYTES: usize = 64 * 1024;
/// Most arguments of one request; bounds MGET, DEL and EXISTS too.
pub const DEFAULT_MAX_ARGS: usize = 4096;
/// Bytes a request may hold besides its largest value: keys and headers.
const REQUEST_OVERHEAD_BYTES: usize = 1024 * 1024;
/// Longest `*N` or `$L` header line; a longer one is garbage.
const MAX_HEADER_BYTES: usize = 32;

impl RequestLimits {
    /// Limits for a server whose largest value is `max_value_bytes`.
    pub fn for_max_value(max_value_bytes: usize) -> RequestLimits {
        RequestLimits {
            max_bulk_bytes: max_value_bytes.max(paxoskv::MAX_KEY_BYTES),
            max_args: DEFAULT_MAX_ARGS,
            max_inline_bytes: DEFAULT_MAX_INLINE_BYTES,
            max_request_bytes: max_value_bytes.saturating_add(REQUEST_OVERHEAD_BYTES),
        }
    }
}

/// Why the bytes are not a request; the connection answers `-ERR Protocol error: ...` and
/// closes, as Redis does.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A `*N` header that is not a number in range.
    #[error("invalid multibulk length")]
    ArrayLength,
    /// A `$L` header that is not a number in range.
    #[error("invalid bulk length")]
    BulkLength,
    /// An argument that is not a bulk string.
    #[error("expected '$', got '{0}'")]
    ExpectedBulk(char),
    /// A bulk string not followed by CRLF.
    #[error("bulk string not terminated by CRLF")]
    MissingCrlf,
    /// An inline line over the limit.
    #[error("too big inline request")]
    InlineTooLong,
    /// The arguments together are over the limit.
    #[error("request over the limit of {max_bytes} bytes")]
    RequestTooLarge {
        /// The limit.
        max_bytes: usize,
    },
    /// The decoder refused what the guard let through.
    #[error("{0}")]
    Decode(String),
}

/// A request's arguments and the bytes it used; `None` while incomplete.
pub type Next = Option<(Vec<Vec<u8>>, usize)>;

/// The next request in `buf`: its arguments and the bytes it used, `Ok(None)` while
/// incomplete. An empty request (`*0`, a blank line) yields no arguments.
pub fn next_request(buf: &[u8], limits: &RequestLimits) -> Result<Next, ProtocolError> {
    match buf.first() {
        None => Ok(None),
        Some(b'*') => multibulk(buf, limits),
        Some(_) => inline(buf, limits),
    }
}

/// A header line `<byte><number>\r\n` at `at`: the number and where the line ends.
fn header(
    buf: &[u8],
    at: usize,
    bad: ProtocolError,
) -> Result<Option<(i64, usize)>, ProtocolError> {
    let rest = &buf[at..];
    let window = &rest[..rest.len().min(MAX_HEADER_BYTES)];
    let Some(cr) = window.windows(2).position(|w| w == b"\r\n") else {
        return if rest.len() >= MAX_HEADER_BYTES {
            Err(bad)
        } else {
            Ok(None)
        };
    };
    let number = std::str::from_utf8(&window[1..cr])
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or(bad)?;
    Ok(Some((number, at + cr + 2)))
}

fn multibulk(buf: &[u8], limits: &RequestLimits) -> Result<Next, ProtocolError> {
    let Some((count, mut at)) = header(buf, 0, ProtocolError::ArrayLength)? else {
        return Ok(None);
    };
    if count <= 0 {
        // Redis skips empty and null arrays.
        return Ok(Some((Vec::new(), at)));
    }
    if count as u64 > limits.max_args as u64 {
        return Err(ProtocolError::ArrayLength);
    }
    for _ in 0..count {
        match buf.get(at) {
            None => return Ok(None),
            Some(b'$') => {}
            Some(&other) => return Err(ProtocolError::ExpectedBulk(other as char)),
        }
        let Some((len, body)) = header(buf, at, ProtocolError::BulkLength)? else {
            return Ok(None);
        };
        if len < 0 || len as u64 > limits.max_bulk_bytes as u64 {
            return Err(ProtocolError::BulkLength);
        }
        let end = body + len as usize + 2;
        if end > limits.max_request_bytes {
            return Err(ProtocolError::RequestTooLarge {
                max_bytes: limits.max_request_bytes,
            });
        }
        if buf.len() < end {
            return Ok(None);
        }
        if &buf[end - 2..end] != b"\r\n" {
            return Err(ProtocolError::MissingCrlf);
        }
        at = end;
    }
    decode(&buf[..at]).map(|args| Some((args, at)))
}

/// Decodes one complete, flat request the guard has checked.
fn decode(request: &[u8]) -> Result<Vec<Vec<u8>>, ProtocolError> {
    let bad = |what: &str| ProtocolError::Decode(what.to_string());
    match redis_protocol::resp2::decode::decode(request) {
        Ok(Some((OwnedFrame::Array(items), used))) if used == request.len() => items
            .into_iter()
            .map(|item| match item {
                OwnedFrame::BulkString(bytes) => Ok(bytes),
                _ => Err(bad("expected a bulk string")),
            })
            .collect(),
        Ok(_) => Err(bad("malformed request")),
        Err(e) => Err(ProtocolError::Decode(e.details().to_string())),
    }
}

fn inline(buf: &[u8], limits: &RequestLimits) -> Result<Next, ProtocolError> {
    let window = &buf[..buf.len().min(limits.max_inline_bytes)];
    let Some(newline) = window.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= limits.max_inline_bytes {
            Err(ProtocolError::InlineTooLong)
        } else {
            Ok(None)
        };
    };
    let args = window[..newline]
        .split(|b| b.is_ascii_whitespace())
        .filter(|w| !w.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    Ok(Some((args, newline + 1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> RequestLimits {
        RequestLimits {
            max_bulk_bytes: 16,
            max_args: 4,
            max_inline_bytes: 32,
            max_request_bytes: 64,
        }
    }

    fn args(words: &[&str]) -> Vec<Vec<u8>> {
        words.iter().map(|w| w.as_bytes().to_vec()).collect()
    }

    #[test]
    fn a_complete_request_is_split_and_the_rest_waits() {
        let buf = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$4\r\nPI";
        let (got, used) = next_request(buf, &limits()).expect("ok").expect("complete");
        assert_eq!(got, args(&["GET", "k"]));
        assert_eq!(next_request(&buf[used..], &limits()), Ok(None));
        for cut in 0..used {
            assert_eq!(next_request(&buf[..cut], &limits()), Ok(None), "cut {cut}");
        }
    }

    #[test]
    fn binary_values_survive() {
        let buf = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$4\r\n\r\n\0\xff\r\n";
        let (got, _) = next_request(buf, &limits()).expect("ok").expect("complete");
        assert_eq!(got[2], b"\r\n\0\xff".to_vec());
    }

    #[test]
    fn inline_commands_are_words_of_one_line() {
        let (got, used) = next_request(b"SET  k v\r\nPING\n", &limits())
            .expect("ok")
            .expect("complete");
        assert_eq!(got, args(&["SET", "k", "v"]));
        assert_eq!(used, 10);
        assert_eq!(next_request(b"\r\n", &limits()), Ok(Some((vec![], 2))));
        assert_eq!(
            next_request(&[b'A'; 40], &limits()),
            Err(ProtocolError::InlineTooLong)
        );
    }

    #[test]
    fn over_the_limits_is_refused_before_the_bytes_arrive() {
        let l = limits();
        assert_eq!(next_request(b"*5\r\n", &l), Err(ProtocolError::ArrayLength));
        assert_eq!(
            next_request(b"*9999999999999999999\r\n", &l),
            Err(ProtocolError::ArrayLength)
        );
        assert_eq!(
            next_request(b"*1\r\n$17\r\n", &l),
            Err(ProtocolError::BulkLength)
        );
        assert_eq!(
            next_request(b"*1\r\n$-1\r\n", &l),
            Err(ProtocolError::BulkLength)
        );
        assert_eq!(
            next_request(
                b"*4\r\n$16\r\n0123456789abcdef\r\n$16\r\n0123456789abcdef\r\n$16\r\n",
                &l
            ),
            Err(ProtocolError::RequestTooLarge { max_bytes: 64 })
        );
        assert_eq!(
            next_request(b"*1x\r\n", &l),
            Err(ProtocolError::ArrayLength)
        );
        assert_eq!(
            next_request(&[b'*'; 40], &l),
            Err(ProtocolError::ArrayLength)
        );
    }

    #[test]
    fn nested_arrays_and_other_kinds_are_refused() {
        let l = limits();
        assert_eq!(
            next_request(b"*1\r\n*1\r\n*1\r\n", &l),
            Err(ProtocolError::ExpectedBulk('*'))
        );
        assert_eq!(
            next_request(b"*1\r\n:1\r\n", &l),
            Err(ProtocolError::ExpectedBulk(':'))
        );
        assert_eq!(
            next_request(b"*1\r\n$1\r\nab\r\n", &l),
            Err(ProtocolError::MissingCrlf)
        );
    }

    #[test]
    fn empty_arrays_are_skipped() {
        assert_eq!(next_request(b"*0\r\n", &limits()), Ok(Some((vec![], 4))));
        assert_eq!(next_request(b"*-1\r\n", &limits()), Ok(Some((vec![], 5))));
    }
}
