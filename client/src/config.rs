//! Client configuration.

use paxoskv::DEFAULT_MAX_VALUE_BYTES;
use paxoskv_service::tls::{load_token, ClientTlsFiles};
use paxoskv_service::Dialer;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// First port of the default local cluster (`paxoskv-server 15000`).
pub const DEFAULT_BASE_PORT: u16 = 15000;

/// Replicas in the default local cluster.
pub const DEFAULT_REPLICA_COUNT: u16 = 5;

/// Default overall deadline of one operation, retries included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Default deadline of one RPC attempt.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);

/// The default cluster: `127.0.0.1:15000..=15004`.
pub fn default_servers() -> Vec<SocketAddr> {
    (0..DEFAULT_REPLICA_COUNT)
        .map(|i| SocketAddr::from((Ipv4Addr::LOCALHOST, DEFAULT_BASE_PORT + i)))
        .collect()
}

/// How a [`crate::Client`] reaches the cluster and how long it keeps trying.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// Every replica's client address, in replica-id order.
    pub servers: Vec<SocketAddr>,
    /// Overall deadline of one operation, retries and redirects included.
    pub timeout: Duration,
    /// Deadline of one RPC attempt (also bounds dialling); capped by what remains of `timeout`.
    pub attempt_timeout: Duration,
    /// Values above this size are refused locally, before any network traffic.
    pub max_value_bytes: usize,
    /// Give up after one round of tries when every configured replica refuses the
    /// connection (nothing listens: no server is running) instead of retrying until the
    /// deadline. Off by default, so that a long-running program rides out a restart of the
    /// whole cluster; the `paxoskv` tool turns it on.
    pub fail_fast_when_refused: bool,
    /// TLS and token (default: plaintext, no token).
    pub security: ClientSecurity,
}

/// How a client proves itself and checks the servers, as etcdctl names it: files are read
/// when the [`crate::Client`] is made.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientSecurity {
    /// Use TLS, trusting this CA for the servers' certificates (verified against the address
    /// dialled).
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM), for servers started with --client-ca.
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key: Option<PathBuf>,
    /// A bearer token to present, for servers started with --auth-token-file.
    pub token_file: Option<PathBuf>,
}

impl ClientSecurity {
    /// Loads the files into a dialer; the error names the file and the problem.
    pub fn dialer(&self) -> Result<Dialer, String> {
        let cert_and_key = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            (None, None) => None,
            _ => return Err("--cert and --key go together".into()),
        };
        let dialer = match &self.cacert {
            Some(ca) => Dialer::tls(&ClientTlsFiles {
                ca: ca.clone(),
                cert_and_key,
            })
            .map_err(|e| e.to_string())?,
            None if cert_and_key.is_some() => {
                return Err("a client certificate needs TLS: give --cacert too".into())
            }
            None => Dialer::plain(),
        };
        match &self.token_file {
            Some(path) => Ok(dialer.with_token(load_token(path).map_err(|e| e.to_string())?)),
            None => Ok(dialer),
        }
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            servers: default_servers(),
            timeout: DEFAULT_TIMEOUT,
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            fail_fast_when_refused: false,
            security: ClientSecurity::default(),
        }
    }
}

impl ClientConfig {
    /// The default configuration with these servers.
    pub fn with_servers(servers: Vec<SocketAddr>) -> Self {
        ClientConfig {
            servers,
            ..ClientConfig::default()
        }
    }

    /// Checks the configuration is usable; returns a description of the first problem.
    pub fn validate(&self) -> Result<(), String> {
        if self.servers.is_empty() {
            return Err("no servers configured".to_string());
        }
        if self.timeout.is_zero() {
            return Err("timeout must be positive".to_string());
        }
        if self.attempt_timeout.is_zero() {
            return Err("attempt timeout must be positive".to_string());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_servers_are_five_consecutive_local_ports() {
        let servers = default_servers();
        assert_eq!(servers.len(), 5);
        assert_eq!(servers[0].to_string(), "127.0.0.1:15000");
        assert_eq!(servers[4].to_string(), "127.0.0.1:15004");
    }

    #[test]
    fn security_flags_must_fit_together() {
        let cert_only = ClientSecurity {
            cert: Some("c.pem".into()),
            ..ClientSecurity::default()
        };
        assert!(cert_only.dialer().unwrap_err().contains("--key"));
        let no_ca = ClientSecurity {
            key: Some("k.pem".into()),
            ..cert_only.clone()
        };
        assert!(no_ca.dialer().unwrap_err().contains("--cacert"));
        let missing = ClientSecurity {
            cacert: Some("/nonexistent/ca.pem".into()),
            ..ClientSecurity::default()
        };
        assert!(missing
            .dialer()
            .unwrap_err()
            .contains("cannot read /nonexistent/ca.pem"));
        assert!(!ClientSecurity::default().dialer().unwrap().is_tls());
    }

    #[test]
    fn validate_rejects_empty_and_zero() {
        assert!(ClientConfig::default().validate().is_ok());
        assert!(ClientConfig::with_servers(vec![]).validate().is_err());
        let zero = ClientConfig {
            timeout: Duration::ZERO,
            ..ClientConfig::default()
        };
        assert!(zero.validate().is_err());
    }
}
