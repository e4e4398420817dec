//! Scripted interaction tests: a small line-oriented language that drives a [`Net`] by hand
//! and asserts on what the replicas do, in the spirit of etcd raft's `testdata/*.txt`.
//!
//! Why scripts: the bugs found so far (ballot reuse after a crash before a sync, a late
//! pre-vote answer, a promise that left out a slot known chosen, a stuck catch-up) each
//! needed an exact interleaving of messages, syncs and crashes. A script states that
//! interleaving line by line, so it is reviewable and stays put while the core changes.
//!
//! # Format
//!
//! One command per line; `#` starts a comment; blank lines are ignored. Replica ids are
//! numbers; `all` means every live replica where allowed. Every command appends what it did
//! to a transcript (printed on failure, or always with `PAXOSKV_SCRIPT_VERBOSE=1`).
//!
//! Setup and time:
//! - `cluster <n> [seed <s>]` fresh replicas `0..n` built with `Config::new` (seed `s + id`).
//! - `disk <id>|all instant|slow` instant: a Ready's batch is synced at once (default).
//!   slow: the batch stays pending (unsynced) until `sync <id>`.
//! - `tick <id>|all [<n>]` tick n times (default 1); outputs go on the wire, nothing is
//!   delivered.
//! - `campaign <id> [<max>]` tick only `<id>` until it sends a pre-vote probe (bounded).
//! - `elect <id> [<max>]` tick only `<id>` and deliver everything until it leads (bounded).
//! - `stabilize [<rounds>] [only <id>...]` rounds of: tick (all live or the listed), deliver all.
//!
//! Clients:
//! - `propose <id> <client> <seq> put <key> <value>` / `... delete <key>`; the reply is
//!   named `<client>/<seq>`.
//! - `read <id> <key> [as <name>]` a linearizable read; the reply is named `<name>` (default
//!   `read<k>`, k counting reads from 1).
//!
//! Network (a filter is any of: `<from>-><to>` where either side may be `*`, `from <id>`,
//! `to <id>`, and message kinds `probe prepare accept learn fetch probe-ok promise accepted
//! learn-ack chosen nack`, several kinds meaning any of them; an optional trailing number
//! bounds how many):
//! - `deliver [all | <filter>] [<n>]` deliver matching messages in wire order, including
//!   matching ones that delivery produces, at most n (bounded by 10,000 anyway).
//! - `drop [all | <filter>] [<n>]` remove matching messages from the wire.
//! - `partition <id>...` / `heal [<id>... | all]` messages from or to a partitioned replica
//!   are dropped when they would be delivered.
//! - `wire` print the messages on the wire.
//!
//! Disk and process:
//! - `flush <id>` perform the replica's Ready now (the batch stays pending on a slow disk).
//! - `sync <id>` the pending batch reaches the disk; `on_persisted`; perform what it released.
//! - `crash <id>` memory, the pending batch and a background snapshot are lost; disk stays.
//! - `restart <id>` recover from the disk (snapshot + records).
//! - `snapshot <id>` take a snapshot and compact, at once.
//! - `snapshot-begin <id>` / `snapshot-finish <id>` the same, in the background (see
//!   [`Net::begin_snapshot`]); a finish older than the disk's snapshot is discarded.
//! - `install <to> from <from>` ship `<from>`'s durable snapshot to `<to>`.
//! - `status` print every replica's state.
//!
//! Assertions (`expect ...`; a failure stops the script with file:line, unless the run is
//! keep-going, `PAXOSKV_SCRIPT_KEEP_GOING=1`, which reports every failing assertion):
//! - `expect leader <id>` / `expect role <id> leader|candidate|follower|down`
//! - `expect chosen <id>|all <slot> noop|<value>` where a value is `put <k> <v>` or
//!   `delete <k>`, several commands joined by ` ; `, or `not known chosen`
//! - `expect chosen-through <id>|all ==|>=|> <n>`
//! - `expect entry <id> <slot> <value>|none` the log holds this entry (chosen or not)
//! - `expect value <id>|all <key> <value>|none` the applied map (a local read)
//! - `expect reply <name> <reply>|none` replies print as `put new`, `put replaced`,
//!   `delete existed`, `delete missing`, `read <v>|read none`, `not-leader <id>|none`,
//!   `busy`, `stale <n>`
//! - `expect no-messages <filter>` / `expect messages <filter> [<n>]` (at least one, or n)
//! - `expect ballot <id> ==|>=|> <round>.<replica>` the replica's promise
//! - `expect fresh-ballot <id>` the promise is above every ballot the replica sent a request
//!   under before its last restart (a restarted replica never reuses a ballot)
//! - `expect pending <id> none|contains <text>` / `expect disk <id> contains|lacks <text>`
//!   records print as `Promised(1.0)`, `Accepted(2@1.0: put k v)`, `Learned(2: ...)`,
//!   `Chosen(3)`
//! - `expect disk-snapshot <id> none|through <n>`
//! - `expect snapshot-needed <id> none|from <peer>`
//! - `expect agree` no two live replicas know different chosen values for a slot, and two
//!   with the same chosen prefix have the same map digest
//! - `expect converged` every live replica has the same chosen prefix and map digest
//!
//! Besides the assertions, after every command the harness checks that no slot is ever seen
//! chosen with two values (on any replica, at any time, across crashes).

use crate::{Envelope, Net, SnapshotOutcome};
use paxoskv::message::{Request, Response};
use paxoskv::{
    Ballot, ClientError, ClientReply, ClientToken, Command, CommandId, Config, Op, Outcome, Record,
    ReplicaId, Slot, Value,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::Path;

/// Every loop in the harness is bounded by this many messages per command.
const MAX_DELIVERIES: usize = 10_000;
/// Default bound on ticks for `campaign` and `elect`.
const DEFAULT_MAX_TICKS: u64 = 200;
/// Upper bound on any count a script gives (ticks, rounds), so a typo cannot hang a test.
const MAX_COUNT: u64 = 100_000;
/// Transcript lines shown with a failure.
const TAIL_LINES: usize = 40;

/// How to run a script.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Keep running after a failed assertion and report all of them (parse and setup errors
    /// still stop the script). Useful to see everything a regression breaks.
    pub keep_going: bool,
}

impl Options {
    /// Options from the environment: `PAXOSKV_SCRIPT_KEEP_GOING=1`.
    pub fn from_env() -> Options {
        Options {
            keep_going: std::env::var("PAXOSKV_SCRIPT_KEEP_GOING").is_ok_and(|v| v == "1"),
        }
    }
}

/// One failed command.
#[derive(Clone, Debug)]
pub struct Failure {
    /// 1-based line number.
    pub line: usize,
    /// The command as written.
    pub command: String,
    /// What went wrong.
    pub message: String,
}

/// A script that failed: where, why, and the end of its transcript.
#[derive(Clone, Debug)]
pub struct ScriptError {
    /// Script name (its path).
    pub file: String,
    /// Failures in order (one unless keep-going).
    pub failures: Vec<Failure>,
    /// The last lines of the transcript.
    pub transcript_tail: String,
}

impl fmt::Display for ScriptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for x in &self.failures {
            writeln!(
                f,
                "{}:{}: `{}`: {}",
                self.file, x.line, x.command, x.message
            )?;
        }
        write!(f, "--- transcript (tail) ---\n{}", self.transcript_tail)
    }
}

impl std::error::Error for ScriptError {}

/// Runs the script in file `path`; returns its transcript.
pub fn run_file(path: &Path, options: Options) -> Result<String, ScriptError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ScriptError {
        file: file.clone(),
        failures: vec![Failure {
            line: 0,
            command: String::new(),
            message: format!("cannot read: {e}"),
        }],
        transcript_tail: String::new(),
    })?;
    run_script(&file, &text, options)
}

/// Runs a script given as text; `file` names it in errors. Returns the transcript.
pub fn run_script(file: &str, text: &str, options: Options) -> Result<String, ScriptError> {
    let mut h = Harness::default();
    let mut failures = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        h.out.push(format!("> {line}"));
        let words: Vec<&str> = line.split_whitespace().collect();
        // A core assertion (e.g. "a chosen value never changes") is a finding, not a crash
        // of the test run: report it at the line that triggered it.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            h.command(&words).and_then(|()| h.check_history())
        }))
        .unwrap_or_else(|panic| {
            let text = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(usage(format!("panicked: {text}")))
        });
        if let Err(e) = result {
            h.out.push(format!("FAILED: {}", e.message));
            failures.push(Failure {
                line: i + 1,
                command: line.to_string(),
                message: e.message,
            });
            if !(options.keep_going && e.assertion) {
                break;
            }
        }
    }
    let transcript = h.out.join("\n");
    if failures.is_empty() {
        return Ok(transcript);
    }
    let skip = h.out.len().saturating_sub(TAIL_LINES);
    Err(ScriptError {
        file: file.to_string(),
        failures,
        transcript_tail: h.out[skip..].join("\n"),
    })
}

/// Why a command failed; `assertion` tells a failed `expect` from a broken script.
struct CmdError {
    message: String,
    assertion: bool,
}

type CmdResult<T = ()> = Result<T, CmdError>;

fn usage(message: impl Into<String>) -> CmdError {
    CmdError {
        message: message.into(),
        assertion: false,
    }
}

fn failed(message: impl Into<String>) -> CmdError {
    CmdError {
        message: message.into(),
        assertion: true,
    }
}

fn parse<T: std::str::FromStr>(word: Option<&&str>, what: &str) -> CmdResult<T> {
    let w = word.ok_or_else(|| usage(format!("missing {what}")))?;
    w.parse().map_err(|_| usage(format!("bad {what}: `{w}`")))
}

fn parse_ballot(word: Option<&&str>) -> CmdResult<Ballot> {
    let w = word.ok_or_else(|| usage("missing ballot <round>.<replica>"))?;
    let (round, replica) = w
        .split_once('.')
        .ok_or_else(|| usage(format!("bad ballot `{w}`, want <round>.<replica>")))?;
    Ok(Ballot {
        round: round
            .parse()
            .map_err(|_| usage(format!("bad ballot `{w}`")))?,
        replica: replica
            .parse()
            .map_err(|_| usage(format!("bad ballot `{w}`")))?,
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cmp {
    Eq,
    Ge,
    Gt,
}

impl Cmp {
    fn parse(word: Option<&&str>) -> CmdResult<Cmp> {
        match word.copied() {
            Some("==") | Some("=") => Ok(Cmp::Eq),
            Some(">=") => Ok(Cmp::Ge),
            Some(">") => Ok(Cmp::Gt),
            other => Err(usage(format!("want ==, >= or >, got {other:?}"))),
        }
    }

    fn holds<T: Ord>(self, a: T, b: T) -> bool {
        match self {
            Cmp::Eq => a == b,
            Cmp::Ge => a >= b,
            Cmp::Gt => a > b,
        }
    }

    fn text(self) -> &'static str {
        match self {
            Cmp::Eq => "==",
            Cmp::Ge => ">=",
            Cmp::Gt => ">",
        }
    }
}

const KINDS: &[&str] = &[
    "probe",
    "prepare",
    "accept",
    "learn",
    "fetch",
    "probe-ok",
    "promise",
    "accepted",
    "learn-ack",
    "chosen",
    "nack",
];

fn kind(env: &Envelope) -> &'static str {
    match env {
        Envelope::Request { request, .. } => match request {
            Request::Prepare(p) if p.probe => "probe",
            Request::Prepare(_) => "prepare",
            Request::Accept(_) => "accept",
            Request::Learn(_) => "learn",
            Request::FetchChosen(_) => "fetch",
        },
        Envelope::Response { response, .. } => match response {
            Response::Promise(p) if p.probe => "probe-ok",
            Response::Promise(_) => "promise",
            Response::Accepted(_) => "accepted",
            Response::LearnAck(_) => "learn-ack",
            Response::Chosen(_) => "chosen",
            Response::Nack(_) => "nack",
        },
    }
}

/// Which messages a network command applies to.
#[derive(Debug, Default)]
struct Filter {
    from: Option<ReplicaId>,
    to: Option<ReplicaId>,
    kinds: Vec<&'static str>,
    limit: Option<usize>,
}

impl Filter {
    fn parse(words: &[&str]) -> CmdResult<Filter> {
        let mut f = Filter::default();
        let mut i = 0;
        while i < words.len() {
            let w = words[i];
            if w == "all" {
            } else if w == "from" || w == "to" {
                let id = parse(words.get(i + 1), "replica id")?;
                if w == "from" {
                    f.from = Some(id);
                } else {
                    f.to = Some(id);
                }
                i += 1;
            } else if let Some((a, b)) = w.split_once("->") {
                let side = |s: &str| -> CmdResult<Option<ReplicaId>> {
                    if s == "*" {
                        Ok(None)
                    } else {
                        s.parse()
                            .map(Some)
                            .map_err(|_| usage(format!("bad link `{w}`")))
                    }
                };
                f.from = side(a)?;
                f.to = side(b)?;
            } else if let Some(k) = KINDS.iter().find(|k| **k == w) {
                f.kinds.push(k);
            } else if let Ok(n) = w.parse::<usize>() {
                f.limit = Some(n);
            } else {
                return Err(usage(format!(
                    "unknown filter word `{w}` (kinds: {})",
                    KINDS.join(" ")
                )));
            }
            i += 1;
        }
        Ok(f)
    }

    fn matches(&self, env: &Envelope) -> bool {
        self.from.is_none_or(|f| env.from() == f)
            && self.to.is_none_or(|t| env.to() == t)
            && (self.kinds.is_empty() || self.kinds.contains(&kind(env)))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Disk {
    Instant,
    Slow,
}

#[derive(Default)]
struct Harness {
    net: Option<Net>,
    n: u32,
    disk: Vec<Disk>,
    partitioned: BTreeSet<ReplicaId>,
    /// Reply names to client tokens.
    tokens: HashMap<String, ClientToken>,
    next_token: u64,
    reads: u64,
    /// Replies taken off the net so far, by token (the latest one wins).
    replies: HashMap<ClientToken, ClientReply>,
    /// Highest ballot each replica sent a request under (probes and fetches claim none).
    sent_under: Vec<Option<Ballot>>,
    /// `sent_under` as it was at the replica's last restart.
    sent_before_restart: Vec<Option<Ballot>>,
    /// Every value ever seen chosen per slot, with the replica that first knew it.
    ever_chosen: BTreeMap<Slot, (ReplicaId, Value)>,
    /// Slots already reported chosen twice (keep-going reports each once).
    reported_conflicts: BTreeSet<Slot>,
    out: Vec<String>,
}

/// Clients whose sessions every scripted cluster starts with.
const SCRIPT_CLIENTS: u64 = 16;

fn render_value(v: &Value) -> String {
    if v.is_noop() {
        return "noop".into();
    }
    let cmds: Vec<String> = v
        .commands
        .iter()
        .map(|c| match &c.op {
            Op::Put { key, value } => format!("put {key} {}", String::from_utf8_lossy(value)),
            Op::Delete { key } => format!("delete {key}"),
            Op::Register => "register".into(),
            Op::Txn(txn) => format!("txn {txn:?}"),
            op => format!("{op:?}"),
        })
        .collect();
    cmds.join(" ; ")
}

fn render_record(r: &Record) -> String {
    match r {
        Record::Promised(b) => format!("Promised({b})"),
        Record::Accepted {
            slot,
            ballot,
            value,
        } => format!("Accepted({slot}@{ballot}: {})", render_value(value)),
        Record::Chosen { through } => format!("Chosen({through})"),
        Record::Learned { slot, value } => format!("Learned({slot}: {})", render_value(value)),
    }
}

fn render_reply(r: &ClientReply) -> String {
    match r {
        ClientReply::Applied(Outcome::Put { replaced: false }) => "put new".into(),
        ClientReply::Applied(Outcome::Put { replaced: true }) => "put replaced".into(),
        ClientReply::Applied(Outcome::Delete { existed: true }) => "delete existed".into(),
        ClientReply::Applied(Outcome::Delete { existed: false }) => "delete missing".into(),
        ClientReply::Read(Some(v)) => format!("read {}", String::from_utf8_lossy(v)),
        ClientReply::Read(None) => "read none".into(),
        ClientReply::View(kv) => format!("view of {} keys", kv.len()),
        ClientReply::Failed(ClientError::NotLeader { leader: Some(l) }) => {
            format!("not-leader {l}")
        }
        ClientReply::Failed(ClientError::NotLeader { leader: None }) => "not-leader none".into(),
        ClientReply::Failed(ClientError::Busy) => "busy".into(),
        ClientReply::Failed(ClientError::Stale { last_applied }) => format!("stale {last_applied}"),
        ClientReply::Applied(Outcome::Registered) => "registered".into(),
        ClientReply::Applied(Outcome::Txn(t)) => format!("txn {t:?}"),
        ClientReply::Failed(ClientError::SessionExpired) => "session-expired".into(),
        ClientReply::Failed(ClientError::DeadlinePassed) => "deadline-passed".into(),
        ClientReply::Failed(ClientError::LeaseNotFound(id)) => format!("lease-not-found {id}"),
        ClientReply::LeaseKept { ttl_ms } => format!("lease-kept {ttl_ms}"),
        ClientReply::LeaseTtl(t) => format!("lease-ttl {t:?}"),
        ClientReply::Applied(o) => format!("{o:?}"),
    }
}

fn render_env(env: &Envelope) -> String {
    let detail = match env {
        Envelope::Request { request, .. } => match request {
            Request::Prepare(p) => {
                format!("ballot {} first_unchosen {}", p.ballot, p.first_unchosen)
            }
            Request::Accept(a) => format!(
                "ballot {} slot {} commit {}: {}",
                a.ballot,
                a.slot,
                a.commit,
                render_value(&a.value)
            ),
            Request::Learn(l) => format!("ballot {} commit {}", l.ballot, l.commit),
            Request::FetchChosen(f) => format!("from_slot {}", f.from_slot),
        },
        Envelope::Response { response, .. } => match response {
            Response::Promise(p) => {
                let acc: Vec<String> = p
                    .accepted
                    .iter()
                    .map(|e| format!("{}@{}: {}", e.slot, e.ballot, render_value(&e.value)))
                    .collect();
                format!(
                    "ballot {} chosen_through {} accepted [{}]",
                    p.ballot,
                    p.chosen_through,
                    acc.join(", ")
                )
            }
            Response::Accepted(a) => format!("ballot {} slot {}", a.ballot, a.slot),
            Response::LearnAck(a) => {
                format!("ballot {} chosen_through {}", a.ballot, a.chosen_through)
            }
            Response::Chosen(c) => format!(
                "from_slot {} values {} chosen_through {}{}",
                c.from_slot,
                c.values.len(),
                c.chosen_through,
                if c.snapshot_needed {
                    " snapshot-needed"
                } else {
                    ""
                }
            ),
            Response::Nack(n) => format!("ballot {} promised {}", n.ballot, n.promised),
        },
    };
    format!("{}->{} {} {}", env.from(), env.to(), kind(env), detail)
}

impl Harness {
    fn net(&mut self) -> CmdResult<&mut Net> {
        self.net
            .as_mut()
            .ok_or_else(|| usage("no cluster yet: start with `cluster <n>`"))
    }

    fn id(&self, word: Option<&&str>) -> CmdResult<ReplicaId> {
        let id: ReplicaId = parse(word, "replica id")?;
        if self.net.is_none() {
            return Err(usage("no cluster yet: start with `cluster <n>`"));
        }
        if id >= self.n {
            return Err(usage(format!(
                "replica {id} not in a cluster of {}",
                self.n
            )));
        }
        Ok(id)
    }

    /// `<id>` or `all` (every replica, live or not; callers skip the dead where it matters).
    fn ids(&self, word: Option<&&str>) -> CmdResult<Vec<ReplicaId>> {
        if word.copied() == Some("all") {
            if self.net.is_none() {
                return Err(usage("no cluster yet: start with `cluster <n>`"));
            }
            return Ok((0..self.n).collect());
        }
        Ok(vec![self.id(word)?])
    }

    fn live(&mut self) -> CmdResult<Vec<ReplicaId>> {
        let net = self.net()?;
        Ok((0..net.replicas.len() as ReplicaId)
            .filter(|&i| net.replicas[i as usize].is_some())
            .collect())
    }

    fn count(&self, word: Option<&&str>, default: u64) -> CmdResult<u64> {
        let n = match word {
            None => default,
            Some(_) => parse(word, "count")?,
        };
        if n > MAX_COUNT {
            return Err(usage(format!("count {n} over the limit {MAX_COUNT}")));
        }
        Ok(n)
    }

    /// Performs replica `id`'s Ready per its disk mode, and notes the ballots of what left.
    fn process(&mut self, id: ReplicaId) -> CmdResult {
        let mode = self.disk[id as usize];
        let mut sent = self.sent_under[id as usize];
        let net = self.net()?;
        let before = net.wire.len();
        match mode {
            Disk::Instant => {
                // A disk switched from slow to instant first finishes what it was syncing.
                let mut bound = 0;
                while net.sync_pending(id) && bound < MAX_DELIVERIES {
                    bound += 1;
                }
                net.flush(id);
            }
            Disk::Slow => net.flush_slow(id),
        }
        for env in &net.wire[before..] {
            if let Envelope::Request { from, request, .. } = env {
                if *from == id {
                    sent = sent.max(request.own_ballot());
                }
            }
        }
        self.sent_under[id as usize] = sent;
        self.collect_replies();
        Ok(())
    }

    fn collect_replies(&mut self) {
        let Some(net) = self.net.as_mut() else { return };
        for (id, token, reply) in net.replies.drain(..) {
            let name = self
                .tokens
                .iter()
                .find(|(_, t)| **t == token)
                .map_or_else(|| format!("#{}", token.0), |(n, _)| n.clone());
            self.out.push(format!(
                "  reply {name} from {id}: {}",
                render_reply(&reply)
            ));
            self.replies.insert(token, reply);
        }
    }

    /// Delivers one envelope honoring partitions; returns false if it was dropped.
    fn deliver_one(&mut self, env: Envelope) -> CmdResult<bool> {
        let text = render_env(&env);
        if self.partitioned.contains(&env.from()) || self.partitioned.contains(&env.to()) {
            self.out.push(format!("  dropped (partition) {text}"));
            return Ok(false);
        }
        let to = env.to();
        let net = self.net()?;
        let down = net.replicas[to as usize].is_none();
        net.deliver_unflushed(env);
        self.out.push(format!(
            "  {} {text}",
            if down { "lost (down)" } else { "delivered" }
        ));
        self.process(to)?;
        Ok(!down)
    }

    /// Delivers messages matching `f` in wire order, including matching ones produced by the
    /// deliveries. Returns how many were taken off the wire.
    fn deliver(&mut self, f: &Filter) -> CmdResult<usize> {
        let limit = f.limit.unwrap_or(MAX_DELIVERIES).min(MAX_DELIVERIES);
        let mut n = 0;
        while n < limit {
            let net = self.net()?;
            let Some(i) = net.wire.iter().position(|e| f.matches(e)) else {
                break;
            };
            let env = net.wire.remove(i);
            self.deliver_one(env)?;
            n += 1;
        }
        if n == MAX_DELIVERIES {
            self.out
                .push(format!("  stopped after {MAX_DELIVERIES} deliveries"));
        }
        Ok(n)
    }

    fn tick(&mut self, id: ReplicaId) -> CmdResult {
        let net = self.net()?;
        let Some(r) = net.replica(id) else {
            return Ok(());
        };
        r.tick();
        self.process(id)
    }

    fn check_history(&mut self) -> CmdResult {
        let Some(net) = self.net.as_ref() else {
            return Ok(());
        };
        let mut conflict = None;
        for r in net.replicas.iter().flatten() {
            let last = r.status().last_slot.max(r.chosen_through());
            for slot in 1..=last {
                let Some(v) = r.chosen_value(slot) else {
                    continue;
                };
                match self.ever_chosen.get(&slot) {
                    Some((who, seen))
                        if seen != v
                            && conflict.is_none()
                            && !self.reported_conflicts.contains(&slot) =>
                    {
                        self.reported_conflicts.insert(slot);
                        conflict = Some(format!(
                            "slot {slot} chosen twice: {} (first known by {who}) and {} (on {})",
                            render_value(seen),
                            render_value(v),
                            r.id()
                        ));
                    }
                    Some(_) => {}
                    None => {
                        self.ever_chosen.insert(slot, (r.id(), v.clone()));
                    }
                }
            }
        }
        match conflict {
            Some(c) => Err(failed(c)),
            None => Ok(()),
        }
    }

    fn command(&mut self, w: &[&str]) -> CmdResult {
        let Some(&verb) = w.first() else {
            return Ok(());
        };
        match verb {
            "cluster" => self.cmd_cluster(w),
            "disk" => {
                let ids = self.ids(w.get(1))?;
                let mode = match w.get(2).copied() {
                    Some("instant") => Disk::Instant,
                    Some("slow") => Disk::Slow,
                    other => return Err(usage(format!("want instant|slow, got {other:?}"))),
                };
                for id in ids {
                    self.disk[id as usize] = mode;
                }
                Ok(())
            }
            "tick" => {
                let ids = self.ids(w.get(1))?;
                let n = self.count(w.get(2), 1)?;
                for _ in 0..n {
                    for &id in &ids {
                        self.tick(id)?;
                    }
                }
                Ok(())
            }
            "campaign" => {
                let id = self.id(w.get(1))?;
                let max = self.count(w.get(2), DEFAULT_MAX_TICKS)?;
                for t in 0..max {
                    let before = self.net()?.wire.len();
                    self.tick(id)?;
                    let probed = self.net()?.wire[before..]
                        .iter()
                        .any(|e| e.from() == id && kind(e) == "probe");
                    if probed {
                        self.out
                            .push(format!("  {id} probes after {} ticks", t + 1));
                        return Ok(());
                    }
                }
                Err(usage(format!("{id} sent no probe within {max} ticks")))
            }
            "elect" => {
                let id = self.id(w.get(1))?;
                let max = self.count(w.get(2), DEFAULT_MAX_TICKS)?;
                for t in 0..max {
                    self.tick(id)?;
                    self.deliver(&Filter::default())?;
                    if self.net()?.replica(id).is_some_and(|r| r.is_leader()) {
                        self.out.push(format!("  {id} leads after {} ticks", t + 1));
                        return Ok(());
                    }
                }
                Err(usage(format!(
                    "{id} did not become leader within {max} ticks"
                )))
            }
            "stabilize" => {
                let rounds = match w.get(1) {
                    Some(&"only") | None => 50,
                    Some(_) => self.count(w.get(1), 50)?,
                };
                let only = w.iter().position(|x| *x == "only");
                let chosen: Option<Vec<ReplicaId>> = match only {
                    Some(i) => Some(
                        w[i + 1..]
                            .iter()
                            .map(|x| self.id(Some(x)))
                            .collect::<CmdResult<_>>()?,
                    ),
                    None => None,
                };
                for _ in 0..rounds {
                    let ids = match &chosen {
                        Some(ids) => ids.clone(),
                        None => self.live()?,
                    };
                    for id in ids {
                        self.tick(id)?;
                    }
                    self.deliver(&Filter::default())?;
                }
                Ok(())
            }
            "propose" => self.cmd_propose(w),
            "read" => {
                let id = self.id(w.get(1))?;
                let key = w.get(2).ok_or_else(|| usage("missing key"))?.to_string();
                let name = match (w.get(3), w.get(4)) {
                    (Some(&"as"), Some(n)) => n.to_string(),
                    (None, None) => {
                        self.reads += 1;
                        format!("read{}", self.reads)
                    }
                    _ => return Err(usage("want `read <id> <key> [as <name>]`")),
                };
                let token = self.new_token(&name);
                let r = self
                    .net()?
                    .replica(id)
                    .ok_or_else(|| usage(format!("{id} is down")))?;
                r.read(token, key);
                self.out.push(format!("  token {name}"));
                self.process(id)
            }
            "deliver" => {
                let f = Filter::parse(&w[1..])?;
                let n = self.deliver(&f)?;
                self.out.push(format!("  {n} delivered"));
                Ok(())
            }
            "drop" => {
                let f = Filter::parse(&w[1..])?;
                let limit = f.limit.unwrap_or(usize::MAX);
                let net = self.net()?;
                let mut kept = Vec::new();
                let mut dropped = Vec::new();
                for env in net.wire.drain(..) {
                    if dropped.len() < limit && f.matches(&env) {
                        dropped.push(render_env(&env));
                    } else {
                        kept.push(env);
                    }
                }
                net.wire = kept;
                for d in &dropped {
                    self.out.push(format!("  dropped {d}"));
                }
                Ok(())
            }
            "partition" | "heal" => {
                let all = w.get(1).copied() == Some("all") || (verb == "heal" && w.len() == 1);
                if all && verb == "heal" {
                    self.partitioned.clear();
                    return Ok(());
                }
                if w.len() == 1 {
                    return Err(usage("want `partition <id>...`"));
                }
                for x in &w[1..] {
                    let id = self.id(Some(x))?;
                    if verb == "partition" {
                        self.partitioned.insert(id);
                    } else {
                        self.partitioned.remove(&id);
                    }
                }
                Ok(())
            }
            "wire" => {
                let lines: Vec<String> = self.net()?.wire.iter().map(render_env).collect();
                for l in lines {
                    self.out.push(format!("  {l}"));
                }
                Ok(())
            }
            "flush" => {
                let id = self.id(w.get(1))?;
                self.process(id)
            }
            "sync" => {
                let id = self.id(w.get(1))?;
                let net = self.net()?;
                let records: Vec<String> = net.pending[id as usize]
                    .as_ref()
                    .map(|(_, r)| r.iter().map(render_record).collect())
                    .unwrap_or_default();
                if !net.sync_pending(id) {
                    return Err(usage(format!("{id} has no pending batch")));
                }
                self.out.push(format!("  synced [{}]", records.join(", ")));
                // Whatever the sync released goes out per the disk mode (slow: already did).
                self.process(id)
            }
            "crash" => {
                let id = self.id(w.get(1))?;
                self.net()?.crash(id);
                Ok(())
            }
            "restart" => {
                let id = self.id(w.get(1))?;
                let net = self.net()?;
                if net.replicas[id as usize].is_some() {
                    return Err(usage(format!("{id} is running; crash it first")));
                }
                net.restart(id)
                    .map_err(|e| failed(format!("{id} cannot recover: {e}")))?;
                let promised = net.replicas[id as usize]
                    .as_ref()
                    .map_or(Ballot::ZERO, |r| r.promised());
                self.sent_before_restart[id as usize] = self.sent_under[id as usize];
                self.out
                    .push(format!("  {id} recovered, promised {promised}"));
                Ok(())
            }
            "snapshot" => {
                let id = self.id(w.get(1))?;
                let net = self.net()?;
                if !net.begin_snapshot(id) {
                    return Err(usage(format!("{id} is down or already snapshotting")));
                }
                let outcome = net.finish_snapshot(id);
                self.out.push(format!("  {outcome:?}"));
                Ok(())
            }
            "snapshot-begin" => {
                let id = self.id(w.get(1))?;
                let net = self.net()?;
                if !net.begin_snapshot(id) {
                    return Err(usage(format!("{id} is down or already snapshotting")));
                }
                let through = net.background[id as usize]
                    .as_ref()
                    .map_or(0, |b| b.snapshot.through);
                self.out
                    .push(format!("  {id} snapshotting through {through}"));
                Ok(())
            }
            "snapshot-finish" => {
                let id = self.id(w.get(1))?;
                let outcome = self.net()?.finish_snapshot(id);
                if outcome == SnapshotOutcome::Idle {
                    return Err(usage(format!("{id} has no snapshot in progress")));
                }
                self.out.push(format!("  {outcome:?}"));
                Ok(())
            }
            "install" => {
                let to = self.id(w.get(1))?;
                if w.get(2).copied() != Some("from") {
                    return Err(usage("want `install <to> from <from>`"));
                }
                let from = self.id(w.get(3))?;
                let through = self
                    .net()?
                    .install_snapshot(to, from)
                    .ok_or_else(|| usage(format!("{from} has no snapshot or {to} is down")))?;
                self.out.push(format!(
                    "  {to} installed {from}'s snapshot through {through}"
                ));
                self.process(to)
            }
            "status" => {
                let lines: Vec<String> = self
                    .net()?
                    .replicas
                    .iter()
                    .enumerate()
                    .map(|(i, r)| match r {
                        None => format!("  {i}: down"),
                        Some(r) => {
                            let s = r.status();
                            format!(
                                "  {i}: {} promised {} chosen_through {} last_slot {} keys {} \
                                 digest {:x} held {}",
                                s.role,
                                s.promised,
                                s.chosen_through,
                                s.last_slot,
                                s.keys,
                                s.map_digest,
                                r.held_outputs()
                            )
                        }
                    })
                    .collect();
                self.out.extend(lines);
                Ok(())
            }
            "expect" => self.expect(&w[1..]),
            other => Err(usage(format!("unknown command `{other}`"))),
        }
    }

    fn cmd_cluster(&mut self, w: &[&str]) -> CmdResult {
        let n: u32 = parse(w.get(1), "cluster size")?;
        if !(1..=64).contains(&n) {
            return Err(usage(format!("cluster size {n} not in 1..=64")));
        }
        let seed: Option<u64> = match (w.get(2), w.get(3)) {
            (Some(&"seed"), s @ Some(_)) => Some(parse(s, "seed")?),
            (None, None) => None,
            _ => return Err(usage("want `cluster <n> [seed <s>]`")),
        };
        let mut net = Net::new(n, |id| {
            let mut cfg = Config::new(id, n);
            if let Some(s) = seed {
                cfg.seed = s.wrapping_add(u64::from(id));
            }
            cfg
        });
        // Scripts write as clients 1..=16 without spending slots on opening their sessions.
        net.bootstrap_sessions(1..=SCRIPT_CLIENTS);
        *self = Harness {
            net: Some(net),
            n,
            disk: vec![Disk::Instant; n as usize],
            sent_under: vec![None; n as usize],
            sent_before_restart: vec![None; n as usize],
            out: std::mem::take(&mut self.out),
            ..Harness::default()
        };
        Ok(())
    }

    fn new_token(&mut self, name: &str) -> ClientToken {
        self.next_token += 1;
        let token = ClientToken(self.next_token);
        self.tokens.insert(name.to_string(), token);
        token
    }

    fn cmd_propose(&mut self, w: &[&str]) -> CmdResult {
        let id = self.id(w.get(1))?;
        let client_id: u64 = parse(w.get(2), "client id")?;
        let seq: u64 = parse(w.get(3), "sequence number")?;
        let op = parse_op(&w[4.min(w.len())..])?;
        let name = format!("{client_id}/{seq}");
        let token = self.new_token(&name);
        let command = Command {
            id: CommandId { client_id, seq },
            op,
        };
        let r = self
            .net()?
            .replica(id)
            .ok_or_else(|| usage(format!("{id} is down")))?;
        r.propose(token, command);
        self.process(id)
    }

    fn replica(&mut self, id: ReplicaId) -> CmdResult<&mut paxoskv::Replica> {
        self.net()?
            .replica(id)
            .ok_or_else(|| failed(format!("{id} is down")))
    }

    fn expect(&mut self, w: &[&str]) -> CmdResult {
        let Some(&what) = w.first() else {
            return Err(usage("expect what?"));
        };
        match what {
            "leader" => {
                let id = self.id(w.get(1))?;
                let r = self.replica(id)?;
                if !r.is_leader() {
                    return Err(failed(format!("{id} is {}, not leader", r.status().role)));
                }
                Ok(())
            }
            "role" => {
                let id = self.id(w.get(1))?;
                let want = w.get(2).copied().ok_or_else(|| usage("missing role"))?;
                let got = match self.net()?.replica(id) {
                    None => "down",
                    Some(r) => r.status().role,
                };
                if got != want {
                    return Err(failed(format!("{id} is {got}, not {want}")));
                }
                Ok(())
            }
            "chosen" => {
                let ids = self.ids(w.get(1))?;
                let slot: Slot = parse(w.get(2), "slot")?;
                let want = w[3.min(w.len())..].join(" ");
                for id in ids {
                    if w.get(1).copied() == Some("all") && self.net()?.replica(id).is_none() {
                        continue;
                    }
                    let r = self.replica(id)?;
                    let got = r
                        .chosen_value(slot)
                        .map_or_else(|| "not known chosen".to_string(), render_value);
                    if got != want {
                        return Err(failed(format!("{id} slot {slot}: {got}, want {want}")));
                    }
                }
                Ok(())
            }
            "chosen-through" => {
                let ids = self.ids(w.get(1))?;
                let cmp = Cmp::parse(w.get(2))?;
                let n: Slot = parse(w.get(3), "slot")?;
                for id in ids {
                    if w.get(1).copied() == Some("all") && self.net()?.replica(id).is_none() {
                        continue;
                    }
                    let got = self.replica(id)?.chosen_through();
                    if !cmp.holds(got, n) {
                        return Err(failed(format!(
                            "{id} chosen through {got}, want {} {n}",
                            cmp.text()
                        )));
                    }
                }
                Ok(())
            }
            "entry" => {
                let id = self.id(w.get(1))?;
                let slot: Slot = parse(w.get(2), "slot")?;
                let want = w[3.min(w.len())..].join(" ");
                let r = self.replica(id)?;
                // live_records(0) lists every entry the log holds; the core keeps its log private.
                let got = r
                    .live_records(0)
                    .into_iter()
                    .find_map(|rec| match rec {
                        Record::Accepted { slot: s, value, .. }
                        | Record::Learned { slot: s, value }
                            if s == slot =>
                        {
                            Some(render_value(&value))
                        }
                        _ => None,
                    })
                    .unwrap_or_else(|| "none".into());
                if got != want {
                    return Err(failed(format!("{id} entry {slot}: {got}, want {want}")));
                }
                Ok(())
            }
            "value" => {
                let ids = self.ids(w.get(1))?;
                let key = w.get(2).ok_or_else(|| usage("missing key"))?;
                let want = w[3.min(w.len())..].join(" ");
                for id in ids {
                    if w.get(1).copied() == Some("all") && self.net()?.replica(id).is_none() {
                        continue;
                    }
                    let r = self.replica(id)?;
                    let got: String = r
                        .read_local(key)
                        .map_or_else(|| "none".into(), |v| String::from_utf8_lossy(v).into());
                    if got != want {
                        return Err(failed(format!("{id} {key} = {got}, want {want}")));
                    }
                }
                Ok(())
            }
            "reply" => {
                let name = w.get(1).ok_or_else(|| usage("missing reply name"))?;
                let want = w[2.min(w.len())..].join(" ");
                let token = *self
                    .tokens
                    .get(*name)
                    .ok_or_else(|| usage(format!("no request named {name}")))?;
                let got = self
                    .replies
                    .get(&token)
                    .map_or_else(|| "none".into(), render_reply);
                if got != want {
                    return Err(failed(format!("reply {name}: {got}, want {want}")));
                }
                Ok(())
            }
            "no-messages" | "messages" => {
                let f = Filter::parse(&w[1..])?;
                let matching: Vec<String> = self
                    .net()?
                    .wire
                    .iter()
                    .filter(|e| f.matches(e))
                    .map(render_env)
                    .collect();
                let ok = match (what, f.limit) {
                    ("no-messages", _) => matching.is_empty(),
                    (_, Some(n)) => matching.len() == n,
                    _ => !matching.is_empty(),
                };
                if !ok {
                    return Err(failed(format!(
                        "{} matching messages on the wire: [{}]",
                        matching.len(),
                        matching.join("; ")
                    )));
                }
                Ok(())
            }
            "ballot" => {
                let id = self.id(w.get(1))?;
                let cmp = Cmp::parse(w.get(2))?;
                let b = parse_ballot(w.get(3))?;
                let got = self.replica(id)?.promised();
                if !cmp.holds(got, b) {
                    return Err(failed(format!(
                        "{id} promised {got}, want {} {b}",
                        cmp.text()
                    )));
                }
                Ok(())
            }
            "fresh-ballot" => {
                let id = self.id(w.get(1))?;
                let got = self.replica(id)?.promised();
                let before = self.sent_before_restart[id as usize];
                if before.is_some_and(|b| got <= b) {
                    let b = before.unwrap_or(Ballot::ZERO);
                    return Err(failed(format!(
                        "{id} is at ballot {got} but sent requests under {b} before it restarted"
                    )));
                }
                self.out.push(format!(
                    "  {id} at {got}; highest ballot sent before restart: {}",
                    before.map_or("none".into(), |b| b.to_string())
                ));
                Ok(())
            }
            "pending" | "disk" => {
                let id = self.id(w.get(1))?;
                let net = self.net()?;
                let records: Vec<String> = if what == "pending" {
                    net.pending[id as usize]
                        .as_ref()
                        .map(|(_, r)| r.iter().map(render_record).collect())
                        .unwrap_or_default()
                } else {
                    net.disks[id as usize].iter().map(render_record).collect()
                };
                let text = records.join(", ");
                let pattern = w[3.min(w.len())..].join(" ");
                let ok = match w.get(2).copied() {
                    Some("none") => records.is_empty(),
                    Some("contains") => records.iter().any(|r| r.contains(&pattern)),
                    Some("lacks") => !records.iter().any(|r| r.contains(&pattern)),
                    other => return Err(usage(format!("want none|contains|lacks, got {other:?}"))),
                };
                if !ok {
                    return Err(failed(format!("{what} of {id}: [{text}]")));
                }
                Ok(())
            }
            "disk-snapshot" => {
                let id = self.id(w.get(1))?;
                let got = self.net()?.disk_snapshots[id as usize]
                    .as_ref()
                    .map(|s| s.through);
                let ok = match w.get(2).copied() {
                    Some("none") => got.is_none(),
                    Some("through") => got == Some(parse(w.get(3), "slot")?),
                    other => return Err(usage(format!("want none|through <n>, got {other:?}"))),
                };
                if !ok {
                    return Err(failed(format!("{id}'s disk snapshot is through {got:?}")));
                }
                Ok(())
            }
            "snapshot-needed" => {
                let id = self.id(w.get(1))?;
                let got = self.replica(id)?.snapshot_needed();
                let want = match w.get(2).copied() {
                    Some("none") => None,
                    Some("from") => Some(parse(w.get(3), "peer")?),
                    other => return Err(usage(format!("want none|from <peer>, got {other:?}"))),
                };
                if got != want {
                    return Err(failed(format!("{id} needs a snapshot from {got:?}")));
                }
                Ok(())
            }
            "agree" | "converged" => self.expect_agree(what == "converged"),
            other => Err(usage(format!("unknown expectation `{other}`"))),
        }
    }

    fn expect_agree(&mut self, converged: bool) -> CmdResult {
        let net = self.net()?;
        let live: Vec<&paxoskv::Replica> = net.replicas.iter().flatten().collect();
        for (i, a) in live.iter().enumerate() {
            for b in &live[i + 1..] {
                let last = a.status().last_slot.max(b.status().last_slot);
                for slot in 1..=last {
                    if let (Some(x), Some(y)) = (a.chosen_value(slot), b.chosen_value(slot)) {
                        if x != y {
                            return Err(failed(format!(
                                "slot {slot}: {} has {}, {} has {}",
                                a.id(),
                                render_value(x),
                                b.id(),
                                render_value(y)
                            )));
                        }
                    }
                }
                let same_prefix = a.chosen_through() == b.chosen_through();
                if converged && !same_prefix {
                    return Err(failed(format!(
                        "{} chosen through {}, {} through {}",
                        a.id(),
                        a.chosen_through(),
                        b.id(),
                        b.chosen_through()
                    )));
                }
                if same_prefix && a.kv().digest() != b.kv().digest() {
                    return Err(failed(format!(
                        "{} and {} applied through {} but their maps differ",
                        a.id(),
                        b.id(),
                        a.chosen_through()
                    )));
                }
            }
        }
        Ok(())
    }
}

fn parse_op(w: &[&str]) -> CmdResult<Op> {
    match w {
        ["put", key, value] => Ok(Op::Put {
            key: key.to_string(),
            value: value.as_bytes().to_vec(),
        }),
        ["delete", key] => Ok(Op::Delete {
            key: key.to_string(),
        }),
        _ => Err(usage("want `put <key> <value>` or `delete <key>`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parse_error_names_the_line() {
        let err = run_script("t.txt", "cluster 3\n\n# c\ntick 7\n", Options::default())
            .expect_err("replica 7 does not exist");
        assert_eq!(err.failures[0].line, 4);
        assert!(err.to_string().contains("t.txt:4: `tick 7`"), "{err}");
    }

    #[test]
    fn keep_going_reports_every_failed_assertion() {
        let text = "cluster 3\nexpect leader 0\nexpect leader 1\nbogus\nexpect leader 2\n";
        let err = run_script("t", text, Options { keep_going: true }).expect_err("no leader");
        let lines: Vec<usize> = err.failures.iter().map(|f| f.line).collect();
        assert_eq!(
            lines,
            vec![2, 3, 4],
            "a broken command still stops the script"
        );
    }
}
