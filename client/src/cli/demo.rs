//! The `demo` command: a scripted sequence of operations whose every answer is checked
//! against what a correct store must return.

use super::{describe_outcome, prepopulate, timestamp};
use anyhow::Context as _;
use paxoskv_client::{Client, Outcome};
use std::collections::BTreeMap;
use std::fmt;

/// Exit status of a demo that saw a wrong answer.
const EXIT_MISMATCH: u8 = 1;

/// One operation of the demo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum DemoOp {
    Put(String, String),
    Get(String),
    Delete(String),
}

impl fmt::Display for DemoOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DemoOp::Put(key, value) => write!(f, "PUT {key} {value}"),
            DemoOp::Get(key) => write!(f, "GET {key}"),
            DemoOp::Delete(key) => write!(f, "DELETE {key}"),
        }
    }
}

/// What the store answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    Written(Outcome),
    Read(Option<Vec<u8>>),
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Answer::Written(outcome) => f.write_str(describe_outcome(outcome)),
            Answer::Read(Some(value)) => f.write_str(&String::from_utf8_lossy(value)),
            Answer::Read(None) => f.write_str("(not found)"),
        }
    }
}

/// What a correct store holds. A key missing from `known` has an unknown state (it may be
/// left over from an earlier run); the first answer about it is accepted and learnt.
#[derive(Debug, Default)]
pub(crate) struct Model {
    known: BTreeMap<String, Option<Vec<u8>>>,
}

impl Model {
    /// Records a write whose outcome is not checked (prepopulation).
    pub(crate) fn assume(&mut self, key: &str, value: Option<Vec<u8>>) {
        self.known.insert(key.to_string(), value);
    }

    /// Checks `answer` to `op` and updates the model. Returns a description of a mismatch.
    pub(crate) fn check(&mut self, op: &DemoOp, answer: &Answer) -> Result<(), String> {
        let result = self.compare(op, answer);
        match op {
            DemoOp::Put(key, value) => self.assume(key, Some(value.clone().into_bytes())),
            DemoOp::Delete(key) => self.assume(key, None),
            DemoOp::Get(key) => {
                if let (Answer::Read(value), Ok(())) = (answer, &result) {
                    self.assume(key, value.clone());
                }
            }
        }
        result
    }

    fn compare(&self, op: &DemoOp, answer: &Answer) -> Result<(), String> {
        if !kind_matches(op, answer) {
            return Err(format!("{op}: answer of the wrong kind: {answer:?}"));
        }
        let expected = match op {
            DemoOp::Put(key, _) => self
                .exists(key)
                .map(|replaced| Answer::Written(Outcome::Put { replaced })),
            DemoOp::Delete(key) => self
                .exists(key)
                .map(|existed| Answer::Written(Outcome::Delete { existed })),
            DemoOp::Get(key) => self.known.get(key).cloned().map(Answer::Read),
        };
        match expected {
            Some(expected) if expected != *answer => Err(mismatch(op, &expected, answer)),
            _ => Ok(()),
        }
    }

    fn exists(&self, key: &str) -> Option<bool> {
        self.known.get(key).map(Option::is_some)
    }
}

/// A PUT must answer with a put outcome and a DELETE with a delete outcome.
fn kind_matches(op: &DemoOp, answer: &Answer) -> bool {
    matches!(
        (op, answer),
        (DemoOp::Get(_), Answer::Read(_))
            | (DemoOp::Put(..), Answer::Written(Outcome::Put { .. }))
            | (DemoOp::Delete(_), Answer::Written(Outcome::Delete { .. }))
    )
}

fn mismatch(op: &DemoOp, expected: &Answer, got: &Answer) -> String {
    format!("{op}: expected {expected:?} ({expected}), got {got:?} ({got})")
}

/// The scripted operations, over the prepopulated keys key1..key`count` (count >= 4) and two
/// fresh keys that are deleted first in case an earlier run left them.
pub(crate) fn script(count: u32) -> Vec<DemoOp> {
    assert!(count >= 4, "the demo needs at least four prepopulated keys");
    let a = format!("key{}", count + 1);
    let b = format!("key{}", count + 2);
    let put = |k: &str, v: &str| DemoOp::Put(k.to_string(), v.to_string());
    let get = |k: &str| DemoOp::Get(k.to_string());
    let delete = |k: &str| DemoOp::Delete(k.to_string());
    vec![
        delete(&a),
        delete(&b),
        get("key1"),
        put(&a, "apple"),
        put(&b, "hello big world"),
        get(&a),
        get(&b),
        put("key3", "value3 overwritten"),
        get("key3"),
        delete("key2"),
        get("key2"),
        delete("key2"),
        put("key4", "value4 v2"),
        delete(&a),
        get(&a),
        put("key2", "value2 again"),
        get("key2"),
        delete(&b),
        get("key4"),
    ]
}

async fn perform(client: &mut Client, op: &DemoOp) -> anyhow::Result<Answer> {
    let answer = match op {
        DemoOp::Put(key, value) => {
            Answer::Written(client.put(key, value.clone().into_bytes()).await?)
        }
        DemoOp::Get(key) => Answer::Read(client.get(key).await?),
        DemoOp::Delete(key) => Answer::Written(client.delete(key).await?),
    };
    Ok(answer)
}

/// Runs the demo; exit status 0 if every answer was correct, 1 on a mismatch.
pub(crate) async fn run(client: &mut Client, count: u32) -> anyhow::Result<u8> {
    anyhow::ensure!(count >= 4, "demo needs --count of at least 4");
    let mut model = Model::default();
    println!("[{}] Prepopulating key1..key{count}", timestamp());
    prepopulate(client, count).await?;
    for i in 1..=count {
        model.assume(&format!("key{i}"), Some(format!("value{i}").into_bytes()));
    }
    println!("[{}] Prepopulated {count} keys", timestamp());
    let ops = script(count);
    for op in &ops {
        println!("[{}] Received operation -> {op}", timestamp());
        let answer = perform(client, op)
            .await
            .with_context(|| format!("demo: {op}"))?;
        println!("[{}] Response from server -> {answer}", timestamp());
        if let Err(what) = model.check(op, &answer) {
            println!("[{}] MISMATCH {what}", timestamp());
            println!("demo: FAILED after a wrong answer");
            return Ok(EXIT_MISMATCH);
        }
    }
    println!("demo: {} operations, all answers correct", ops.len());
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A correct in-memory store.
    fn apply(store: &mut BTreeMap<String, Vec<u8>>, op: &DemoOp) -> Answer {
        match op {
            DemoOp::Put(k, v) => Answer::Written(Outcome::Put {
                replaced: store.insert(k.clone(), v.clone().into_bytes()).is_some(),
            }),
            DemoOp::Get(k) => Answer::Read(store.get(k).cloned()),
            DemoOp::Delete(k) => Answer::Written(Outcome::Delete {
                existed: store.remove(k).is_some(),
            }),
        }
    }

    fn prepopulated(count: u32) -> (BTreeMap<String, Vec<u8>>, Model) {
        let mut store = BTreeMap::new();
        let mut model = Model::default();
        for i in 1..=count {
            let (k, v) = (format!("key{i}"), format!("value{i}").into_bytes());
            store.insert(k.clone(), v.clone());
            model.assume(&k, Some(v));
        }
        (store, model)
    }

    #[test]
    fn script_covers_the_required_operations() {
        let ops = script(10);
        let count = |f: fn(&DemoOp) -> bool| ops.iter().filter(|op| f(op)).count();
        assert!(count(|op| matches!(op, DemoOp::Put(..))) >= 5);
        assert!(count(|op| matches!(op, DemoOp::Get(_))) >= 5);
        assert!(count(|op| matches!(op, DemoOp::Delete(_))) >= 5);
    }

    #[test]
    fn a_correct_store_passes_even_with_leftovers() {
        for leftovers in [false, true] {
            let (mut store, mut model) = prepopulated(10);
            if leftovers {
                store.insert("key11".into(), b"old".to_vec());
            }
            for op in script(10) {
                let answer = apply(&mut store, &op);
                assert_eq!(model.check(&op, &answer), Ok(()), "{op}");
            }
        }
    }

    #[test]
    fn a_wrong_value_is_a_mismatch() {
        let (_, mut model) = prepopulated(4);
        let error = model
            .check(
                &DemoOp::Get("key1".into()),
                &Answer::Read(Some(b"value2".to_vec())),
            )
            .unwrap_err();
        assert!(error.contains("GET key1"), "{error}");
    }

    #[test]
    fn a_deleted_key_that_still_reads_is_a_mismatch() {
        let (_, mut model) = prepopulated(4);
        let delete = DemoOp::Delete("key2".into());
        assert!(model
            .check(&delete, &Answer::Written(Outcome::Delete { existed: true }))
            .is_ok());
        let stale = Answer::Read(Some(b"value2".to_vec()));
        assert!(model.check(&DemoOp::Get("key2".into()), &stale).is_err());
    }

    #[test]
    fn wrong_outcomes_are_mismatches() {
        let (_, mut model) = prepopulated(4);
        let overwrite = DemoOp::Put("key3".into(), "x".into());
        assert!(model
            .check(
                &overwrite,
                &Answer::Written(Outcome::Put { replaced: false })
            )
            .is_err());
        let fresh = DemoOp::Delete("nothing".into());
        assert!(
            model.check(&fresh, &Answer::Read(None)).is_err(),
            "wrong kind for an unknown key"
        );
        assert!(model
            .check(&fresh, &Answer::Written(Outcome::Put { replaced: false }))
            .is_err());
        assert!(model
            .check(&fresh, &Answer::Written(Outcome::Delete { existed: false }))
            .is_ok());
        assert!(model
            .check(&fresh, &Answer::Written(Outcome::Delete { existed: true }))
            .is_err());
    }
}
