//! The command layer: one connection's state (protocol, name, authentication) and what each
//! command does, over a [`Backend`] that holds the key-value operations.

use super::conditional::{self, Compare, Step, TxnAnswer};
use super::glob;
use super::reply::{Protocol, Reply};
use paxoskv::kv::{KeyRange, ScanPage, MAX_SCAN_LIMIT};
use paxoskv::{Op, Outcome};
use paxoskv_service::{KvError, ReplicaStatus};
use std::collections::VecDeque;

/// What the commands need of the store. Every operation is linearizable.
pub trait Backend {
    /// The value of `key`, read linearizably.
    fn get(
        &mut self,
        key: String,
    ) -> impl std::future::Future<Output = Result<Option<Vec<u8>>, KvError>> + Send;
    /// Applies `op` exactly once (within this connection's session).
    fn write(
        &mut self,
        op: Op,
    ) -> impl std::future::Future<Output = Result<Outcome, KvError>> + Send;
    /// This replica's status, for INFO.
    fn status(&mut self) -> impl std::future::Future<Output = ReplicaStatus> + Send;
    /// One page of the keys of `range` after `after`, read linearizably (at most `limit`
    /// entries, capped by the store).
    fn scan(
        &mut self,
        range: KeyRange,
        after: Option<String>,
        limit: u32,
    ) -> impl std::future::Future<Output = Result<ScanPage, KvError>> + Send;
    /// The number of keys in `range`, read linearizably.
    fn count(
        &mut self,
        range: KeyRange,
    ) -> impl std::future::Future<Output = Result<u64, KvError>> + Send;
    /// How long `key` lives: read linearizably, then its lease's time asked of the leader.
    fn ttl(
        &mut self,
        key: String,
    ) -> impl std::future::Future<Output = Result<KeyTtl, KvError>> + Send;
    /// One transaction in one log slot (exactly once within this connection's session):
    /// `then` if every comparison holds, else `otherwise`.
    fn txn(
        &mut self,
        compares: Vec<Compare>,
        then: Vec<Step>,
        otherwise: Vec<Step>,
    ) -> impl std::future::Future<Output = Result<TxnAnswer, KvError>> + Send;
}

/// A key's time to live, as TTL and PTTL report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyTtl {
    /// No such key (Redis: -2).
    Missing,
    /// The key has no lease (Redis: -1).
    Persistent,
    /// Its lease ends this long from now unless kept alive.
    Expires {
        /// Time left on the leader's lease clock.
        remaining_ms: u64,
    },
}

impl KeyTtl {
    /// Redis's answer: -2, -1, or the time left in seconds (rounded, as Redis does) or
    /// in milliseconds.
    fn reply(self, millis: bool) -> Reply {
        match self {
            KeyTtl::Missing => Reply::Int(-2),
            KeyTtl::Persistent => Reply::Int(-1),
            KeyTtl::Expires { remaining_ms } => {
                let shown = if millis {
                    remaining_ms
                } else {
                    remaining_ms.saturating_add(500) / 1000
                };
                Reply::Int(i64::try_from(shown).unwrap_or(i64::MAX))
            }
        }
    }
}

/// paxoskv's version, shown by HELLO and INFO.
const SERVER_VERSION: &str = env!("CARGO_PKG_VERSION");
/// The Redis version whose commands and replies this front end follows; clients parse
/// `redis_version` to decide what they may send.
const REDIS_COMPAT_VERSION: &str = "7.0.0";

/// One connection's state.
#[derive(Debug)]
pub struct Connection {
    /// Protocol of the replies.
    pub protocol: Protocol,
    /// Set by QUIT: close after this reply.
    pub closing: bool,
    name: Option<Vec<u8>>,
    /// The token AUTH must present; `None`: no authentication.
    token: Option<std::sync::Arc<[u8]>>,
    authenticated: bool,
    id: u64,
    /// Largest MGET reply (value bytes) this connection builds in memory.
    pub max_reply_bytes: usize,
    /// Most keys one KEYS reads; a pattern whose range holds more is refused (use SCAN).
    pub max_keys_scanned: usize,
    /// Open SCAN cursors: the number handed to the client and the key to continue after.
    /// Redis clients parse cursors as integers, so the continuation key stays here.
    cursors: VecDeque<(u64, String)>,
    /// The last cursor number handed out (0 is "start" and "done").
    last_cursor: u64,
}

/// Default of [`Connection::max_keys_scanned`]: one scan page's limit.
pub const DEFAULT_MAX_KEYS_SCANNED: usize = MAX_SCAN_LIMIT;
/// SCAN cursors one connection keeps open; the oldest is forgotten first.
const MAX_OPEN_CURSORS: usize = 256;
/// SCAN's page size without COUNT, as in Redis.
const DEFAULT_SCAN_COUNT: u32 = 10;

/// Default of [`Connection::max_reply_bytes`]: 4096 keys of 1 MiB values would otherwise
/// be a 4 GiB reply.
pub const DEFAULT_MAX_REPLY_BYTES: usize = 64 * 1024 * 1024;

/// Commands that answer `-ERR ... not supported yet` with the reason, until the data model
/// (issue 13) and the ordered map (issue 12) land.
const NOT_YET: &[(&str, &str)] = &[
    (
        "MULTI",
        "MULTI/EXEC queueing is not built; SET NX/XX, MSET, MSETNX, GETSET, INCR are each one transaction",
    ),
];

impl Connection {
    /// A connection numbered `id`; with a `token` every command but AUTH, HELLO and QUIT
    /// needs `AUTH token` first.
    pub fn new(id: u64, token: Option<std::sync::Arc<[u8]>>) -> Connection {
        Connection {
            protocol: Protocol::Resp2,
            closing: false,
            name: None,
            authenticated: token.is_none(),
            token,
            id,
            max_reply_bytes: DEFAULT_MAX_REPLY_BYTES,
            max_keys_scanned: DEFAULT_MAX_KEYS_SCANNED,
            cursors: VecDeque::new(),
            last_cursor: 0,
        }
    }

    /// Executes one request (its arguments, the command name first).
    pub async fn execute<B: Backend>(&mut self, backend: &mut B, args: Vec<Vec<u8>>) -> Reply {
        let Some(name) = args.first() else {
            return Reply::err("empty command");
        };
        let name = String::from_utf8_lossy(name).to_ascii_uppercase();
        let rest = &args[1..];
        if !self.authenticated && !matches!(name.as_str(), "AUTH" | "HELLO" | "QUIT") {
            return Reply::Error("NOAUTH Authentication required.".into());
        }
        match name.as_str() {
            "PING" => match rest {
                [] => Reply::Simple("PONG".into()),
                [message] => Reply::Bulk(message.clone()),
                _ => arity(&name),
            },
            "ECHO" => match rest {
                [message] => Reply::Bulk(message.clone()),
                _ => arity(&name),
            },
            "QUIT" => {
                self.closing = true;
                Reply::ok()
            }
            "AUTH" => match rest {
                [token] | [_, token] => self.auth(token),
                _ => arity(&name),
            },
            "HELLO" => self.hello(rest),
            "SELECT" => match rest {
                [db] if db.as_slice() == b"0" => Reply::ok(),
                [_] => Reply::err("DB index is out of range (paxoskv has database 0 only)"),
                _ => arity(&name),
            },
            "CLIENT" => self.client(rest),
            "COMMAND" => command_info(rest),
            // redis-benchmark and some clients read settings; paxoskv has none to show.
            "CONFIG" => match rest.first() {
                Some(sub) if sub.eq_ignore_ascii_case(b"GET") && rest.len() >= 2 => {
                    Reply::Map(vec![])
                }
                _ => Reply::err("CONFIG: only CONFIG GET is answered (with nothing) by paxoskv"),
            },
            "GET" => match rest {
                [key] => match key_of(key) {
                    Ok(key) => match backend.get(key).await {
                        Ok(Some(value)) => Reply::Bulk(value),
                        Ok(None) => Reply::Nil,
                        Err(e) => kv_error(&e),
                    },
                    Err(reply) => reply,
                },
                _ => arity(&name),
            },
            "MGET" if !rest.is_empty() => {
                let mut values = Vec::with_capacity(rest.len());
                let mut reply_bytes = 0usize;
                for key in rest {
                    let value = match key_of(key) {
                        // Redis answers nil for a key that cannot hold a string.
                        Err(_) => Reply::Nil,
                        Ok(key) => match backend.get(key).await {
                            Ok(Some(v)) => {
                                reply_bytes += v.len();
                                Reply::Bulk(v)
                            }
                            Ok(None) => Reply::Nil,
                            Err(e) => return kv_error(&e),
                        },
                    };
                    if reply_bytes > self.max_reply_bytes {
                        return Reply::err(format!(
                            "MGET reply over {} bytes; ask for fewer keys at once",
                            self.max_reply_bytes
                        ));
                    }
                    values.push(value);
                }
                Reply::Array(values)
            }
            "EXISTS" if !rest.is_empty() => {
                let mut count = 0;
                for key in rest {
                    let key = match key_of(key) {
                        Ok(key) => key,
                        Err(reply) => return reply,
                    };
                    match backend.get(key).await {
                        Ok(Some(_)) => count += 1,
                        Ok(None) => {}
                        Err(e) => return kv_error(&e),
                    }
                }
                Reply::Int(count)
            }
            "TTL" | "PTTL" => match rest {
                [key] => match key_of(key) {
                    Ok(key) => match backend.ttl(key).await {
                        Ok(ttl) => ttl.reply(name == "PTTL"),
                        Err(e) => kv_error(&e),
                    },
                    Err(reply) => reply,
                },
                _ => arity(&name),
            },
            "EXPIRE" => conditional::expire(backend, rest, false).await,
            "PEXPIRE" => conditional::expire(backend, rest, true).await,
            "PERSIST" => conditional::persist(backend, rest).await,
            "SET" => conditional::set(backend, rest).await,
            "SETEX" => conditional::setex(backend, rest, false).await,
            "PSETEX" => conditional::setex(backend, rest, true).await,
            "SETNX" => conditional::setnx(backend, rest).await,
            "MSET" => conditional::mset(backend, rest, false).await,
            "MSETNX" => conditional::mset(backend, rest, true).await,
            "GETSET" => conditional::get_and(backend, rest, false).await,
            "GETDEL" => conditional::get_and(backend, rest, true).await,
            "INCR" | "DECR" | "INCRBY" | "DECRBY" => {
                conditional::incr_by(backend, &name, rest).await
            }
            "APPEND" => conditional::append(backend, rest).await,
            "DEL" | "UNLINK" if !rest.is_empty() => {
                // Each key is its own linearizable delete: DEL of several keys is not atomic.
                let mut deleted = 0;
                for key in rest {
                    let key = match key_of(key) {
                        Ok(key) => key,
                        Err(reply) => return reply,
                    };
                    match backend.write(Op::Delete { key }).await {
                        Ok(Outcome::Delete { existed: true }) => deleted += 1,
                        Ok(_) => {}
                        Err(e) => return kv_error(&e),
                    }
                }
                Reply::Int(deleted)
            }
            "MGET" | "EXISTS" | "DEL" | "UNLINK" => arity(&name),
            "INFO" => Reply::Bulk(info(&backend.status().await).into_bytes()),
            "KEYS" => match rest {
                [pattern] => self.keys(backend, pattern).await,
                _ => arity(&name),
            },
            "SCAN" => match rest.split_first() {
                Some((cursor, options)) => self.scan(backend, cursor, options).await,
                None => arity(&name),
            },
            "DBSIZE" => match rest {
                [] => match backend.count(KeyRange::Prefix(String::new())).await {
                    Ok(keys) => Reply::Int(keys.try_into().unwrap_or(i64::MAX)),
                    Err(e) => kv_error(&e),
                },
                _ => arity(&name),
            },
            _ => match NOT_YET.iter().find(|(n, _)| *n == name) {
                Some((_, why)) => Reply::err(format!(
                    "'{}' is not supported yet ({why})",
                    name.to_ascii_lowercase()
                )),
                None => unknown(&args),
            },
        }
    }

    /// `KEYS pattern`: every matching key, reading at most `max_keys_scanned` keys of
    /// the pattern's literal prefix; more is refused rather than answered in part.
    async fn keys<B: Backend>(&mut self, backend: &mut B, pattern: &[u8]) -> Reply {
        if !pattern
            .iter()
            .any(|b| matches!(b, b'*' | b'?' | b'[' | b'\\'))
        {
            // No wildcard: the pattern is one key.
            return match key_of(pattern) {
                Err(_) => Reply::Array(vec![]),
                Ok(key) => match backend.get(key.clone()).await {
                    Ok(Some(_)) => Reply::Array(vec![Reply::text(key)]),
                    Ok(None) => Reply::Array(vec![]),
                    Err(e) => kv_error(&e),
                },
            };
        }
        let range = range_of(pattern);
        let mut after = None;
        let mut scanned = 0usize;
        let mut keys = Vec::new();
        loop {
            let left = self.max_keys_scanned.saturating_sub(scanned);
            let limit = left.clamp(1, MAX_SCAN_LIMIT) as u32;
            let page = match backend.scan(range.clone(), after.take(), limit).await {
                Ok(page) => page,
                Err(e) => return kv_error(&e),
            };
            scanned += page.entries.len();
            keys.extend(
                page.entries
                    .into_iter()
                    .filter(|(k, _)| glob::matches(pattern, k.as_bytes()))
                    .map(|(k, _)| Reply::text(k)),
            );
            match page.next_after {
                None => return Reply::Array(keys),
                Some(_) if scanned >= self.max_keys_scanned => {
                    return Reply::err(format!(
                        "KEYS would read more than {} keys; use SCAN with MATCH instead",
                        self.max_keys_scanned
                    ))
                }
                Some(next) => after = Some(next),
            }
        }
    }

    /// `SCAN cursor [MATCH pattern] [COUNT count] [TYPE type]`: one page of the
    /// linearizable scan. COUNT keys are read (as in Redis, fewer may match).
    async fn scan<B: Backend>(
        &mut self,
        backend: &mut B,
        cursor: &[u8],
        options: &[Vec<u8>],
    ) -> Reply {
        let after = if cursor == b"0" {
            None
        } else {
            let number = std::str::from_utf8(cursor)
                .ok()
                .and_then(|c| c.parse::<u64>().ok());
            let Some(number) = number else {
                return Reply::err("invalid cursor");
            };
            match self.cursors.iter().find(|(n, _)| *n == number) {
                Some((_, key)) => Some(key.clone()),
                None => {
                    return Reply::err(
                        "invalid cursor (paxoskv cursors belong to the connection that opened them, and it keeps the last 256)",
                    )
                }
            }
        };
        let mut pattern: Option<&[u8]> = None;
        let mut count = DEFAULT_SCAN_COUNT;
        let mut strings_only = true;
        let mut rest = options;
        loop {
            match rest {
                [] => break,
                [option, value, more @ ..] => {
                    match option.to_ascii_uppercase().as_slice() {
                        b"MATCH" => pattern = Some(value),
                        b"COUNT" => match parse_int(value) {
                            Some(n) if n >= 1 => {
                                count = n.min(MAX_SCAN_LIMIT as i64) as u32;
                            }
                            Some(_) => return Reply::err("syntax error"),
                            None => return not_an_integer(),
                        },
                        // Every paxoskv value is a string.
                        b"TYPE" => strings_only = value.eq_ignore_ascii_case(b"string"),
                        _ => return Reply::err("syntax error"),
                    }
                    rest = more;
                }
                [_] => return Reply::err("syntax error"),
            }
        }
        let range = match pattern {
            Some(p) => range_of(p),
            None => KeyRange::Prefix(String::new()),
        };
        let page = match backend.scan(range, after, count).await {
            Ok(page) => page,
            Err(e) => return kv_error(&e),
        };
        let keys = page
            .entries
            .into_iter()
            .filter(|(k, _)| strings_only && pattern.is_none_or(|p| glob::matches(p, k.as_bytes())))
            .map(|(k, _)| Reply::text(k))
            .collect();
        let next = match page.next_after {
            None => 0,
            Some(key) => self.open_cursor(key),
        };
        Reply::Array(vec![Reply::text(next.to_string()), Reply::Array(keys)])
    }

    /// A new cursor number for continuing after `key`.
    fn open_cursor(&mut self, key: String) -> u64 {
        self.last_cursor += 1;
        if self.cursors.len() >= MAX_OPEN_CURSORS {
            self.cursors.pop_front();
        }
        self.cursors.push_back((self.last_cursor, key));
        debug_assert!(self.cursors.len() <= MAX_OPEN_CURSORS);
        self.last_cursor
    }

    fn auth(&mut self, presented: &[u8]) -> Reply {
        match &self.token {
            None => Reply::err(
                "AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
            ),
            Some(token) if paxoskv_service::tls::tokens_equal(token, presented) => {
                self.authenticated = true;
                Reply::ok()
            }
            Some(_) => {
                Reply::Error("WRONGPASS invalid username-password pair or user is disabled.".into())
            }
        }
    }

    /// `HELLO [protover [AUTH username password] [SETNAME clientname]]`.
    fn hello(&mut self, args: &[Vec<u8>]) -> Reply {
        let mut protocol = self.protocol;
        let mut rest = args;
        if let Some((version, more)) = rest.split_first() {
            protocol = match version.as_slice() {
                b"2" => Protocol::Resp2,
                b"3" => Protocol::Resp3,
                _ => return Reply::Error("NOPROTO unsupported protocol version".into()),
            };
            rest = more;
        }
        let mut name = None;
        loop {
            match rest {
                [] => break,
                [option, _, password, more @ ..] if option.eq_ignore_ascii_case(b"AUTH") => {
                    if let Reply::Error(e) = self.auth(password) {
                        return Reply::Error(e);
                    }
                    rest = more;
                }
                [option, client, more @ ..] if option.eq_ignore_ascii_case(b"SETNAME") => {
                    name = Some(client.clone());
                    rest = more;
                }
                [option, ..] => {
                    return Reply::err(format!(
                        "Syntax error in HELLO option '{}'",
                        String::from_utf8_lossy(option)
                    ))
                }
            }
        }
        if !self.authenticated {
            return Reply::Error(
                "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time".into(),
            );
        }
        self.protocol = protocol;
        if name.is_some() {
            self.name = name;
        }
        let proto = match protocol {
            Protocol::Resp2 => 2,
            Protocol::Resp3 => 3,
        };
        Reply::Map(vec![
            (Reply::text("server"), Reply::text("paxoskv")),
            (Reply::text("version"), Reply::text(REDIS_COMPAT_VERSION)),
            (Reply::text("proto"), Reply::Int(proto)),
            (Reply::text("id"), Reply::Int(self.id as i64)),
            (Reply::text("mode"), Reply::text("standalone")),
            (Reply::text("role"), Reply::text("master")),
            (Reply::text("modules"), Reply::Array(vec![])),
        ])
    }

    fn client(&mut self, args: &[Vec<u8>]) -> Reply {
        let Some((sub, rest)) = args.split_first() else {
            return arity("CLIENT");
        };
        match (sub.to_ascii_uppercase().as_slice(), rest) {
            (b"SETNAME", [name]) => {
                if name.iter().any(|b| b.is_ascii_whitespace()) {
                    return Reply::err(
                        "Client names cannot contain spaces, newlines or special characters.",
                    );
                }
                self.name = (!name.is_empty()).then(|| name.clone());
                Reply::ok()
            }
            (b"GETNAME", []) => match &self.name {
                Some(name) => Reply::Bulk(name.clone()),
                None => Reply::Nil,
            },
            (b"ID", []) => Reply::Int(self.id as i64),
            // Client libraries announce themselves; nothing to keep.
            (b"SETINFO", [_, _]) => Reply::ok(),
            _ => Reply::err(format!(
                "unknown subcommand or wrong number of arguments for 'CLIENT|{}'",
                String::from_utf8_lossy(sub)
            )),
        }
    }
}

/// The commands paxoskv answers, for COMMAND DOCS: name, group, summary (paxoskv's).
const DOCS: &[(&str, &str, &str)] = &[
    (
        "GET",
        "string",
        "Returns the value of a key, read linearizably.",
    ),
    ("SET", "string", "Sets a key through the replicated log."),
    (
        "SETNX",
        "string",
        "Sets a key if it does not exist, in one transaction.",
    ),
    ("MSET", "string", "Sets keys in one transaction."),
    (
        "MSETNX",
        "string",
        "Sets keys if none exists, in one transaction.",
    ),
    (
        "GETSET",
        "string",
        "Sets a key and returns its old value, in one transaction.",
    ),
    (
        "GETDEL",
        "string",
        "Deletes a key and returns its value, in one transaction.",
    ),
    (
        "INCR",
        "string",
        "Adds 1 to an integer by compare-and-swap.",
    ),
    (
        "DECR",
        "string",
        "Subtracts 1 from an integer by compare-and-swap.",
    ),
    (
        "INCRBY",
        "string",
        "Adds to an integer by compare-and-swap.",
    ),
    (
        "DECRBY",
        "string",
        "Subtracts from an integer by compare-and-swap.",
    ),
    (
        "APPEND",
        "string",
        "Appends to a value by compare-and-swap.",
    ),
    (
        "MGET",
        "string",
        "Returns the values of keys, each read linearizably.",
    ),
    ("DEL", "generic", "Deletes keys, each in its own log slot."),
    ("UNLINK", "generic", "Same as DEL."),
    ("EXISTS", "generic", "Counts the keys that exist."),
    (
        "TTL",
        "generic",
        "Returns a key's time to live in seconds (its lease's, on the leader's clock).",
    ),
    (
        "PTTL",
        "generic",
        "Returns a key's time to live in milliseconds.",
    ),
    (
        "EXPIRE",
        "generic",
        "Puts the key's value again on a new lease of that many seconds.",
    ),
    (
        "PEXPIRE",
        "generic",
        "Puts the key's value again on a new lease of that many milliseconds.",
    ),
    (
        "PERSIST",
        "generic",
        "Puts the key's value again without its lease.",
    ),
    (
        "KEYS",
        "generic",
        "Returns the keys matching a glob (bounded: use SCAN for more).",
    ),
    (
        "SCAN",
        "generic",
        "Iterates the keys in byte order with a per-connection cursor.",
    ),
    (
        "DBSIZE",
        "server",
        "Returns the number of keys, counted linearizably.",
    ),
    (
        "INFO",
        "server",
        "Returns replication role, leader and applied slot.",
    ),
    ("PING", "connection", "Returns PONG or the message."),
    ("ECHO", "connection", "Returns the message."),
    (
        "HELLO",
        "connection",
        "Chooses RESP2 or RESP3 and authenticates.",
    ),
    ("AUTH", "connection", "Presents the replica's token."),
    ("SELECT", "connection", "Accepts database 0 only."),
    ("CLIENT", "connection", "SETNAME, GETNAME, ID, SETINFO."),
    ("QUIT", "connection", "Closes the connection."),
    ("COMMAND", "server", "DOCS, COUNT and INFO, minimal."),
    ("CONFIG", "server", "GET answers with nothing."),
];

/// Minimal COMMAND: enough for redis-cli to start (it asks for COMMAND DOCS).
fn command_info(args: &[Vec<u8>]) -> Reply {
    let Some((sub, rest)) = args.split_first() else {
        return Reply::Array(vec![]);
    };
    match sub.to_ascii_uppercase().as_slice() {
        b"DOCS" => {
            let wanted = |name: &str| {
                rest.is_empty() || rest.iter().any(|r| r.eq_ignore_ascii_case(name.as_bytes()))
            };
            Reply::Map(
                DOCS.iter()
                    .filter(|(name, _, _)| wanted(name))
                    .map(|(name, group, summary)| {
                        let doc = Reply::Map(vec![
                            (Reply::text("summary"), Reply::text(*summary)),
                            (Reply::text("since"), Reply::text("1.0.0")),
                            (Reply::text("group"), Reply::text(*group)),
                        ]);
                        (Reply::text(name.to_ascii_lowercase()), doc)
                    })
                    .collect(),
            )
        }
        b"COUNT" => Reply::Int(DOCS.len() as i64),
        b"INFO" => Reply::Array(rest.iter().map(|_| Reply::Nil).collect()),
        _ => Reply::err(format!(
            "unknown subcommand '{}'. Try COMMAND HELP.",
            String::from_utf8_lossy(sub)
        )),
    }
}

/// A key as paxoskv stores it (UTF-8, within the key limit).
pub(super) fn key_of(key: &[u8]) -> Result<String, Reply> {
    let key =
        String::from_utf8(key.to_vec()).map_err(|_| Reply::err("keys must be UTF-8 in paxoskv"))?;
    paxoskv::check_key(&key).map_err(Reply::err)?;
    Ok(key)
}

/// The range a glob pattern's matches lie in: its literal prefix (every key, when that
/// prefix is not UTF-8 and so cannot be a key's start).
fn range_of(pattern: &[u8]) -> KeyRange {
    KeyRange::Prefix(String::from_utf8(glob::literal_prefix(pattern)).unwrap_or_default())
}

/// A decimal integer argument, as Redis parses one.
pub(super) fn parse_int(arg: &[u8]) -> Option<i64> {
    std::str::from_utf8(arg).ok()?.parse().ok()
}

pub(super) fn not_an_integer() -> Reply {
    Reply::err("value is not an integer or out of range")
}

pub(super) fn kv_error(error: &KvError) -> Reply {
    match error {
        KvError::Busy(_) => Reply::Error(format!("BUSY {error}")),
        KvError::NotLeader { .. } | KvError::Unavailable { .. } | KvError::Timeout { .. } => {
            Reply::Error(format!("TRYAGAIN {error}"))
        }
        _ => Reply::err(error),
    }
}

pub(super) fn arity(name: &str) -> Reply {
    Reply::err(format!(
        "wrong number of arguments for '{}' command",
        name.to_ascii_lowercase()
    ))
}

/// Redis's wording, so clients and scripts that match on it keep working.
fn unknown(args: &[Vec<u8>]) -> Reply {
    let shown = |a: &Vec<u8>| {
        let text = String::from_utf8_lossy(a);
        text.chars().take(128).collect::<String>()
    };
    let with: String = args[1..]
        .iter()
        .take(8)
        .map(|a| format!("'{}' ", shown(a)))
        .collect();
    Reply::err(format!(
        "unknown command '{}', with args beginning with: {with}",
        shown(&args[0])
    ))
}

fn info(status: &ReplicaStatus) -> String {
    let role = if status.role == "leader" {
        "master"
    } else {
        "slave"
    };
    let leader = status
        .leader
        .map(|l| l.to_string())
        .unwrap_or_else(|| "unknown".into());
    let leader_addr = status.leader_addr.as_deref().unwrap_or("unknown");
    format!(
        "# Server\r\nredis_version:{REDIS_COMPAT_VERSION}\r\nserver_name:paxoskv\r\npaxoskv_version:{SERVER_VERSION}\r\npaxoskv_replica:{}\r\n\r\n\
         # Replication\r\nrole:{role}\r\npaxoskv_role:{}\r\nleader:{leader}\r\nleader_addr:{leader_addr}\r\n\
         applied_slot:{}\r\n\r\n# Keyspace\r\ndb0:keys={}\r\n",
        status.id, status.role, status.applied_through, status.keys
    )
}

/// An in-memory [`Backend`] for tests of the command and connection layers.
#[cfg(test)]
pub(crate) mod memory {
    use super::*;
    use std::collections::BTreeMap;

    type Map = BTreeMap<String, Vec<u8>>;
    /// Another client's write, run just before a transaction.
    pub(crate) type Interloper = Box<dyn FnOnce(&mut Map) + Send>;

    /// An in-memory store: the command layer's behaviour without a cluster.
    #[derive(Default)]
    pub(crate) struct Memory {
        pub(crate) map: Map,
        pub(crate) fail_with: Option<KvError>,
        /// A write by "another client" just before the next transaction (a CAS conflict).
        pub(crate) before_txn: Option<Interloper>,
        /// TTLs of the leases granted (lease id = index + 1).
        pub(crate) leases: Vec<u64>,
        /// Keys put with a lease, and which.
        pub(crate) leased: std::collections::BTreeMap<String, u64>,
    }

    impl Backend for Memory {
        async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, KvError> {
            match &self.fail_with {
                Some(e) => Err(e.clone()),
                None => Ok(self.map.get(&key).cloned()),
            }
        }

        async fn ttl(&mut self, key: String) -> Result<KeyTtl, KvError> {
            if let Some(e) = &self.fail_with {
                return Err(e.clone());
            }
            if !self.map.contains_key(&key) {
                return Ok(KeyTtl::Missing);
            }
            Ok(match self.leased.get(&key) {
                Some(lease) => KeyTtl::Expires {
                    remaining_ms: self.leases[*lease as usize - 1],
                },
                None => KeyTtl::Persistent,
            })
        }

        async fn write(&mut self, op: Op) -> Result<Outcome, KvError> {
            if let Some(e) = &self.fail_with {
                return Err(e.clone());
            }
            Ok(match op {
                Op::Put { key, value } => Outcome::Put {
                    replaced: self.map.insert(key, value).is_some(),
                },
                Op::Delete { key } => Outcome::Delete {
                    existed: self.map.remove(&key).is_some(),
                },
                Op::Register => Outcome::Registered,
                Op::Txn(_) => return Err(KvError::InvalidRequest("no txn in the fake".into())),
                Op::LeaseGrant { ttl_ms } => {
                    self.leases.push(ttl_ms);
                    Outcome::LeaseGranted {
                        id: paxoskv::LeaseId(self.leases.len() as u64),
                        ttl_ms,
                    }
                }
                _ => return Err(KvError::InvalidRequest("no revokes in the fake".into())),
            })
        }

        async fn status(&mut self) -> ReplicaStatus {
            ReplicaStatus {
                id: 2,
                role: "follower".into(),
                leader: Some(0),
                leader_addr: Some("127.0.0.1:15000".into()),
                applied_through: 42,
                keys: self.map.len() as u64,
                ..ReplicaStatus::default()
            }
        }

        async fn scan(
            &mut self,
            range: KeyRange,
            after: Option<String>,
            limit: u32,
        ) -> Result<ScanPage, KvError> {
            if let Some(e) = &self.fail_with {
                return Err(e.clone());
            }
            let limit = (limit as usize).clamp(1, MAX_SCAN_LIMIT);
            let mut matching = self
                .map
                .iter()
                .filter(|(k, _)| range.contains(k))
                .filter(|(k, _)| after.as_ref().is_none_or(|a| *k > a));
            let entries: Vec<_> = matching
                .by_ref()
                .take(limit)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let more = matching.next().is_some();
            Ok(ScanPage {
                next_after: more
                    .then(|| entries.last().map(|(k, _)| k.clone()))
                    .flatten(),
                entries,
            })
        }

        async fn count(&mut self, range: KeyRange) -> Result<u64, KvError> {
            match &self.fail_with {
                Some(e) => Err(e.clone()),
                None => Ok(self.map.keys().filter(|k| range.contains(k)).count() as u64),
            }
        }

        async fn txn(
            &mut self,
            compares: Vec<Compare>,
            then: Vec<Step>,
            otherwise: Vec<Step>,
        ) -> Result<TxnAnswer, KvError> {
            if let Some(e) = &self.fail_with {
                return Err(e.clone());
            }
            if let Some(change) = self.before_txn.take() {
                change(&mut self.map);
            }
            let succeeded = compares.iter().all(|c| match c {
                Compare::Absent(k) => !self.map.contains_key(k),
                Compare::Exists(k) => self.map.contains_key(k),
                Compare::ValueIs(k, v) => self.map.get(k) == Some(v),
            });
            let mut gets = Vec::new();
            for step in if succeeded { then } else { otherwise } {
                match step {
                    Step::Get(k) => gets.push(self.map.get(&k).cloned()),
                    // As in the store: a plain put or a delete detaches the key.
                    Step::Put(k, v) => {
                        self.leased.remove(&k);
                        self.map.insert(k, v);
                    }
                    Step::Delete(k) => {
                        self.leased.remove(&k);
                        self.map.remove(&k);
                    }
                    Step::PutLeased(k, v, lease) => {
                        self.leased.insert(k.clone(), lease);
                        self.map.insert(k, v);
                    }
                }
            }
            Ok(TxnAnswer { succeeded, gets })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::memory::Memory;
    use super::*;

    fn run(conn: &mut Connection, store: &mut Memory, words: &[&str]) -> Reply {
        let args = words.iter().map(|w| w.as_bytes().to_vec()).collect();
        // A runtime with a clock: the compare-and-swap retry pauses with tokio's timer.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("test runtime");
        runtime.block_on(conn.execute(store, args))
    }

    fn bulk(s: &str) -> Reply {
        Reply::Bulk(s.as_bytes().to_vec())
    }

    #[test]
    fn set_get_del_exists_mget_round_trip() {
        let (mut c, mut m) = (Connection::new(1, None), Memory::default());
        assert_eq!(run(&mut c, &mut m, &["set", "a", "1"]), Reply::ok());
        assert_eq!(run(&mut c, &mut m, &["SET", "b", "2"]), Reply::ok());
        assert_eq!(run(&mut c, &mut m, &["GET", "a"]), bulk("1"));
        assert_eq!(run(&mut c, &mut m, &["GET", "zz"]), Reply::Nil);
        assert_eq!(
            run(&mut c, &mut m, &["EXISTS", "a", "zz", "b"]),
            Reply::Int(2)
        );
        assert_eq!(
            run(&mut c, &mut m, &["MGET", "a", "zz", "b"]),
            Reply::Array(vec![bulk("1"), Reply::Nil, bulk("2")])
        );
        assert_eq!(run(&mut c, &mut m, &["DEL", "a", "zz", "b"]), Reply::Int(2));
        assert_eq!(run(&mut c, &mut m, &["DEL", "a"]), Reply::Int(0));
        assert_eq!(run(&mut c, &mut m, &["GET", "a"]), Reply::Nil);
    }

    #[test]
    fn an_mget_reply_is_bounded() {
        let (mut c, mut m) = (Connection::new(1, None), Memory::default());
        c.max_reply_bytes = 10;
        assert_eq!(run(&mut c, &mut m, &["SET", "a", "123456"]), Reply::ok());
        assert_eq!(
            run(&mut c, &mut m, &["MGET", "a", "b"]),
            Reply::Array(vec![bulk("123456"), Reply::Nil])
        );
        let Reply::Error(e) = run(&mut c, &mut m, &["MGET", "a", "a"]) else {
            panic!("an oversize MGET answered")
        };
        assert!(e.contains("MGET reply over 10 bytes"), "{e}");
    }

    #[test]
    fn set_nx_xx_get_and_setnx_compare_in_one_transaction() {
        let (mut c, mut m) = (Connection::new(1, None), Memory::default());
        assert_eq!(run(&mut c, &mut m, &["SET", "k", "1", "XX"]), Reply::Nil);
        assert_eq!(run(&mut c, &mut m, &["GET", "k"]), Reply::Nil);
        assert_eq!(run(&mut c, &mut m, &["SET", "k", "1", "NX"]), Reply::ok());
        assert_eq!(run(&mut c, &mut m, &["SET", "k", "2", "nx"]), Reply::Nil);
        assert_eq!(run(&mut c, &mut m, &["GET", "k"]), bulk("1"));
        assert_eq!(run(&mut c, &mut m, &["SET", "k", "3", "XX"]), Reply::ok());
        assert_eq!(run(&mut c, &mut m, &["SET", "k", "4", "GET"]), bulk("3"));
        assert_eq!(
            run(&mut c, &mut m, &["SET", "k", "5", "NX", "GET"]),
            bulk("4")
        );
        assert_eq!(run(&mut c, &mut m, &["GET", "k"]), bulk("4"));
        assert_eq!(run(&mut c, &mut m, &["SET", "n", "1", "GET"]), Reply::Nil);
        assert_eq!(run(&mut c, &mut m, &["SETNX", "n", "2"]), Reply::Int(0));
        assert_eq!(run(&mut c, &mut m, &["SETNX", "s", "2"]), Reply::Int(1));
        assert_eq!(run(&mut c, &mut m, &["GET", "s"]), bulk("2"));
        for bad in [
            &["SET", "k", "9", "NX", "XX"][..],
            &["SET", "k", "9", "BOGUS"][..],
        ] {
            assert_eq!(
                run(&mut c, &mut m, bad),
                Reply::Error("ERR syntax error".into())
            );
        }
        for option in ["EXAT", "PXAT", "KEEPTTL"] {
            let Reply::Error(e) = run(&mut c, &mut m, &["SET", "k", "9", option, "10"]) else {
                panic!("{option} answered")
            };
            assert!(e.contains("not supported"), "{e}");
        }
        for bad in [
            &["SET", "k", "9", "EX", "0"][..],
            &["SET", "k", "9", "PX", "999"][..],
        ] {
            let Reply::Error(e) = run(&mut c, &mut m, bad) else {
                panic!("{bad:?} answered")
            };
            assert!(e.contains("invalid expire time"), "{e}");
        }
        assert_eq!(
            run(&mut c, &mut m, &["GET", "k"]),
            bulk("4"),
            "refused SETs wrote nothing"
        );
    }

    #[test]
    fn set_ex_px_and_setex_grant_a_lease_and_attach_the_key() {
        let (mut c, mut m) = (Connection::new(1, None), Memory::default());
        assert_eq!(
            run(&mut c, &mut m, &["SET", "a", "1", "EX", "10"]),
            Reply::ok()
        );
        assert_eq!(run(&mut c, &mut m, &["SETEX", "b", "5", "2"]), Reply::ok());
        assert_eq!(
            run(&mut c, &mut m, &["PSETEX", "c", "1500", "3"]),
            Reply::ok()
        );
        assert_eq!(m.leases, [10_000, 5_000, 1_500]);
        assert_eq!(m.leased.get("a"), Some(&1));
        assert_eq!(m.leased.get("c"), Some(&3));
        assert_eq!(run(&mut c, &mut m, &["GET", "b"]), bulk("2"));
        // TTL rounds to seconds as Redis does; -1 without a lease, -2 without the key.
        assert_eq!(run(&mut c, &mut m, &["TTL", "c"]), Reply::Int(2));
        assert_eq!(run(&mut c, &mut m, &["PTTL", "c"]), Reply::Int(1_500));
        assert_eq!(run(&mut c, &mut m, &["TTL", "a"]), Reply::Int(10));
        assert_eq!(run(&mut c, &mut m, &["SET", "p", "x"]), Reply::ok());
        assert_eq!(run(&mut c, &mut m, &["TTL", "p"]), Reply::Int(-1));
        assert_eq!(run(&mut c, &mut m, &["PTTL", "nope"]), Reply::Int(-2));
        assert_eq!(run(&mut c, &mut m, &["TTL"]), arity("TTL"));
        // NX on an existing key: nothing written (the granted lease just expires).
        assert_eq!(
            run(&mut c, &mut m, &["SET", "a", "9", "NX", "PX", "2000"]),
            Reply::Nil
        );
        assert_eq!(run(&mut c, &mut m, &["GET", "a"]), bulk("1"));
        assert_eq!(
            run(&mut c, &mut m, &["SET", "a", "9", "EX", "x"]),
            Reply::Error("ERR value is not an integer or out of range".into())
        );
        assert_eq!(
            run(&mut c, &mut m, &["SET", "a", "9", "EX", "1", "PX", "1"]),
            Reply::Error("ERR syntax error".into())
        );
        assert!(matches!(
            run(&mut c, &mut m, &["SETEX", "a", "1"]),
            Reply::Error(_)
        ));
    }

    #[test]
    fn mset_msetnx_getset_getdel() {
        let (mut c, mut m) = (Connection::new(1, None), Memory::default());
        assert_eq!(
            run(&mut c, &mut m, &["MSET", "a", "1", "b", "2"]),
            Reply::ok()
        );
        assert_eq!(
            run(&mut c, &mut m, &["MGET", "a", "b"]),
            Reply::Array(vec![bulk("1"), bulk("2")])
        );
        assert!(matches!(
            run(&mut c, &mut m, &["MSET", "a"]),
            Reply::Error(_)
        ));
        assert_eq!(
            run(&mut c, &mut m, &["MSETNX", "b", "9", "c", "3"]),
            Reply::Int(0)
        );
        assert_eq!(
            run(&mut c, &mut m, &["GET", "c"]),
            Reply::Nil,
            "all or nothing"
        );
        assert_eq!(
            run(&mut c, &mut m, &["MSETNX", "c", "3", "d", "4"]),
            Reply::Int(1)
        );
        assert_eq!(run(&mut c, &mut m, &["GETSET", "a", "10"]), bulk("1"));
        assert_eq!(run(&mut c, &mut m, &["GET", "a"]), bulk("10"));
        assert_eq!(run(&mut c, &mut m, &["GETSET", "new", "x"]), Reply::Nil);
        assert_eq!(run(&mut c, &mut m, &["GETDEL", "new"]), bulk("x"));
        assert_eq!(run(&mut c, &mut m, &["GETDEL", "new"]), Reply::Nil);
        assert_eq!(run(&mut c, &mut m, &["EXISTS", "new"]), Reply::Int(0));
    }

    #[test]
    fn incr_decr_and_append_are_compare_and_swap() {
        let (mut c, mut m) = (Connection::new(1, None), Memory::default());
        assert_eq!(run(&mut c, &mut m, &["INCR", "n"]), Reply::Int(1));
        assert_eq!(run(&mut c, &mut m, &["INCRBY", "n", "41"]), Reply::Int(42));
        assert_eq!(run(&mut c, &mut m, &["DECR", "n"]), Reply::Int(41));
        assert_eq!(run(&mut c, &mut m, &["DECRBY", "n", "50"]), Reply::Int(-9));
        assert_eq!(run(&mut c, &mut m, &["GET", "n"]), bulk("-9"));
        // Another client's write between the read and the transaction: retried from it.
        m.before_txn = Some(Box::new(|map| {
            map.insert("n".into(), b"100".to_vec());
        }));
        assert_eq!(run(&mut c, &mut m, &["INCR", "n"]), Reply::Int(101));
        let not_int = Reply::Error("ERR value is not an integer or out of range".into());
        assert_eq!(run(&mut c, &mut m, &["SET", "s", "abc"]), Reply::ok());
        assert_eq!(run(&mut c, &mut m, &["INCR", "s"]), not_int);
        assert_eq!(run(&mut c, &mut m, &["INCRBY", "n", "x"]), not_int);
        assert_eq!(
            run(&mut c, &mut m, &["SET", "max", &i64::MAX.to_string()]),
            Reply::ok()
        );
        let Reply::Error(e) = run(&mut c, &mut m, &["INCR", "max"]) else {
            panic!("overflow answered")
        };
        assert!(e.contains("would overflow"), "{e}");
        assert_eq!(run(&mut c, &mut m, &["GET", "s"]), bulk("abc"));
        assert_eq!(run(&mut c, &mut m, &["APPEND", "s", "de"]), Reply::Int(5));
        assert_eq!(run(&mut c, &mut m, &["APPEND", "t", "x"]), Reply::Int(1));
        assert_eq!(run(&mut c, &mut m, &["GET", "s"]), bulk("abcde"));
    }

    #[test]
    fn expire_puts_the_value_again_on_a_new_lease_and_persist_takes_it_off() {
        let (mut c, mut m) = (Connection::new(1, None), Memory::default());
        assert_eq!(run(&mut c, &mut m, &["SET", "s", "abc"]), Reply::ok());
        assert_eq!(run(&mut c, &mut m, &["TTL", "s"]), Reply::Int(-1));
        assert_eq!(run(&mut c, &mut m, &["EXPIRE", "s", "10"]), Reply::Int(1));
        assert_eq!(m.leases, [10_000]);
        assert_eq!(m.leased.get("s"), Some(&1));
        assert_eq!(
            run(&mut c, &mut m, &["GET", "s"]),
            bulk("abc"),
            "value kept"
        );
        assert_eq!(run(&mut c, &mut m, &["PTTL", "s"]), Reply::Int(10_000));
        assert_eq!(
            run(&mut c, &mut m, &["PEXPIRE", "s", "2500"]),
            Reply::Int(1)
        );
        assert_eq!(m.leased.get("s"), Some(&2));
        // A missing key: 0, and no lease granted for it.
        assert_eq!(
            run(&mut c, &mut m, &["EXPIRE", "nope", "10"]),
            Reply::Int(0)
        );
        assert_eq!(m.leases.len(), 2);
        assert_eq!(run(&mut c, &mut m, &["PERSIST", "s"]), Reply::Int(1));
        assert_eq!(m.leased.get("s"), None);
        assert_eq!(run(&mut c, &mut m, &["TTL", "s"]), Reply::Int(-1));
        assert_eq!(run(&mut c, &mut m, &["GET", "s"]), bulk("abc"));
        assert_eq!(run(&mut c, &mut m, &["PERSIST", "s"]), Reply::Int(0));
        assert_eq!(run(&mut c, &mut m, &["PERSIST", "nope"]), Reply::Int(0));
        // Refused, nothing written: too short, not positive, options.
        for (args, want) in [
            (
                &["PEXPIRE", "s", "999"][..],
                "invalid expire time in 'pexpire'",
            ),
            (&["EXPIRE", "s", "0"][..], "invalid expire time in 'expire'"),
            (
                &["EXPIRE", "s", "10", "NX"][..],
                "option 'NX' is not supported",
            ),
            (&["EXPIRE", "s", "ten"][..], "not an integer"),
        ] {
            let Reply::Error(e) = run(&mut c, &mut m, args) else {
                panic!("{args:?} answered")
            };
            assert!(e.contains(want), "{args:?}: {e}");
        }
        assert_eq!(m.leases.len(), 2);
        assert_eq!(m.leased.get("s"), None);
    }

    fn keys_of(reply: Reply) -> Vec<String> {
        let Reply::Array(items) = reply else {
            panic!("not an array: {reply:?}")
        };
        items
            .into_iter()
            .map(|r| match r {
                Reply::Bulk(b) => String::from_utf8(b).expect("utf-8"),
                other => panic!("not a bulk: {other:?}"),
            })
            .collect()
    }

    fn filled(n: usize) -> Memory {
        let mut m = Memory::default();
        for i in 0..n {
            m.map.insert(format!("user:{i:03}"), b"v".to_vec());
        }
        m.map.insert("other".into(), b"o".to_vec());
        m.map.insert("user".into(), b"u".to_vec());
        m
    }

    #[test]
    fn keys_matches_globs_and_refuses_too_large_a_range() {
        let (mut c, mut m) = (Connection::new(1, None), filled(30));
        let all = keys_of(run(&mut c, &mut m, &["KEYS", "*"]));
        assert_eq!(all.len(), 32);
        assert!(all.is_sorted());
        let users = keys_of(run(&mut c, &mut m, &["KEYS", "user:*"]));
        assert_eq!(users.len(), 30);
        assert!(users.iter().all(|k| k.starts_with("user:")));
        assert_eq!(
            keys_of(run(&mut c, &mut m, &["KEYS", "user:00?"])),
            (0..10).map(|i| format!("user:00{i}")).collect::<Vec<_>>()
        );
        assert_eq!(keys_of(run(&mut c, &mut m, &["KEYS", "user"])), ["user"]);
        assert_eq!(keys_of(run(&mut c, &mut m, &["KEYS", "nope"])), [""; 0]);
        assert_eq!(
            keys_of(run(&mut c, &mut m, &["KEYS", "*er"])),
            ["other", "user"]
        );
        c.max_keys_scanned = 30;
        // 30 keys start with "user:", and nothing else: exactly the limit is answered.
        assert_eq!(keys_of(run(&mut c, &mut m, &["KEYS", "user:*"])).len(), 30);
        let Reply::Error(e) = run(&mut c, &mut m, &["KEYS", "*"]) else {
            panic!("KEYS over the limit answered")
        };
        assert!(e.contains("KEYS would read more than 30 keys"), "{e}");
    }

    /// Runs a SCAN to the end with `options`; returns the keys and the pages it took.
    fn scan_all(c: &mut Connection, m: &mut Memory, options: &[&str]) -> (Vec<String>, usize) {
        let (mut cursor, mut keys, mut pages) = ("0".to_string(), Vec::new(), 0);
        loop {
            let mut words = vec!["SCAN", cursor.as_str()];
            words.extend_from_slice(options);
            let Reply::Array(reply) = run(c, m, &words) else {
                panic!("SCAN is an array")
            };
            let [Reply::Bulk(next), page] = <[Reply; 2]>::try_from(reply).expect("two items")
            else {
                panic!("SCAN reply shape")
            };
            keys.extend(keys_of(page));
            pages += 1;
            cursor = String::from_utf8(next).expect("utf-8");
            if cursor == "0" {
                return (keys, pages);
            }
            assert!(pages < 1000, "SCAN does not end");
        }
    }

    #[test]
    fn scan_walks_every_key_once_with_match_and_count() {
        let (mut c, mut m) = (Connection::new(1, None), filled(30));
        let (all, pages) = scan_all(&mut c, &mut m, &[]);
        assert_eq!(all, m.map.keys().cloned().collect::<Vec<_>>());
        assert_eq!(pages, 4, "32 keys at the default COUNT 10");
        let (users, pages) = scan_all(&mut c, &mut m, &["MATCH", "user:*", "COUNT", "7"]);
        assert_eq!(users.len(), 30);
        assert_eq!(pages, 5);
        let (some, _) = scan_all(&mut c, &mut m, &["COUNT", "100", "MATCH", "*1?"]);
        assert_eq!(some.len(), 10, "{some:?}");
        let (none, _) = scan_all(&mut c, &mut m, &["TYPE", "hash"]);
        assert!(none.is_empty());
        for (words, wanted) in [
            (
                &["SCAN", "0", "COUNT", "x"][..],
                "ERR value is not an integer",
            ),
            (&["SCAN", "0", "COUNT", "0"][..], "ERR syntax error"),
            (&["SCAN", "0", "MATCH"][..], "ERR syntax error"),
            (&["SCAN", "0", "BOGUS", "1"][..], "ERR syntax error"),
            (&["SCAN", "12345"][..], "ERR invalid cursor"),
            (&["SCAN", "abc"][..], "ERR invalid cursor"),
            (&["SCAN"][..], "ERR wrong number of arguments"),
        ] {
            let Reply::Error(e) = run(&mut c, &mut m, words) else {
                panic!("{words:?} answered")
            };
            assert!(e.starts_with(wanted), "{words:?}: {e}");
        }
    }

    #[test]
    fn scan_cursors_are_bounded_per_connection() {
        let (mut c, mut m) = (Connection::new(1, None), filled(30));
        let first = run(&mut c, &mut m, &["SCAN", "0", "COUNT", "1"]);
        let Reply::Array(items) = first else {
            panic!("array")
        };
        let Reply::Bulk(cursor) = &items[0] else {
            panic!("cursor")
        };
        let cursor = String::from_utf8(cursor.clone()).expect("utf-8");
        for _ in 0..MAX_OPEN_CURSORS {
            run(&mut c, &mut m, &["SCAN", "0", "COUNT", "1"]);
        }
        assert!(c.cursors.len() <= MAX_OPEN_CURSORS);
        let Reply::Error(e) = run(&mut c, &mut m, &["SCAN", &cursor]) else {
            panic!("a forgotten cursor answered")
        };
        assert!(e.starts_with("ERR invalid cursor"), "{e}");
    }

    #[test]
    fn dbsize_counts_every_key() {
        let (mut c, mut m) = (Connection::new(1, None), filled(30));
        assert_eq!(run(&mut c, &mut m, &["DBSIZE"]), Reply::Int(32));
        run(&mut c, &mut m, &["DEL", "other"]);
        assert_eq!(run(&mut c, &mut m, &["DBSIZE"]), Reply::Int(31));
        assert!(matches!(
            run(&mut c, &mut m, &["DBSIZE", "x"]),
            Reply::Error(_)
        ));
    }

    #[test]
    fn unknown_commands_and_wrong_arity_get_redis_errors() {
        let (mut c, mut m) = (Connection::new(1, None), Memory::default());
        assert_eq!(
            run(&mut c, &mut m, &["FLY", "to", "moon"]),
            Reply::Error(
                "ERR unknown command 'FLY', with args beginning with: 'to' 'moon' ".into()
            )
        );
        assert_eq!(
            run(&mut c, &mut m, &["GET"]),
            Reply::Error("ERR wrong number of arguments for 'get' command".into())
        );
        assert_eq!(
            run(&mut c, &mut m, &["DEL"]),
            Reply::Error("ERR wrong number of arguments for 'del' command".into())
        );
        let Reply::Error(e) = run(&mut c, &mut m, &["GET", ""]) else {
            panic!("empty key accepted")
        };
        assert!(e.contains("empty key"), "{e}");
    }

    #[test]
    fn connection_commands() {
        let (mut c, mut m) = (Connection::new(7, None), Memory::default());
        assert_eq!(run(&mut c, &mut m, &["PING"]), Reply::Simple("PONG".into()));
        assert_eq!(run(&mut c, &mut m, &["PING", "hi"]), bulk("hi"));
        assert_eq!(run(&mut c, &mut m, &["ECHO", "x"]), bulk("x"));
        assert_eq!(run(&mut c, &mut m, &["SELECT", "0"]), Reply::ok());
        assert!(matches!(
            run(&mut c, &mut m, &["SELECT", "1"]),
            Reply::Error(_)
        ));
        assert_eq!(run(&mut c, &mut m, &["CLIENT", "GETNAME"]), Reply::Nil);
        assert_eq!(
            run(&mut c, &mut m, &["CLIENT", "SETNAME", "me"]),
            Reply::ok()
        );
        assert_eq!(run(&mut c, &mut m, &["client", "getname"]), bulk("me"));
        let Reply::Map(docs) = run(&mut c, &mut m, &["COMMAND", "DOCS"]) else {
            panic!("COMMAND DOCS is a map")
        };
        assert_eq!(docs.len(), DOCS.len());
        let Reply::Map(docs) = run(&mut c, &mut m, &["COMMAND", "DOCS", "scan", "nope"]) else {
            panic!("COMMAND DOCS is a map")
        };
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].0, Reply::text("scan"));
        assert_eq!(run(&mut c, &mut m, &["COMMAND"]), Reply::Array(vec![]));
        let Reply::Map(hello) = run(&mut c, &mut m, &["HELLO", "3"]) else {
            panic!("HELLO is a map")
        };
        assert!(hello.contains(&(Reply::text("proto"), Reply::Int(3))));
        assert_eq!(c.protocol, Protocol::Resp3);
        assert!(
            matches!(run(&mut c, &mut m, &["HELLO", "4"]), Reply::Error(e) if e.starts_with("NOPROTO"))
        );
        assert_eq!(c.protocol, Protocol::Resp3);
        assert!(!c.closing);
        assert_eq!(run(&mut c, &mut m, &["QUIT"]), Reply::ok());
        assert!(c.closing);
    }

    #[test]
    fn info_has_a_replication_section() {
        let (mut c, mut m) = (Connection::new(1, None), Memory::default());
        let Reply::Bulk(text) = run(&mut c, &mut m, &["INFO"]) else {
            panic!("INFO is a bulk string")
        };
        let text = String::from_utf8(text).expect("utf-8");
        for line in ["# Replication", "role:slave", "leader:0", "applied_slot:42"] {
            assert!(text.contains(line), "{line} missing from {text}");
        }
    }

    #[test]
    fn a_token_is_required_before_any_command() {
        let token: std::sync::Arc<[u8]> = b"secret".to_vec().into();
        let (mut c, mut m) = (Connection::new(1, Some(token)), Memory::default());
        assert!(
            matches!(run(&mut c, &mut m, &["GET", "k"]), Reply::Error(e) if e.starts_with("NOAUTH"))
        );
        assert!(
            matches!(run(&mut c, &mut m, &["SET", "k", "v"]), Reply::Error(e) if e.starts_with("NOAUTH"))
        );
        assert!(m.map.is_empty());
        assert!(
            matches!(run(&mut c, &mut m, &["AUTH", "wrong"]), Reply::Error(e) if e.starts_with("WRONGPASS"))
        );
        assert!(
            matches!(run(&mut c, &mut m, &["HELLO", "3"]), Reply::Error(e) if e.starts_with("NOAUTH"))
        );
        assert_eq!(c.protocol, Protocol::Resp2);
        assert_eq!(
            run(&mut c, &mut m, &["AUTH", "default", "secret"]),
            Reply::ok()
        );
        assert_eq!(run(&mut c, &mut m, &["SET", "k", "v"]), Reply::ok());
        let token: std::sync::Arc<[u8]> = b"secret".to_vec().into();
        let mut c = Connection::new(2, Some(token));
        assert!(matches!(
            run(&mut c, &mut m, &["HELLO", "3", "AUTH", "default", "secret"]),
            Reply::Map(_)
        ));
        assert_eq!(run(&mut c, &mut m, &["GET", "k"]), bulk("v"));
    }

    #[test]
    fn store_errors_become_error_replies() {
        let mut m = Memory {
            fail_with: Some(KvError::Unavailable {
                answered: 1,
                total: 5,
            }),
            ..Memory::default()
        };
        let mut c = Connection::new(1, None);
        let Reply::Error(e) = run(&mut c, &mut m, &["GET", "k"]) else {
            panic!("no error")
        };
        assert!(e.starts_with("TRYAGAIN cluster unavailable"), "{e}");
    }
}
