//! Byte budgets: how much of something may be held in memory at once. A holder takes a
//! [`BytePermit`] for the bytes it holds and gives them back by dropping it (RAII), so an
//! early return or a cancelled handler can never leak budget.

use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A fixed number of bytes shared by every holder.
#[derive(Clone, Debug)]
pub struct ByteBudget {
    name: &'static str,
    limit_bytes: usize,
    free: Arc<Semaphore>,
}

/// Bytes taken from a [`ByteBudget`]; dropping it returns them.
#[derive(Debug)]
pub struct BytePermit {
    _permit: OwnedSemaphorePermit,
}

/// Why bytes could not be taken.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{name} budget exhausted: {wanted_bytes} bytes wanted, {free_bytes} of {limit_bytes} free")]
pub struct OverBudget {
    /// Which budget.
    pub name: &'static str,
    /// Bytes asked for.
    pub wanted_bytes: usize,
    /// Bytes free when asked.
    pub free_bytes: usize,
    /// The budget's size.
    pub limit_bytes: usize,
}

impl ByteBudget {
    /// A budget of `limit_bytes` (at most `Semaphore::MAX_PERMITS`, about 2^61).
    pub fn new(name: &'static str, limit_bytes: usize) -> ByteBudget {
        let limit_bytes = limit_bytes.min(Semaphore::MAX_PERMITS);
        ByteBudget {
            name,
            limit_bytes,
            free: Arc::new(Semaphore::new(limit_bytes)),
        }
    }

    /// The budget's size.
    pub fn limit_bytes(&self) -> usize {
        self.limit_bytes
    }

    /// Bytes not taken right now.
    pub fn free_bytes(&self) -> usize {
        self.free.available_permits()
    }

    /// Takes `bytes` now, or says why not; never waits. A request larger than 4 GiB (a
    /// semaphore's largest single acquisition) is always over budget.
    pub fn try_take(&self, bytes: usize) -> Result<BytePermit, OverBudget> {
        let over = || OverBudget {
            name: self.name,
            wanted_bytes: bytes,
            free_bytes: self.free_bytes(),
            limit_bytes: self.limit_bytes,
        };
        let n = u32::try_from(bytes).map_err(|_| over())?;
        match self.free.clone().try_acquire_many_owned(n) {
            Ok(permit) => Ok(BytePermit { _permit: permit }),
            Err(_) => Err(over()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_return_their_bytes_when_dropped() {
        let budget = ByteBudget::new("test", 100);
        let a = budget.try_take(60).expect("fits");
        let refused = budget.try_take(50).expect_err("over");
        assert_eq!(refused.free_bytes, 40);
        assert!(refused.to_string().contains("60") || refused.to_string().contains("50"));
        drop(a);
        assert_eq!(budget.free_bytes(), 100);
        assert!(budget.try_take(100).is_ok());
        assert!(budget.try_take(usize::MAX).is_err());
    }
}
