//! Auth tokens: `--auth-token` parsing, etcd's simple tokens and their per-core tables.
//! JWTs are in [`super::jwt`].
//!
//! **Simple tokens** (etcd's default): `<16 random letters>.<raft index>`. The member that
//! receives Authenticate checks the password, draws the letters and proposes; every member
//! applies the entry and learns the token (so any member accepts it), with a TTL
//! (`--auth-token-ttl`, 300 s) counted on that member's own clock and restarted each time
//! the token is used there. They live in memory only (a restart forgets them; replaying
//! the log after the last checkpoint brings back the recent ones, as in etcd). A user's
//! tokens die with UserDelete / UserChangePassword, all of them with AuthDisable.
//!
//! In rivet every serving core keeps a [`SimpleTokenTable`]; the raft core turns each
//! applied [`TokenEvent`] into one [`TokenUpdate`] and sends it to every core in the apply
//! stream. An assigned token is one [`SimpleTokenEntry`] shared by all cores through an
//! `Arc`, whose deadline is an atomic: a use on any core renews it for all, lock-free,
//! and every core agrees on expiry.
//!
//! A token names a raft index; a core that has not applied that index yet must wait for
//! it before looking the token up (etcd's `indexWaiter`): see [`simple_token_index`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use ring::rand::{SecureRandom, SystemRandom};

pub use super::jwt::parse_go_duration;
use super::jwt::{JwtError, JwtProvider};
pub use super::store::simple_token;
use super::store::TokenEvent;

/// etcd's `--auth-token-ttl` default, in seconds.
pub const SIMPLE_TOKEN_TTL_DEFAULT: Duration = Duration::from_secs(300);
const SIMPLE_TOKEN_LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
const SIMPLE_TOKEN_PREFIX_LENGTH: usize = 16;

/// etcd's `genTokenPrefix`: 16 letters drawn uniformly from a-zA-Z.
pub fn simple_token_prefix() -> String {
    let random = SystemRandom::new();
    let mut prefix = String::with_capacity(SIMPLE_TOKEN_PREFIX_LENGTH);
    let mut bytes = [0u8; 32];
    while prefix.len() < SIMPLE_TOKEN_PREFIX_LENGTH {
        if random.fill(&mut bytes).is_err() {
            // The OS random source failing is not something to go on without.
            panic!("no random bytes from the operating system");
        }
        // 208 = 4 * 52: rejecting larger bytes keeps every letter equally likely.
        for byte in bytes {
            if byte < 208 && prefix.len() < SIMPLE_TOKEN_PREFIX_LENGTH {
                prefix.push(SIMPLE_TOKEN_LETTERS[usize::from(byte % 52)] as char);
            }
        }
    }
    prefix
}

/// etcd's `isValidSimpleToken` parse: exactly one `.`, then an integer as Go's
/// `strconv.Atoi` reads it (optional sign). Returns the raft index the token was assigned
/// at; a negative index is never valid (etcd would wait for it until the request times
/// out).
pub fn simple_token_index(token: &str) -> Option<u64> {
    let mut parts = token.split('.');
    let (_, index, None) = (parts.next()?, parts.next()?, parts.next()) else {
        return None;
    };
    let digits = index.strip_prefix('+').unwrap_or(index);
    if digits.starts_with('-') {
        return None;
    }
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: i64 = digits.parse().ok()?;
    u64::try_from(value).ok()
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn nanos_since_epoch(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX)
}

/// One simple token, shared by the token tables of all cores.
#[derive(Debug)]
pub struct SimpleTokenEntry {
    pub token: String,
    pub username: String,
    ttl: Duration,
    /// Nanoseconds since the process epoch after which the token is dead.
    deadline: AtomicU64,
}

impl SimpleTokenEntry {
    pub fn new(token: String, username: String, ttl: Duration, now: Instant) -> SimpleTokenEntry {
        let entry = SimpleTokenEntry {
            token,
            username,
            ttl,
            deadline: AtomicU64::new(0),
        };
        entry.renew(now);
        entry
    }

    fn renew(&self, now: Instant) {
        let deadline = nanos_since_epoch(now)
            .saturating_add(u64::try_from(self.ttl.as_nanos()).unwrap_or(u64::MAX));
        self.deadline.store(deadline, Ordering::Relaxed);
    }

    pub fn is_alive(&self, now: Instant) -> bool {
        nanos_since_epoch(now) <= self.deadline.load(Ordering::Relaxed)
    }
}

/// An applied token change, as the raft core sends it to every core.
#[derive(Clone, Debug)]
pub enum TokenUpdate {
    Assigned(Arc<SimpleTokenEntry>),
    InvalidateUser(String),
    InvalidateAll,
}

impl TokenUpdate {
    /// Made once on the raft core per applied event; clones go to every core.
    pub fn from_event(event: TokenEvent, ttl: Duration, now: Instant) -> TokenUpdate {
        match event {
            TokenEvent::Assigned { token, username } => {
                TokenUpdate::Assigned(Arc::new(SimpleTokenEntry::new(token, username, ttl, now)))
            }
            TokenEvent::InvalidateUser(name) => TokenUpdate::InvalidateUser(name),
            TokenEvent::InvalidateAll => TokenUpdate::InvalidateAll,
        }
    }
}

/// One core's simple tokens.
#[derive(Debug, Default)]
pub struct SimpleTokenTable {
    tokens: HashMap<String, Arc<SimpleTokenEntry>>,
}

impl SimpleTokenTable {
    pub fn new() -> SimpleTokenTable {
        SimpleTokenTable::default()
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn apply(&mut self, update: &TokenUpdate) {
        match update {
            TokenUpdate::Assigned(entry) => {
                // Re-applying the log after a restart assigns the same token again; the
                // newer entry wins (etcd panics on a duplicate; it cannot happen otherwise).
                self.tokens.insert(entry.token.clone(), Arc::clone(entry));
            }
            TokenUpdate::InvalidateUser(name) => {
                self.tokens.retain(|_, entry| entry.username != *name);
            }
            TokenUpdate::InvalidateAll => self.tokens.clear(),
        }
    }

    /// etcd's `tokenSimple.info`: the user of a live token, renewing it (on every core).
    /// The caller pairs the name with its snapshot's auth revision.
    pub fn lookup(&self, token: &str, now: Instant) -> Option<&str> {
        let entry = self.tokens.get(token)?;
        if !entry.is_alive(now) {
            return None;
        }
        entry.renew(now);
        Some(&entry.username)
    }

    /// Drops expired tokens (etcd's keeper does it once a second).
    pub fn sweep(&mut self, now: Instant) {
        self.tokens.retain(|_, entry| entry.is_alive(now));
    }
}

/// What `--auth-token` configures.
#[derive(Clone, Debug)]
pub enum TokenConfig {
    /// `simple` (etcd's default).
    Simple { ttl: Duration },
    /// `jwt,...`.
    Jwt(Arc<JwtProvider>),
    /// `--auth-token ''`: etcd's "nop" provider; Authenticate always fails.
    None,
}

/// Why `--auth-token` was refused; the text is etcd's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenConfigError {
    #[error("auth: invalid auth options")]
    InvalidAuthOptions,
    #[error("{0}")]
    Jwt(#[from] JwtError),
}

/// etcd's `decomposeOpts`: `type[,name=value]*`, each option exactly one `=`, no name
/// twice.
pub fn decompose_token_options(
    options: &str,
) -> Result<(String, HashMap<String, String>), TokenConfigError> {
    let mut parts = options.split(',');
    let kind = parts.next().unwrap_or_default().to_string();
    let mut map = HashMap::new();
    for part in parts {
        let pair: Vec<&str> = part.split('=').collect();
        let [name, value] = pair.as_slice() else {
            return Err(TokenConfigError::InvalidAuthOptions);
        };
        if map.insert(name.to_string(), value.to_string()).is_some() {
            return Err(TokenConfigError::InvalidAuthOptions);
        }
    }
    Ok((kind, map))
}

impl TokenConfig {
    /// etcd's `NewTokenProvider`: `--auth-token` and `--auth-token-ttl` (seconds; 0 means
    /// the default 300 s, as in etcd). Options of `simple` are ignored, as in etcd; JWT
    /// key files are read here.
    pub fn parse(options: &str, simple_ttl_seconds: u64) -> Result<TokenConfig, TokenConfigError> {
        let (kind, map) = decompose_token_options(options)?;
        match kind.as_str() {
            "simple" => {
                let ttl = if simple_ttl_seconds == 0 {
                    SIMPLE_TOKEN_TTL_DEFAULT
                } else {
                    Duration::from_secs(simple_ttl_seconds)
                };
                Ok(TokenConfig::Simple { ttl })
            }
            "jwt" => Ok(TokenConfig::Jwt(Arc::new(JwtProvider::from_options(&map)?))),
            "" => Ok(TokenConfig::None),
            _ => Err(TokenConfigError::InvalidAuthOptions),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_token_format_and_parse() {
        let prefix = simple_token_prefix();
        assert_eq!(prefix.len(), 16);
        assert!(prefix.bytes().all(|b| b.is_ascii_alphabetic()));
        assert_ne!(prefix, simple_token_prefix());
        let token = simple_token(&prefix, 42);
        assert_eq!(token, format!("{prefix}.42"));
        assert_eq!(simple_token_index(&token), Some(42));
        assert_eq!(simple_token_index("abc.+7"), Some(7));
        assert_eq!(simple_token_index("abc.-7"), None);
        assert_eq!(simple_token_index("abc"), None);
        assert_eq!(simple_token_index("a.b.1"), None);
        assert_eq!(simple_token_index("abc."), None);
        assert_eq!(simple_token_index("abc.1x"), None);
        assert_eq!(simple_token_index("abc.99999999999999999999"), None);
        // A JWT never parses as a simple token.
        assert_eq!(simple_token_index("aaa.bbb.ccc"), None);
    }

    #[test]
    fn table_lifecycle() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(300);
        let mut core_a = SimpleTokenTable::new();
        let mut core_b = SimpleTokenTable::new();
        let assigned = TokenUpdate::from_event(
            TokenEvent::Assigned {
                token: "tok.5".into(),
                username: "alice".into(),
            },
            ttl,
            t0,
        );
        core_a.apply(&assigned);
        core_b.apply(&assigned);
        assert_eq!(core_a.lookup("tok.5", t0), Some("alice"));
        assert_eq!(core_a.lookup("tok.6", t0), None);
        // Used on core A at 200 s: renewed for core B too.
        let t200 = t0 + Duration::from_secs(200);
        assert_eq!(core_a.lookup("tok.5", t200), Some("alice"));
        let t450 = t0 + Duration::from_secs(450);
        assert_eq!(core_b.lookup("tok.5", t450), Some("alice"));
        // Unused for longer than the TTL: dead everywhere.
        let t800 = t450 + Duration::from_secs(301);
        assert_eq!(core_a.lookup("tok.5", t800), None);
        core_b.sweep(t800);
        assert!(core_b.is_empty());

        let mut table = SimpleTokenTable::new();
        for (token, user) in [("a.1", "alice"), ("b.2", "bob"), ("c.3", "alice")] {
            table.apply(&TokenUpdate::from_event(
                TokenEvent::Assigned {
                    token: token.into(),
                    username: user.into(),
                },
                ttl,
                t0,
            ));
        }
        table.apply(&TokenUpdate::InvalidateUser("alice".into()));
        assert_eq!(table.len(), 1);
        assert_eq!(table.lookup("b.2", t0), Some("bob"));
        table.apply(&TokenUpdate::InvalidateAll);
        assert!(table.is_empty());
    }

    #[test]
    fn token_options() {
        assert!(matches!(
            TokenConfig::parse("simple", 0),
            Ok(TokenConfig::Simple { ttl }) if ttl == Duration::from_secs(300)
        ));
        assert!(matches!(
            TokenConfig::parse("simple,anything=goes", 60),
            Ok(TokenConfig::Simple { ttl }) if ttl == Duration::from_secs(60)
        ));
        assert!(matches!(TokenConfig::parse("", 0), Ok(TokenConfig::None)));
        for bad in [
            "simplee",
            "simple,a",
            "simple,a=b=c",
            "simple,a=1,a=2",
            "jwtx",
        ] {
            assert_eq!(
                TokenConfig::parse(bad, 0).err(),
                Some(TokenConfigError::InvalidAuthOptions),
                "{bad}"
            );
            assert_eq!(
                TokenConfigError::InvalidAuthOptions.to_string(),
                "auth: invalid auth options"
            );
        }
        let (kind, map) = decompose_token_options("jwt,pub-key=/a,priv-key=/b").expect("ok");
        assert_eq!(kind, "jwt");
        assert_eq!(map.get("pub-key").map(String::as_str), Some("/a"));
        assert_eq!(map.len(), 2);
        let (_, map) = decompose_token_options("jwt,x=").expect("empty value is fine");
        assert_eq!(map.get("x").map(String::as_str), Some(""));
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("5m"), Some(300_000_000_000));
        assert_eq!(parse_go_duration("0"), Some(0));
        assert_eq!(parse_go_duration("-0"), Some(0));
        assert_eq!(parse_go_duration("1h30m"), Some(5_400_000_000_000));
        assert_eq!(parse_go_duration("1.5s"), Some(1_500_000_000));
        assert_eq!(parse_go_duration(".5s"), Some(500_000_000));
        assert_eq!(parse_go_duration("5.s"), Some(5_000_000_000));
        assert_eq!(parse_go_duration("300ms"), Some(300_000_000));
        assert_eq!(parse_go_duration("2us"), Some(2_000));
        assert_eq!(parse_go_duration("2µs"), Some(2_000));
        assert_eq!(parse_go_duration("-1s"), Some(-1_000_000_000));
        assert_eq!(parse_go_duration("1.0000000001s"), Some(1_000_000_000));
        assert_eq!(parse_go_duration("300"), None);
        assert_eq!(parse_go_duration(""), None);
        assert_eq!(parse_go_duration("s"), None);
        assert_eq!(parse_go_duration("."), None);
        assert_eq!(parse_go_duration(".s"), None);
        assert_eq!(parse_go_duration("1d"), None);
        assert_eq!(parse_go_duration("1.2.3s"), None);
        assert_eq!(parse_go_duration("9999999999h"), None);
        assert_eq!(
            parse_go_duration("2562047h"),
            Some(2562047 * 3_600_000_000_000)
        );
    }
}
