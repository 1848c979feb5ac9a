//! Limits that keep one client from hurting the others: publish rate per key,
//! open connections per user and per IP, message rate per WebSocket, and the
//! origins a browser may connect from. Each is a setting; going over one gets
//! `429 rate_limited` (or an `error` frame) and touches no one else.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Instant;

use agentwire_protocol::{ErrorCode, UserId};
use axum::http::{HeaderMap, header};
use dashmap::DashMap;
use parking_lot::Mutex;

use crate::config::ServerConfig;
use crate::error::ApiError;

/// A token bucket: `rate` per second, bursts up to twice that.
#[derive(Debug)]
pub struct TokenBucket {
    tokens: f64,
    capacity: f64,
    per_sec: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket for `rate` per second.
    pub fn new(rate: u32) -> Self {
        let capacity = f64::from(rate.max(1)) * 2.0;
        Self { tokens: capacity, capacity, per_sec: f64::from(rate.max(1)), last: Instant::now() }
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.per_sec).min(self.capacity);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The server's limits and what counts against them.
pub struct Limits {
    publish_rate: u32,
    publish: DashMap<u64, Mutex<TokenBucket>>,
    max_per_user: usize,
    max_per_ip: usize,
    per_user: DashMap<UserId, usize>,
    per_ip: DashMap<IpAddr, usize>,
    allowed_origins: Vec<String>,
    /// `AGENTWIRE_ALLOWED_HOSTS`, lower-cased (`host` or `host:port`).
    allowed_hosts: Vec<String>,
    /// Listening on loopback: the loopback names with the bound port are this server's own.
    loopback: bool,
    /// Dev mode: only loopback names may be in `Host` (no DNS rebinding).
    dev_mode: bool,
    /// The bound port, once known (the settings may say 0).
    port: AtomicU16,
}

/// The names a loopback server is reached by.
const LOOPBACK_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "[::1]"];

fn rate_limited(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::RateLimited, message)
}

impl Limits {
    /// The limits the settings name.
    pub fn new(config: &ServerConfig) -> Arc<Self> {
        Arc::new(Self {
            publish_rate: config.publish_rate,
            publish: DashMap::new(),
            max_per_user: config.max_connections_per_user,
            max_per_ip: config.max_connections_per_ip,
            per_user: DashMap::new(),
            per_ip: DashMap::new(),
            allowed_origins: config.allowed_origins.iter().map(|o| o.trim().trim_end_matches('/').to_owned()).collect(),
            allowed_hosts: config.allowed_hosts.iter().map(|h| h.trim().to_ascii_lowercase()).collect(),
            loopback: config.listen.ip().is_loopback(),
            dev_mode: config.dev_mode(),
            port: AtomicU16::new(config.listen.port()),
        })
    }

    /// Records the port the listener was bound to.
    pub fn set_port(&self, port: u16) {
        self.port.store(port, Ordering::Relaxed);
    }

    /// Whether `authority` (`host[:port]`, lower-cased) names this server: one
    /// of the allowed hosts (an entry without a port matches any port), or,
    /// listening on loopback, a loopback name with the bound port.
    fn is_own_authority(&self, authority: &str) -> bool {
        (self.loopback && self.is_loopback_authority(authority))
            || self
                .allowed_hosts
                .iter()
                .any(|h| h == "*" || h == authority || authority.rsplit_once(':').is_some_and(|(host, _)| host == h))
    }

    /// Whether `authority` is a loopback name with the bound port (the port may
    /// be left out when it is 80). Compared in place: this runs on every request in dev mode.
    fn is_loopback_authority(&self, authority: &str) -> bool {
        let port = self.port.load(Ordering::Relaxed);
        let (name, given) = match authority.rsplit_once(':') {
            // `[::1]` alone has colons inside its brackets, not a port.
            Some((name, p)) if !p.ends_with(']') => (name, p.parse::<u16>().ok()),
            _ => (authority, (port == 80).then_some(80)),
        };
        given == Some(port) && LOOPBACK_NAMES.contains(&name)
    }

    /// `403` when the request's `Host` is not this server's, where that is
    /// checked: always in dev mode (loopback names only, against DNS
    /// rebinding), elsewhere when `AGENTWIRE_ALLOWED_HOSTS` is set. A request
    /// without `Host` (not a browser) passes.
    pub fn check_host(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        if !self.dev_mode && self.allowed_hosts.is_empty() {
            return Ok(());
        }
        let Some(host) = headers.get(header::HOST) else { return Ok(()) };
        let host = host.to_str().unwrap_or_default().to_ascii_lowercase();
        let allowed = if self.dev_mode { self.is_loopback_authority(&host) } else { self.is_own_authority(&host) };
        if allowed { Ok(()) } else { Err(ApiError::new(ErrorCode::Forbidden, "this host name is not served here")) }
    }

    /// Counts one publish request of the key `key`; `429` past its rate.
    pub fn allow_publish(&self, key: u64) -> Result<(), ApiError> {
        if self.publish_rate == 0 {
            return Ok(());
        }
        let bucket = self.publish.entry(key).or_insert_with(|| Mutex::new(TokenBucket::new(self.publish_rate)));
        if bucket.lock().try_take() {
            Ok(())
        } else {
            Err(rate_limited(format!("more than {} publishes per second with this key", self.publish_rate)))
        }
    }

    /// Admits one more connection for `user` from `ip`, or `429`. The permit
    /// gives the place back when dropped.
    pub fn open_connection(self: &Arc<Self>, user: &UserId, ip: IpAddr) -> Result<ConnectionPermit, ApiError> {
        {
            let mut n = self.per_ip.entry(ip).or_insert(0);
            if *n >= self.max_per_ip {
                return Err(rate_limited(format!("at most {} connections per address", self.max_per_ip)));
            }
            *n += 1;
        }
        {
            let mut n = self.per_user.entry(user.clone()).or_insert(0);
            if *n >= self.max_per_user {
                drop(n);
                release(&self.per_ip, &ip);
                return Err(rate_limited(format!("at most {} connections per user", self.max_per_user)));
            }
            *n += 1;
        }
        Ok(ConnectionPermit { limits: self.clone(), user: user.clone(), ip })
    }

    /// `403` when a browser request comes from an origin that is not allowed.
    ///
    /// Allowed: an origin listed in `AGENTWIRE_ALLOWED_ORIGINS` (scheme, host and
    /// port; `*` for any), or an `http`/`https` origin whose host and port are
    /// this server's own (see `is_own_authority`). Never compared with the
    /// request's `Host`, which a rebinding attacker controls as well as `Origin`.
    pub fn check_origin(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(origin) = headers.get(header::ORIGIN) else { return Ok(()) };
        let origin = origin.to_str().unwrap_or_default().trim_end_matches('/').to_ascii_lowercase();
        let listed = self.allowed_origins.iter().any(|o| o == "*" || o.eq_ignore_ascii_case(&origin));
        let own = match origin.split_once("://") {
            Some(("http" | "https", authority)) => self.is_own_authority(authority),
            _ => false,
        };
        if listed || own { Ok(()) } else { Err(ApiError::new(ErrorCode::Forbidden, "this origin may not connect")) }
    }
}

fn release<K: std::hash::Hash + Eq + Clone>(counts: &DashMap<K, usize>, key: &K) {
    if let dashmap::Entry::Occupied(mut n) = counts.entry(key.clone()) {
        *n.get_mut() = n.get().saturating_sub(1);
        if *n.get() == 0 {
            n.remove();
        }
    }
}

/// One admitted connection; dropping it frees its place.
pub struct ConnectionPermit {
    limits: Arc<Limits>,
    user: UserId,
    ip: IpAddr,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        release(&self.limits.per_user, &self.user);
        release(&self.limits.per_ip, &self.ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(edit: impl FnOnce(&mut ServerConfig)) -> Arc<Limits> {
        let mut config = ServerConfig::from_env().unwrap();
        edit(&mut config);
        Limits::new(&config)
    }

    #[test]
    fn a_bucket_allows_bursts_then_the_rate() {
        let mut bucket = TokenBucket::new(5);
        assert_eq!((0..20).filter(|_| bucket.try_take()).count(), 10);
    }

    #[test]
    fn connections_are_counted_per_user_and_per_address_and_given_back() {
        let limits = limits(|c| {
            c.max_connections_per_user = 2;
            c.max_connections_per_ip = 3;
        });
        let (alice, bob) = (UserId::parse("alice").unwrap(), UserId::parse("bob").unwrap());
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let a1 = limits.open_connection(&alice, ip).unwrap();
        let _a2 = limits.open_connection(&alice, ip).unwrap();
        assert_eq!(limits.open_connection(&alice, ip).err().map(|e| e.code), Some(ErrorCode::RateLimited));
        let _b1 = limits.open_connection(&bob, ip).unwrap();
        assert!(limits.open_connection(&bob, ip).is_err(), "the address is full");
        drop(a1);
        assert!(limits.open_connection(&bob, ip).is_ok());
    }

    #[test]
    fn loopback_authorities_need_the_bound_port() {
        let limits = limits(|_| {});
        limits.set_port(8080);
        for ok in ["localhost:8080", "127.0.0.1:8080", "[::1]:8080"] {
            assert!(limits.is_loopback_authority(ok), "{ok}");
        }
        for refused in ["localhost:8081", "localhost", "[::1]", "evil.example:8080", "127.0.0.2:8080", "[::1]:x"] {
            assert!(!limits.is_loopback_authority(refused), "{refused}");
        }
        limits.set_port(80);
        assert!(limits.is_loopback_authority("localhost") && limits.is_loopback_authority("[::1]"));
    }

    #[test]
    fn origins_are_checked_only_for_browsers_and_against_lists() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "agentwire.example:8080".parse().unwrap());
        let same_only = limits(|_| {});
        assert!(same_only.check_origin(&headers).is_ok(), "no Origin: not a browser");
        // The Host header is not trusted: a rebinding attacker sets it with Origin.
        headers.insert(header::ORIGIN, "https://agentwire.example:8080".parse().unwrap());
        assert!(same_only.check_origin(&headers).is_err());
        let hosts = limits(|c| c.allowed_hosts = vec!["agentwire.example".into()]);
        assert!(hosts.check_origin(&headers).is_ok());
        headers.insert(header::ORIGIN, "chrome-extension://agentwire.example:8080".parse().unwrap());
        assert!(hosts.check_origin(&headers).is_err(), "scheme compared too");
        headers.insert(header::ORIGIN, "https://evil.example".parse().unwrap());
        assert!(same_only.check_origin(&headers).is_err());
        let listed = limits(|c| c.allowed_origins = vec!["https://evil.example/".into()]);
        assert!(listed.check_origin(&headers).is_ok());
    }
}
