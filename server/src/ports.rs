//! Free loopback ports for tests and tools that start replicas.
//!
//! Binding port 0 and releasing it races with every outgoing connection on the machine: the
//! kernel hands the just-released port to the next `connect()` as its local port, and the
//! replica that rebinds it a moment later fails with "address in use" (CI saw this with
//! parallel cluster tests). So ports are drawn at random from *below* the ephemeral range,
//! which neither `connect()` nor a port-0 bind ever picks.

use rand::Rng;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};

/// Attempts before giving up on finding free ports.
const MAX_ATTEMPTS: usize = 2_000;
/// Lowest port handed out (clear of well-known and common service ports).
const LOWEST_PORT: u16 = 10_000;
/// Linux's default first ephemeral port, used when the range cannot be read.
const DEFAULT_EPHEMERAL_LOW: u16 = 32_768;

/// `n` loopback listeners on distinct free ports, still bound (hand them to replicas or drop
/// them just before the process that uses the addresses binds).
pub fn reserve_loopback(n: usize) -> io::Result<Vec<TcpListener>> {
    let mut held = Vec::with_capacity(n);
    let mut rng = rand::thread_rng();
    let high = ephemeral_low().saturating_sub(1);
    for _ in 0..MAX_ATTEMPTS {
        if held.len() == n {
            break;
        }
        let port = rng.gen_range(LOWEST_PORT..=high.max(LOWEST_PORT));
        if let Ok(l) = TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
            held.push(l);
        }
    }
    if held.len() < n {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("found only {} of {n} free loopback ports", held.len()),
        ));
    }
    Ok(held)
}

/// `n` loopback addresses free a moment ago, outside the ephemeral range.
pub fn free_loopback_addrs(n: usize) -> io::Result<Vec<SocketAddr>> {
    reserve_loopback(n)?
        .iter()
        .map(TcpListener::local_addr)
        .collect()
}

/// `n` consecutive free loopback ports (as `paxoskv-server BASE` uses), still bound.
pub fn reserve_port_block(n: u16) -> io::Result<(u16, Vec<TcpListener>)> {
    let mut rng = rand::thread_rng();
    let high = ephemeral_low().saturating_sub(n).max(LOWEST_PORT);
    for _ in 0..MAX_ATTEMPTS / 10 {
        let base = rng.gen_range(LOWEST_PORT..=high);
        let held: Vec<_> = (0..n)
            .map_while(|i| TcpListener::bind((Ipv4Addr::LOCALHOST, base + i)).ok())
            .collect();
        if held.len() == usize::from(n) {
            return Ok((base, held));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        format!("found no block of {n} free loopback ports"),
    ))
}

/// The first port of the kernel's ephemeral range.
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .filter(|low| *low > LOWEST_PORT + 1_000)
        .unwrap_or(DEFAULT_EPHEMERAL_LOW)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_ports_are_distinct_and_below_the_ephemeral_range() {
        let held = reserve_loopback(20).expect("free ports");
        let mut ports: Vec<u16> = held
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        assert!(ports
            .iter()
            .all(|p| *p < ephemeral_low() && *p >= LOWEST_PORT));
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 20);
    }

    #[test]
    fn a_port_block_is_consecutive() {
        let (base, held) = reserve_port_block(5).expect("free block");
        let ports: Vec<u16> = held
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        assert_eq!(ports, (base..base + 5).collect::<Vec<_>>());
    }
}
