//! Errors a client operation can end with.

use paxoskv::InvalidInput;
use paxoskv_service::KvError;
use std::fmt;
use std::net::SocketAddr;

/// Why a client operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The key or value was refused locally; nothing was sent.
    #[error("invalid input: {0}")]
    InvalidInput(#[from] InvalidInput),
    /// The configuration cannot work (for example, no servers).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The operation's deadline passed without a definitive answer. A write that ends like
    /// this may or may not have been applied.
    #[error("{}", UnavailableDisplay { answered: *answered, total: *total, last_error })]
    Unavailable {
        /// Distinct replicas that answered anything during the operation (or the figure a
        /// replica reported for the cluster).
        answered: u32,
        /// Replicas in the cluster.
        total: u32,
        /// The last error seen, for diagnosis.
        last_error: Option<String>,
    },
    /// A replica refused the request for a reason that retrying does not fix.
    #[error("{0}")]
    Server(KvError),
    /// One replica could not be reached (only from per-replica calls such as status).
    #[error("{addr}: {reason}")]
    Unreachable {
        /// The replica.
        addr: SocketAddr,
        /// Why: dial error, transport error or no answer in time.
        reason: String,
    },
}

impl ClientError {
    /// The `answered`/`total` figures of an [`ClientError::Unavailable`].
    pub fn unavailable_counts(&self) -> Option<(u32, u32)> {
        match self {
            ClientError::Unavailable {
                answered, total, ..
            } => Some((*answered, *total)),
            _ => None,
        }
    }
}

struct UnavailableDisplay<'a> {
    answered: u32,
    total: u32,
    last_error: &'a Option<String>,
}

impl fmt::Display for UnavailableDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.answered < self.total {
            write!(
                f,
                "cluster unavailable: only {} of {} replicas answered",
                self.answered, self.total
            )?;
        } else {
            write!(
                f,
                "cluster unavailable: all {} replicas answered but none completed the request",
                self.total
            )?;
        }
        if let Some(last) = self.last_error {
            write!(f, " (last error: {last})")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_names_the_counts() {
        let e = ClientError::Unavailable {
            answered: 2,
            total: 5,
            last_error: None,
        };
        assert_eq!(
            e.to_string(),
            "cluster unavailable: only 2 of 5 replicas answered"
        );
        let e = ClientError::Unavailable {
            answered: 5,
            total: 5,
            last_error: Some("timed out after 1000 ms".into()),
        };
        assert!(e.to_string().contains("all 5 replicas answered"));
        assert!(e
            .to_string()
            .ends_with("(last error: timed out after 1000 ms)"));
    }
}
