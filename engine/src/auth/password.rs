//! Passwords: bcrypt hashes exactly as etcd's (`golang.org/x/crypto/bcrypt`) makes and
//! checks them, and the small thread pool that runs them away from the cores.
//!
//! bcrypt is slow on purpose (cost 10: tens of milliseconds of CPU per hash or check), so
//! neither the raft core nor a shard core may run it (ETCD_LESSONS 32): one check on a
//! glommio executor would stall every connection of that core, and on the raft core the
//! whole log. etcd 3.4 hashes inside the apply (on every member, stalling its apply loop)
//! and checks passwords on the gRPC goroutine. rivet:
//! - hashes in the API layer, before proposing UserAdd / UserChangePassword, and
//!   replicates the hash (every member stores the same one, the log holds no password);
//! - checks the password in the API layer before proposing Authenticate, against the
//!   hash in the core's auth snapshot ([`PasswordCheck`]), at a known auth revision.
//!
//! Both run on [`PasswordPool`]: a fixed number of plain OS threads fed by one bounded
//! queue, answering through oneshot channels that any executor can await (glommio on the
//! shard cores, tokio on the raft core). Why not glommio's `spawn_blocking`: it is per
//! executor and unbounded, so a burst of logins would queue without limit on each core;
//! one shared pool gives one limit for the whole member. When the queue is full the
//! request is refused at once with etcd's `too many requests` instead of waiting
//! seconds. Sizes and reasons are in `limits.rs`.

use std::future::Future;
use std::thread;

use bytes::Bytes;
use ring::rand::{SecureRandom, SystemRandom};

use super::store::{AuthState, UserEntry};
use crate::error::EtcdError;

/// Go's `bcrypt.DefaultCost`, etcd's `--bcrypt-cost` default.
pub const BCRYPT_COST_DEFAULT: u32 = 10;
/// Go's `bcrypt.MinCost` and `MaxCost`.
pub const BCRYPT_COST_MIN: u32 = 4;
pub const BCRYPT_COST_MAX: u32 = 31;
/// bcrypt reads at most 72 bytes of a password; newer Go (and etcd 3.4's latest
/// releases) refuse to hash a longer one.
pub const PASSWORD_BYTES_MAX: usize = 72;

/// etcd's `NewAuthStore`: a cost outside [4, 31] falls back to the default (etcd logs a
/// warning). Returns the cost to use and whether it was replaced.
pub fn effective_cost(requested: u64) -> (u32, bool) {
    match u32::try_from(requested) {
        Ok(cost) if (BCRYPT_COST_MIN..=BCRYPT_COST_MAX).contains(&cost) => (cost, false),
        _ => (BCRYPT_COST_DEFAULT, true),
    }
}

/// Hashes a password as Go's `bcrypt.GenerateFromPassword` does: a random 16-byte salt,
/// the `$2a$` form. A password over 72 bytes is refused with Go's error text (etcd
/// answers it with code Unknown).
pub fn hash_password(password: &[u8], cost: u32) -> Result<Bytes, EtcdError> {
    if password.len() > PASSWORD_BYTES_MAX {
        return Err(EtcdError::Plain("bcrypt: password length exceeds 72 bytes"));
    }
    let mut salt = [0u8; 16];
    SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| EtcdError::Internal("no random bytes for a bcrypt salt".into()))?;
    hash_password_with_salt(password, cost, salt)
}

/// [`hash_password`] with a given salt (for tests that compare with Go's output).
pub fn hash_password_with_salt(
    password: &[u8],
    cost: u32,
    salt: [u8; 16],
) -> Result<Bytes, EtcdError> {
    let parts = bcrypt::hash_with_salt(password, cost, salt)
        .map_err(|e| EtcdError::Internal(format!("bcrypt: {e}")))?;
    Ok(Bytes::from(parts.format_for_version(bcrypt::Version::TwoA)))
}

/// Go's `bcrypt.CompareHashAndPassword`: true when `password` matches `hash` (any of the
/// `$2a$`, `$2b$`, `$2y$` forms). A malformed hash matches nothing.
pub fn verify_password(password: &[u8], hash: &[u8]) -> bool {
    let Ok(hash) = std::str::from_utf8(hash) else {
        return false;
    };
    bcrypt::verify(password, hash).unwrap_or(false)
}

/// The cheap half of etcd's `CheckPassword`, done on the core against its snapshot: the
/// user and its hash at an auth revision. [`PasswordCheck::verify`] is the slow half.
#[derive(Clone, Debug)]
pub struct PasswordCheck {
    pub username: String,
    pub hash: Bytes,
    /// The auth revision of the snapshot; Authenticate carries it to the apply, which
    /// refuses if the store moved since (so a password changed meanwhile is not honoured).
    pub revision: u64,
}

impl PasswordCheck {
    /// etcd's `CheckPassword` up to the bcrypt comparison.
    pub fn start(state: &AuthState, username: &str) -> Result<PasswordCheck, EtcdError> {
        if !state.is_enabled() {
            return Err(EtcdError::AuthNotEnabled);
        }
        let user: &UserEntry = state.user(username).ok_or(EtcdError::AuthFailed)?;
        if user.no_password() {
            return Err(EtcdError::Plain(
                "auth: authentication failed, password was given for no password user",
            ));
        }
        Ok(PasswordCheck {
            username: username.to_string(),
            hash: Bytes::copy_from_slice(user.password_hash()),
            revision: state.revision(),
        })
    }

    /// The bcrypt comparison: the auth revision checked at, or `authentication failed`.
    pub fn verify(&self, password: &[u8]) -> Result<u64, EtcdError> {
        if verify_password(password, &self.hash) {
            Ok(self.revision)
        } else {
            Err(EtcdError::AuthFailed)
        }
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// Threads that run bcrypt, fed by one bounded queue. Cloning shares the pool; the
/// threads stop when the last handle is dropped and the queue drained.
#[derive(Clone)]
pub struct PasswordPool {
    jobs: async_channel::Sender<Job>,
    cost: u32,
}

impl PasswordPool {
    /// Starts `threads` workers (at least one) with room for `queue` waiting jobs.
    pub fn start(threads: usize, queue: usize, cost: u32) -> std::io::Result<PasswordPool> {
        let (jobs, receiver) = async_channel::bounded::<Job>(queue.max(1));
        for i in 0..threads.max(1) {
            let receiver = receiver.clone();
            thread::Builder::new()
                .name(format!("rivet-bcrypt-{i}"))
                .spawn(move || {
                    while let Ok(job) = receiver.recv_blocking() {
                        job();
                    }
                })?;
        }
        Ok(PasswordPool { jobs, cost })
    }

    pub fn cost(&self) -> u32 {
        self.cost
    }

    /// Runs `work` on the pool (bcrypt, JWT signing): the answer, or `too many requests`
    /// when the queue is full.
    pub fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, EtcdError> + Send + 'static,
    ) -> Result<impl Future<Output = Result<T, EtcdError>>, EtcdError> {
        self.submit(work)
    }

    fn submit<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, EtcdError> + Send + 'static,
    ) -> Result<impl Future<Output = Result<T, EtcdError>>, EtcdError> {
        let (reply, answer) = futures::channel::oneshot::channel();
        let job: Job = Box::new(move || {
            // The asker may have gone (client cancelled): nothing to do then.
            let _ignored = reply.send(work());
        });
        self.jobs.try_send(job).map_err(|error| match error {
            async_channel::TrySendError::Full(_) => EtcdError::TooManyRequests,
            async_channel::TrySendError::Closed(_) => EtcdError::Stopped,
        })?;
        Ok(async move { answer.await.unwrap_or(Err(EtcdError::Stopped)) })
    }

    /// Hashes a password at the pool's cost (UserAdd, UserChangePassword).
    pub fn hash(
        &self,
        password: String,
    ) -> Result<impl Future<Output = Result<Bytes, EtcdError>>, EtcdError> {
        // Refused before queueing: no CPU spent on a request that must fail.
        if password.len() > PASSWORD_BYTES_MAX {
            return Err(EtcdError::Plain("bcrypt: password length exceeds 72 bytes"));
        }
        let cost = self.cost;
        self.submit(move || hash_password(password.as_bytes(), cost))
    }

    /// Checks a password (Authenticate); answers the auth revision it was checked at.
    pub fn verify(
        &self,
        check: PasswordCheck,
        password: String,
    ) -> Result<impl Future<Output = Result<u64, EtcdError>>, EtcdError> {
        self.submit(move || check.verify(password.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hashes made by real etcd 3.4.23 (`etcdctl user add alice:secret-pass`, read out of
    /// its data dir with `etcdctl snapshot save`).
    const ETCD_ALICE: &str = "$2a$10$UZSEE/zwsbaa9vAkL2HA..i8MNY7UlTV.vzKyxJ3NHr9aINeZOWau";
    const ETCD_ROOT: &str = "$2a$10$2PsdBNxA8RCxW8kJCkVuhelCrBzC43dNRX6KAHOIcIt5Qw32x5c8S";

    #[test]
    fn etcd_hashes_verify_here() {
        assert!(verify_password(b"secret-pass", ETCD_ALICE.as_bytes()));
        assert!(!verify_password(b"secret-pasS", ETCD_ALICE.as_bytes()));
        assert!(verify_password(b"rootpw", ETCD_ROOT.as_bytes()));
        assert!(!verify_password(b"", ETCD_ROOT.as_bytes()));
    }

    /// Our hash of the same password with etcd's salt is byte-for-byte etcd's hash, so
    /// etcd (Go's bcrypt) verifies ours.
    #[test]
    fn our_hashes_are_gos() {
        let salt_of = |hash: &str| {
            // "$2a$10$" then 22 characters of salt in bcrypt's base64 (./A-Za-z0-9).
            decode_bcrypt_base64(&hash[7..29])
        };
        for (password, hash) in [("secret-pass", ETCD_ALICE), ("rootpw", ETCD_ROOT)] {
            let ours =
                hash_password_with_salt(password.as_bytes(), 10, salt_of(hash)).expect("hash");
            assert_eq!(std::str::from_utf8(&ours).expect("ascii"), hash);
        }
    }

    fn decode_bcrypt_base64(text: &str) -> [u8; 16] {
        const ALPHABET: &[u8] = b"./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let mut bits: u32 = 0;
        let mut count = 0;
        let mut out = Vec::new();
        for c in text.bytes() {
            let v = ALPHABET.iter().position(|a| *a == c).expect("alphabet") as u32;
            bits = (bits << 6) | v;
            count += 6;
            if count >= 8 {
                count -= 8;
                out.push((bits >> count) as u8);
                bits &= (1 << count) - 1;
            }
        }
        out.truncate(16);
        out.try_into().expect("16 bytes")
    }

    #[test]
    fn hash_and_verify_round_trip() {
        let hash = hash_password(b"pw", BCRYPT_COST_MIN).expect("hash");
        assert!(hash.starts_with(b"$2a$04$"));
        assert_eq!(hash.len(), 60);
        assert!(verify_password(b"pw", &hash));
        assert!(!verify_password(b"pw2", &hash));
        assert!(!verify_password(b"pw", b"not a hash"));
        assert!(!verify_password(b"pw", b""));
        assert!(!verify_password(b"pw", &[0xff, 0xfe]));
    }

    #[test]
    fn long_passwords() {
        let max = vec![b'x'; 72];
        assert!(hash_password(&max, BCRYPT_COST_MIN).is_ok());
        let long = vec![b'x'; 73];
        assert_eq!(
            hash_password(&long, BCRYPT_COST_MIN),
            Err(EtcdError::Plain("bcrypt: password length exceeds 72 bytes"))
        );
        // Checking truncates at 72 bytes, as Go's CompareHashAndPassword does.
        let hash = hash_password(&max, BCRYPT_COST_MIN).expect("hash");
        assert!(verify_password(&long, &hash));
    }

    #[test]
    fn costs() {
        assert_eq!(effective_cost(10), (10, false));
        assert_eq!(effective_cost(4), (4, false));
        assert_eq!(effective_cost(31), (31, false));
        assert_eq!(effective_cost(3), (10, true));
        assert_eq!(effective_cost(32), (10, true));
        assert_eq!(effective_cost(u64::MAX), (10, true));
    }

    #[test]
    fn pool_answers_and_refuses_when_full() {
        let pool = PasswordPool::start(1, 1, BCRYPT_COST_MIN).expect("pool");
        let hash =
            futures::executor::block_on(pool.hash("pw".into()).expect("queued")).expect("hashed");
        assert!(verify_password(b"pw", &hash));
        let check = PasswordCheck {
            username: "u".into(),
            hash: hash.clone(),
            revision: 7,
        };
        let checked =
            futures::executor::block_on(pool.verify(check.clone(), "pw".into()).expect("queued"));
        assert_eq!(checked, Ok(7));
        let wrong = futures::executor::block_on(pool.verify(check, "no".into()).expect("queued"));
        assert_eq!(wrong, Err(EtcdError::AuthFailed));
        assert!(matches!(
            pool.hash("x".repeat(73)),
            Err(EtcdError::Plain("bcrypt: password length exceeds 72 bytes"))
        ));

        // A slow pool (cost 12) with one queue slot: the third job at once is refused.
        let slow = PasswordPool::start(1, 1, 12).expect("pool");
        let mut accepted = Vec::new();
        let mut refused = 0;
        for _ in 0..4 {
            match slow.hash("pw".into()) {
                Ok(f) => accepted.push(f),
                Err(EtcdError::TooManyRequests) => refused += 1,
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
        assert!(refused >= 1, "a full queue refuses");
        for f in accepted {
            assert!(futures::executor::block_on(f).is_ok());
        }
    }
}
