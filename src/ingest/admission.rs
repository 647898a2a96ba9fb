//! Admission: who may open a connection, how fast, and how many votes a terminal may send.
//!
//! Three budgets, kept in memory:
//! - **handshakes**, server-wide: a token bucket (`handshakes_per_second`, `handshake_burst`).
//!   A TLS handshake (a signature and a key exchange) is the most expensive thing a stranger can
//!   make the server do, so it is the budget that protects every other one;
//! - **connections per source address** (`connections_per_address_max`), an IPv6 address
//!   counted by its /64 prefix (one site), an IPv4-mapped IPv6 address as the IPv4 address;
//! - **votes per terminal per minute** (`votes_per_terminal_per_minute_max`): a token bucket per
//!   authenticated terminal.
//!
//! Architecture invariant: no I/O and no QUIC. `ingest` asks, this module answers; time is passed
//! in as monotonic milliseconds so that tests pin it. Memory is bounded: the address table holds
//! only addresses with an open connection, the vote buckets only terminals that authenticated.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use crate::limits::Limits;
use crate::model::TerminalId;

const SHARDS: usize = 64;

/// Token units per token: a bucket counts in 1/60,000 of a token so that rates per second and
/// per minute refill a whole number of units every millisecond (exact integer arithmetic).
const UNITS: u64 = 60_000;

/// A token bucket: holds up to `capacity` tokens, refilled continuously.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    capacity: u64,
    /// Units added per millisecond: the rate in tokens per minute.
    per_ms: u64,
    units: u64,
    last_ms: u64,
}

impl TokenBucket {
    /// A full bucket of `capacity` tokens refilled at `per_minute` tokens a minute.
    pub(crate) fn per_minute(capacity: u32, per_minute: u64, now_ms: u64) -> TokenBucket {
        let capacity = u64::from(capacity) * UNITS;
        TokenBucket { capacity, per_ms: per_minute, units: capacity, last_ms: now_ms }
    }

    /// A full bucket of `capacity` tokens refilled at `per_second` tokens a second.
    pub(crate) fn per_second(capacity: u32, per_second: u32, now_ms: u64) -> TokenBucket {
        TokenBucket::per_minute(capacity, u64::from(per_second) * 60, now_ms)
    }

    fn refill(&mut self, now_ms: u64) {
        let elapsed_ms = now_ms.saturating_sub(self.last_ms);
        self.units = self.units.saturating_add(elapsed_ms.saturating_mul(self.per_ms)).min(self.capacity);
        self.last_ms = self.last_ms.max(now_ms);
    }

    /// Tokens available at `now_ms`.
    pub(crate) fn available(&mut self, now_ms: u64) -> f64 {
        self.refill(now_ms);
        self.units as f64 / UNITS as f64
    }

    /// Milliseconds until `n` tokens are there (0: now); takes nothing.
    pub(crate) fn wait_ms(&mut self, n: u32, now_ms: u64) -> u64 {
        self.refill(now_ms);
        let needed = u64::from(n) * UNITS;
        match needed.checked_sub(self.units) {
            None | Some(0) => 0,
            Some(_) if self.per_ms == 0 => u64::MAX,
            Some(missing) => missing.div_ceil(self.per_ms),
        }
    }

    /// Takes `n` tokens, or says in how many milliseconds they will be there.
    ///
    /// # Errors
    /// `Err(wait_ms)` when fewer than `n` tokens are available (nothing is taken).
    pub(crate) fn try_take(&mut self, n: u32, now_ms: u64) -> Result<(), u64> {
        self.refill(now_ms);
        let needed = u64::from(n) * UNITS;
        if self.units >= needed {
            self.units -= needed;
            return Ok(());
        }
        let missing = needed - self.units;
        Err(if self.per_ms > 0 { missing.div_ceil(self.per_ms) } else { u64::MAX })
    }
}

/// Which limit refused a connection before its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionLimit {
    /// `connections_max`: the server holds as many connections as it may.
    Server,
    /// `connections_per_address_max`: this address holds as many as it may.
    Address,
    /// `handshakes_per_second` / `handshake_burst`: no handshake budget left.
    Handshakes,
}

impl ConnectionLimit {
    /// The name of the limit (the field in `Limits`), for logs, metrics and close reasons.
    pub(crate) fn name(self) -> &'static str {
        match self {
            ConnectionLimit::Server => "connections_max",
            ConnectionLimit::Address => "connections_per_address_max",
            ConnectionLimit::Handshakes => "handshakes_per_second",
        }
    }

    /// The value the limit has in `limits`.
    pub(crate) fn allowed(self, limits: &Limits) -> u32 {
        match self {
            ConnectionLimit::Server => limits.connections_max,
            ConnectionLimit::Address => limits.connections_per_address_max,
            ConnectionLimit::Handshakes => limits.handshakes_per_second,
        }
    }
}

/// What to do with a new connection attempt.
#[derive(Debug)]
pub enum Admit {
    /// Accept: hold the ticket for as long as the connection lives.
    Accept(AddressTicket),
    /// Ask the client to prove its address first (QUIC Retry): cheap for the server, and a
    /// flood with forged source addresses never comes back.
    Retry,
    /// Refuse without a handshake (QUIC CONNECTION_REFUSED): the client backs off and retries.
    /// For `Handshakes`, the endpoint first queues the attempt for the next token
    /// (`ingest::endpoint::HandshakeQueue`): only a full queue or a long wait refuses it.
    Refuse(ConnectionLimit),
    /// Over a limit, but the handshake budget is ample: complete the handshake and close the
    /// connection with a reason that names the limit, so that the operator can see why.
    Explain(ConnectionLimit),
}

/// The facts about a connection attempt that admission needs.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    /// The client's source address and port (connections are counted by its address, or /64).
    pub remote: SocketAddr,
    /// The client may be sent a QUIC Retry (its address is not validated yet).
    pub can_retry: bool,
    /// Connections the server holds now.
    pub open: usize,
}

/// The connection budgets of a server: handshakes and connections per address.
#[derive(Debug)]
pub struct Admission {
    connections_max: usize,
    per_address_max: u32,
    handshake_burst: f64,
    handshakes: Mutex<TokenBucket>,
    addresses: Arc<Mutex<HashMap<IpAddr, u32>>>,
}

impl Admission {
    /// Budgets from `limits`, with a full handshake bucket at `now_ms` (monotonic ms) and no connection counted.
    pub fn new(limits: &Limits, now_ms: u64) -> Admission {
        Admission {
            connections_max: limits.connections_max as usize,
            per_address_max: limits.connections_per_address_max,
            handshake_burst: f64::from(limits.handshake_burst),
            handshakes: Mutex::new(TokenBucket::per_second(limits.handshake_burst, limits.handshakes_per_second, now_ms)),
            addresses: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Decides about a new connection attempt. Below half the handshake burst the server is
    /// under pressure: it asks unvalidated clients for a Retry and refuses over-limit addresses
    /// without spending a handshake on them.
    pub fn admit(&self, attempt: Attempt, now_ms: u64) -> Admit {
        if attempt.open >= self.connections_max {
            return Admit::Refuse(ConnectionLimit::Server);
        }
        let key = address_key(attempt.remote.ip());
        let mut handshakes = self.handshakes.lock().expect("handshake bucket lock");
        let pressed = handshakes.available(now_ms) < self.handshake_burst / 2.0;
        let over_address = self.addresses.lock().expect("address table lock").get(&key).copied().unwrap_or(0) >= self.per_address_max;
        if over_address && pressed {
            return Admit::Refuse(ConnectionLimit::Address);
        }
        if attempt.can_retry && pressed {
            return Admit::Retry;
        }
        if handshakes.try_take(1, now_ms).is_err() {
            return Admit::Refuse(ConnectionLimit::Handshakes);
        }
        if over_address {
            return Admit::Explain(ConnectionLimit::Address);
        }
        *self.addresses.lock().expect("address table lock").entry(key).or_insert(0) += 1;
        Admit::Accept(AddressTicket { addresses: Arc::clone(&self.addresses), key })
    }

    /// Milliseconds until the handshake budget has a token again (0: it has one now).
    pub fn handshake_wait_ms(&self, now_ms: u64) -> u64 {
        self.handshakes.lock().expect("handshake bucket lock").wait_ms(1, now_ms)
    }

    #[cfg(test)]
    /// Connections open from `addr`'s address (or /64).
    pub(crate) fn open_from(&self, addr: IpAddr) -> u32 {
        self.addresses.lock().expect("address table lock").get(&address_key(addr)).copied().unwrap_or(0)
    }

    /// Addresses with at least one open connection.
    #[cfg(test)]
    pub(crate) fn addresses(&self) -> usize {
        self.addresses.lock().expect("address table lock").len()
    }
}

/// The key connections are counted under: an IPv4 address, or the /64 prefix of an IPv6 one
/// (a site gets a /64; counting single IPv6 addresses would be no limit at all).
pub(crate) fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
        },
    }
}

/// One open connection counted against its address; dropping it frees the slot.
#[derive(Debug)]
pub struct AddressTicket {
    addresses: Arc<Mutex<HashMap<IpAddr, u32>>>,
    key: IpAddr,
}

impl Drop for AddressTicket {
    fn drop(&mut self) {
        let mut addresses = self.addresses.lock().expect("address table lock");
        if let Some(count) = addresses.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                addresses.remove(&self.key);
            }
        }
    }
}

/// The vote budget of every terminal: `votes_per_terminal_per_minute_max` votes, refilled
/// continuously, so a terminal may send a minute's worth at once and then that rate.
#[derive(Debug)]
pub struct VoteRates {
    per_minute: u32,
    shards: Vec<Mutex<HashMap<TerminalId, TokenBucket>>>,
}

impl VoteRates {
    /// No terminal budgets yet; each terminal gets a full one (`votes_per_terminal_per_minute_max` votes) on its first batch.
    pub fn new(limits: &Limits) -> VoteRates {
        VoteRates {
            per_minute: limits.votes_per_terminal_per_minute_max,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// Takes `votes` from `terminal`'s budget.
    ///
    /// # Errors
    /// `Err(wait_ms)`: how long until the budget holds `votes` (nothing is taken).
    pub fn try_take(&self, terminal: TerminalId, votes: u32, now_ms: u64) -> Result<(), u64> {
        let mut shard = self.shards[terminal as usize % SHARDS].lock().expect("vote rate shard lock");
        let per_minute = self.per_minute;
        let bucket = shard.entry(terminal).or_insert_with(|| TokenBucket::per_minute(per_minute, u64::from(per_minute), now_ms));
        bucket.try_take(votes, now_ms)
    }

    /// Terminals with a budget in memory (those that sent a batch since the server started).
    #[cfg(test)]
    pub(crate) fn terminals(&self) -> usize {
        self.shards.iter().map(|s| s.lock().expect("vote rate shard lock").len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            connections_max: 10,
            connections_per_address_max: 2,
            handshakes_per_second: 10,
            handshake_burst: 4,
            votes_per_terminal_per_minute_max: 600,
            ..Limits::default()
        }
    }

    fn attempt(remote: &str, open: usize) -> Attempt {
        Attempt { remote: remote.parse().unwrap(), can_retry: false, open }
    }

    #[test]
    fn bucket_refills_at_its_rate_up_to_its_capacity() {
        let mut bucket = TokenBucket::per_second(4, 10, 1_000);
        for _ in 0..4 {
            bucket.try_take(1, 1_000).unwrap();
        }
        assert_eq!(bucket.try_take(1, 1_000), Err(100), "one token every 100 ms");
        assert_eq!(bucket.try_take(1, 1_099), Err(1));
        bucket.try_take(1, 1_100).unwrap();
        assert_eq!(bucket.available(1_000_000), 4.0, "never above capacity");
        assert_eq!(bucket.try_take(5, 1_000_000), Err(100), "more than the capacity waits for the missing tokens");
        assert_eq!(bucket.available(999_000), 4.0, "a clock going back refills nothing and takes nothing");
    }

    #[test]
    fn connections_per_address_are_counted_and_released() {
        let admission = Admission::new(&Limits { handshake_burst: 100, ..limits() }, 0);
        let a = admission.admit(attempt("192.0.2.1:1000", 0), 0);
        let b = admission.admit(attempt("192.0.2.1:1001", 1), 0);
        assert!(matches!((&a, &b), (Admit::Accept(_), Admit::Accept(_))));
        assert!(matches!(admission.admit(attempt("192.0.2.2:1000", 2), 0), Admit::Accept(_)), "another address has its own count");
        // The third from the same address: the budget is ample, so the refusal is explained.
        assert!(matches!(admission.admit(attempt("192.0.2.1:1002", 3), 0), Admit::Explain(ConnectionLimit::Address)));
        assert_eq!(admission.open_from("192.0.2.1".parse().unwrap()), 2);
        drop(a);
        assert_eq!(admission.open_from("192.0.2.1".parse().unwrap()), 1);
        drop(b);
        assert_eq!(admission.addresses(), 0, "the table forgets addresses without connections");
    }

    #[test]
    fn ipv6_is_counted_per_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(address_key("2001:db8:1:2:aaaa::1".parse().unwrap()), "2001:db8:1:2::".parse::<IpAddr>().unwrap());
        assert_eq!(address_key("::ffff:192.0.2.7".parse().unwrap()), "192.0.2.7".parse::<IpAddr>().unwrap());
        let admission = Admission::new(&Limits { handshake_burst: 100, ..limits() }, 0);
        let _a = admission.admit(attempt("[2001:db8::1]:1", 0), 0);
        let _b = admission.admit(attempt("[2001:db8::2]:1", 1), 0);
        assert!(matches!(admission.admit(attempt("[2001:db8::3]:1", 2), 0), Admit::Explain(ConnectionLimit::Address)));
        assert!(matches!(admission.admit(attempt("[2001:db8:0:1::1]:1", 2), 0), Admit::Accept(_)), "another /64");
    }

    #[test]
    fn handshake_budget_refuses_then_refills_and_retries_under_pressure() {
        let admission = Admission::new(&limits(), 0);
        let mut tickets = Vec::new();
        for i in 0..4 {
            match admission.admit(attempt(&format!("198.51.100.{i}:1"), i), 0) {
                Admit::Accept(ticket) => tickets.push(ticket),
                other => panic!("attempt {i} within the burst: {other:?}"),
            }
        }
        assert!(matches!(admission.admit(attempt("198.51.100.9:1", 4), 0), Admit::Refuse(ConnectionLimit::Handshakes)));
        let unvalidated = Attempt { can_retry: true, ..attempt("198.51.100.9:1", 4) };
        assert!(matches!(admission.admit(unvalidated, 0), Admit::Retry), "under pressure, prove the address first");
        assert!(matches!(admission.admit(attempt("198.51.100.9:1", 4), 100), Admit::Accept(_)), "10/s: a token after 100 ms");
        assert!(matches!(admission.admit(attempt("198.51.100.9:1", 10), 10_000), Admit::Refuse(ConnectionLimit::Server)));
    }

    #[test]
    fn the_wait_for_the_next_handshake_token_follows_the_rate() {
        let admission = Admission::new(&limits(), 0);
        assert_eq!(admission.handshake_wait_ms(0), 0, "a full bucket");
        for i in 0..4 {
            assert!(matches!(admission.admit(attempt(&format!("198.51.100.{i}:1"), i), 0), Admit::Accept(_)));
        }
        assert_eq!(admission.handshake_wait_ms(0), 100, "10 a second: the next token in 100 ms");
        assert_eq!(admission.handshake_wait_ms(60), 40);
        assert_eq!(admission.handshake_wait_ms(100), 0);
    }

    #[test]
    fn over_address_attempts_under_pressure_cost_no_handshake() {
        let admission = Admission::new(&limits(), 0);
        let _a = admission.admit(attempt("192.0.2.1:1", 0), 0);
        let _b = admission.admit(attempt("192.0.2.1:2", 1), 0);
        let _c = admission.admit(attempt("192.0.2.3:1", 2), 0);
        // 1 token of 4 left: under pressure. The full address is refused before any handshake.
        assert!(matches!(admission.admit(attempt("192.0.2.1:3", 3), 0), Admit::Refuse(ConnectionLimit::Address)));
        assert!(matches!(admission.admit(attempt("192.0.2.4:1", 3), 0), Admit::Accept(_)), "the token is still there");
    }

    #[test]
    fn vote_rate_is_per_terminal_and_refills_per_minute() {
        let rates = VoteRates::new(&limits());
        rates.try_take(1, 600, 0).unwrap();
        assert_eq!(rates.try_take(1, 1, 0), Err(100), "600 a minute: one vote every 100 ms");
        rates.try_take(2, 600, 0).unwrap();
        rates.try_take(1, 300, 30_000).unwrap();
        assert!(rates.try_take(1, 301, 30_000).is_err());
        assert_eq!(rates.terminals(), 2);
    }
}
