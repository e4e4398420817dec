//! Errors a client operation can end with.

use paxoskv::InvalidInput;
use paxoskv_service::KvError;
use std::fmt;
use std::net::SocketAddr;

/// Why a client operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The key or value was refused locally; nothing was sent.
    // Not a `#[source]`: the message already includes it, and `{:#}` would repeat it.
    #[error("invalid input: {0}")]
    InvalidInput(InvalidInput),
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
    /// Every replica refused the connection: nothing listens at any address, so the request
    /// was certainly not applied. Only with [`crate::ClientConfig::fail_fast_when_refused`].
    #[error(
        "cannot connect to any replica ({reason}); is the server running? tried {}",
        format_addrs(tried)
    )]
    NoServer {
        /// The addresses tried.
        tried: Vec<SocketAddr>,
        /// The last dial error.
        reason: String,
    },
    /// TLS or the server's preamble refused the connection (untrusted certificate, missing
    /// client certificate, wrong token). Not retried: the configuration has to change.
    #[error("{reason}")]
    Security {
        /// What failed, e.g. "TLS handshake with 127.0.0.1:15000 failed: invalid peer
        /// certificate: UnknownIssuer" or "unauthenticated: invalid bearer token".
        reason: String,
    },
    /// One replica could not be reached (only from per-replica calls such as status).
    #[error("{addr}: {reason}")]
    Unreachable {
        /// The replica.
        addr: SocketAddr,
        /// Why: dial error, transport error or no answer in time.
        reason: String,
    },
}

impl From<InvalidInput> for ClientError {
    fn from(e: InvalidInput) -> Self {
        ClientError::InvalidInput(e)
    }
}

/// Addresses as a short list: consecutive ports of one host become `host:first..last`.
pub fn format_addrs(addrs: &[SocketAddr]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < addrs.len() {
        let mut j = i;
        while j + 1 < addrs.len()
            && addrs[j + 1].ip() == addrs[i].ip()
            && u32::from(addrs[j + 1].port()) == u32::from(addrs[j].port()) + 1
        {
            j += 1;
        }
        parts.push(if j > i + 1 {
            format!("{}..{}", addrs[i], addrs[j].port())
        } else {
            (i..=j)
                .map(|k| addrs[k].to_string())
                .collect::<Vec<_>>()
                .join(", ")
        });
        i = j + 1;
    }
    parts.join(", ")
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

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn address_lists_collapse_port_runs() {
        let five = addrs(&[
            "127.0.0.1:15000",
            "127.0.0.1:15001",
            "127.0.0.1:15002",
            "127.0.0.1:15003",
            "127.0.0.1:15004",
        ]);
        assert_eq!(format_addrs(&five), "127.0.0.1:15000..15004");
        let mixed = addrs(&["127.0.0.1:1", "127.0.0.1:2", "10.0.0.1:3", "127.0.0.1:9"]);
        assert_eq!(
            format_addrs(&mixed),
            "127.0.0.1:1, 127.0.0.1:2, 10.0.0.1:3, 127.0.0.1:9"
        );
    }

    #[test]
    fn invalid_input_is_said_once() {
        let e = ClientError::from(InvalidInput::EmptyKey);
        assert_eq!(e.to_string(), "invalid input: empty key");
        assert!(std::error::Error::source(&e).is_none());
    }

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
