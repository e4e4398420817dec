//! Replies, encoded as RESP2 or RESP3 (after `HELLO 3`) by `redis-protocol`.

use redis_protocol::resp2::types::{OwnedFrame as Frame2, Resp2Frame};
use redis_protocol::resp3::types::{FrameMap, OwnedFrame as Frame3, Resp3Frame};

/// One reply, independent of the protocol version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+text`.
    Simple(String),
    /// `-text` (the text starts with the error code, e.g. `ERR`).
    Error(String),
    /// `:n`.
    Int(i64),
    /// A bulk (blob) string.
    Bulk(Vec<u8>),
    /// A missing value: `$-1` in RESP2, `_` in RESP3.
    Nil,
    /// An array.
    Array(Vec<Reply>),
    /// A map: a flat array of keys and values in RESP2.
    Map(Vec<(Reply, Reply)>),
}

/// The protocol versions `HELLO` can choose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// The default.
    Resp2,
    /// After `HELLO 3`.
    Resp3,
}

impl Reply {
    /// `+OK`.
    pub fn ok() -> Reply {
        Reply::Simple("OK".into())
    }

    /// `-ERR text`.
    pub fn err(text: impl std::fmt::Display) -> Reply {
        Reply::Error(format!("ERR {text}"))
    }

    /// A value as a bulk string, or nil when absent.
    pub fn from_value(value: Option<Vec<u8>>) -> Reply {
        value.map_or(Reply::Nil, Reply::Bulk)
    }

    /// A bulk string of text.
    pub fn text(text: impl Into<String>) -> Reply {
        Reply::Bulk(text.into().into_bytes())
    }

    fn into_resp2(self) -> Frame2 {
        match self {
            Reply::Simple(s) => Frame2::SimpleString(s.into_bytes()),
            Reply::Error(e) => Frame2::Error(e),
            Reply::Int(n) => Frame2::Integer(n),
            Reply::Bulk(b) => Frame2::BulkString(b),
            Reply::Nil => Frame2::Null,
            Reply::Array(items) => {
                Frame2::Array(items.into_iter().map(Reply::into_resp2).collect())
            }
            Reply::Map(pairs) => Frame2::Array(
                pairs
                    .into_iter()
                    .flat_map(|(k, v)| [k.into_resp2(), v.into_resp2()])
                    .collect(),
            ),
        }
    }

    fn into_resp3(self) -> Frame3 {
        match self {
            Reply::Simple(s) => Frame3::SimpleString {
                data: s.into_bytes(),
                attributes: None,
            },
            Reply::Error(e) => Frame3::SimpleError {
                data: e,
                attributes: None,
            },
            Reply::Int(n) => Frame3::Number {
                data: n,
                attributes: None,
            },
            Reply::Bulk(b) => Frame3::BlobString {
                data: b,
                attributes: None,
            },
            Reply::Nil => Frame3::Null,
            Reply::Array(items) => Frame3::Array {
                data: items.into_iter().map(Reply::into_resp3).collect(),
                attributes: None,
            },
            Reply::Map(pairs) => {
                let mut data = FrameMap::default();
                for (k, v) in pairs {
                    data.insert(k.into_resp3(), v.into_resp3());
                }
                Frame3::Map {
                    data,
                    attributes: None,
                }
            }
        }
    }

    /// Appends this reply, encoded for `protocol`, to `out`.
    pub fn encode_into(self, protocol: Protocol, out: &mut Vec<u8>) {
        let start = out.len();
        let written = match protocol {
            Protocol::Resp2 => {
                let frame = self.into_resp2();
                out.resize(start + frame.encode_len(false), 0);
                redis_protocol::resp2::encode::encode(&mut out[start..], &frame, false)
            }
            Protocol::Resp3 => {
                let frame = self.into_resp3();
                out.resize(start + frame.encode_len(false), 0);
                redis_protocol::resp3::encode::complete::encode(&mut out[start..], &frame, false)
            }
        };
        match written {
            Ok(n) => out.truncate(start + n),
            Err(e) => {
                // Only a frame the crate cannot represent gets here; the client must still
                // get one reply per request, so it gets an error instead.
                out.truncate(start);
                out.extend_from_slice(format!("-ERR cannot encode the reply: {e}\r\n").as_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(reply: Reply, protocol: Protocol) -> String {
        let mut out = Vec::new();
        reply.encode_into(protocol, &mut out);
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn both_protocols_encode_as_redis_does() {
        use Protocol::*;
        assert_eq!(encoded(Reply::ok(), Resp2), "+OK\r\n");
        assert_eq!(encoded(Reply::Nil, Resp2), "$-1\r\n");
        assert_eq!(encoded(Reply::Nil, Resp3), "_\r\n");
        assert_eq!(encoded(Reply::Int(3), Resp3), ":3\r\n");
        assert_eq!(encoded(Reply::err("boom"), Resp2), "-ERR boom\r\n");
        let map = Reply::Map(vec![(Reply::text("proto"), Reply::Int(3))]);
        assert_eq!(encoded(map.clone(), Resp2), "*2\r\n$5\r\nproto\r\n:3\r\n");
        assert_eq!(encoded(map, Resp3), "%1\r\n$5\r\nproto\r\n:3\r\n");
        let array = Reply::Array(vec![Reply::Bulk(b"v".to_vec()), Reply::Nil]);
        assert_eq!(encoded(array, Resp2), "*2\r\n$1\r\nv\r\n$-1\r\n");
    }
}
