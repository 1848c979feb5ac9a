//! Identifiers: users, threads and runs.
//!
//! A thread id is the routing key of everything in agentwire, so it is checked
//! once, at the edge, and carried as a [`ThreadId`] afterwards. Run ids are
//! minted as `run_{thread_id}_{8 hex}`; the run registry is the authority for
//! run → thread, and [`extract_thread_id`] is only the fallback for run ids that
//! were minted elsewhere (PROTOCOL §1).

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::IdError;

/// Longest alphanumeric tail of a thread id: `thread_` + 1..=64 of `[A-Za-z0-9]`.
pub const THREAD_TAIL_MAX: usize = 64;
/// Longest run id accepted from a publisher.
pub const RUN_ID_MAX: usize = 200;
/// Longest user id (`sub` claim) accepted.
pub const USER_ID_MAX: usize = 256;

const THREAD_PREFIX: &str = "thread_";

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_id!(
    /// A thread id: `thread_` followed by 1 to 64 ASCII letters and digits.
    ThreadId
);
string_id!(
    /// A run id: minted as `run_{thread_id}_{8 hex}`, or any id a publisher
    /// brings (1..=200 of `[A-Za-z0-9_.:-]`).
    RunId
);
string_id!(
    /// A user, as named by the `sub` claim of their token.
    UserId
);

fn is_alnum_tail(tail: &str) -> bool {
    (1..=THREAD_TAIL_MAX).contains(&tail.len()) && tail.bytes().all(|b| b.is_ascii_alphanumeric())
}

impl ThreadId {
    /// Checks `s` against `^thread_[A-Za-z0-9]{1,64}$`.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        match s.strip_prefix(THREAD_PREFIX) {
            Some(tail) if is_alnum_tail(tail) => Ok(Self(Arc::from(s))),
            _ => Err(IdError::Thread),
        }
    }

    /// A fresh random thread id (`thread_` + 16 hex digits).
    pub fn generate() -> Self {
        Self(Arc::from(format!("{THREAD_PREFIX}{:016x}", rand::random::<u64>())))
    }
}

impl RunId {
    /// Accepts run ids brought by publishers: 1..=200 of `[A-Za-z0-9_.:-]`.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let ok = (1..=RUN_ID_MAX).contains(&s.len())
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
        if ok { Ok(Self(Arc::from(s))) } else { Err(IdError::Run) }
    }

    /// Mints a new run id for `thread`: `run_{thread_id}_{8 lowercase hex}`.
    pub fn mint(thread: &ThreadId) -> Self {
        Self(Arc::from(format!("run_{}_{:08x}", thread, rand::random::<u32>())))
    }
}

impl UserId {
    /// Accepts any non-empty `sub` of at most 256 characters without control characters.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let ok = !s.is_empty() && s.len() <= USER_ID_MAX && !s.chars().any(char::is_control);
        if ok { Ok(Self(Arc::from(s))) } else { Err(IdError::User) }
    }
}

/// The fallback route for run ids minted outside agentwire (PROTOCOL §1): the
/// first `thread_` that starts `run_id` or follows a `_`, plus the run of ASCII
/// letters and digits after it. `None` when there is no such thread id.
pub fn extract_thread_id(run_id: &str) -> Option<ThreadId> {
    let bytes = run_id.as_bytes();
    let mut from = 0;
    while let Some(found) = run_id[from..].find(THREAD_PREFIX) {
        let start = from + found;
        let tail_start = start + THREAD_PREFIX.len();
        let at_boundary = start == 0 || bytes[start - 1] == b'_';
        let tail_len = bytes[tail_start..].iter().take_while(|b| b.is_ascii_alphanumeric()).count();
        if at_boundary && tail_len > 0 {
            // The greedy tail is the whole candidate: a tail longer than a thread id may
            // be names no thread, so it routes nowhere rather than to a truncated id.
            return ThreadId::parse(&run_id[start..tail_start + tail_len]).ok();
        }
        // `thread_` is ASCII, so stepping one byte past its start stays on a char boundary.
        from = start + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn protocol_extraction_vectors() {
        let cases = [
            ("thread_12345", Some("thread_12345")),
            ("run_thread_456", Some("thread_456")),
            ("thread_789_run", Some("thread_789")),
            ("user_123_thread_789_session", Some("thread_789")),
            ("run_thread_abc123_xyz789", Some("thread_abc123")),
            ("run_abc", None),
            ("thread_", None),
            ("mythread_1", None),
            ("", None),
        ];
        for (input, want) in cases {
            assert_eq!(extract_thread_id(input).as_ref().map(ThreadId::as_str), want, "input {input:?}");
        }
    }

    #[test]
    fn extraction_skips_candidates_that_are_not_at_a_boundary_or_have_no_tail() {
        assert_eq!(extract_thread_id("mythread_1_thread_2").unwrap().as_str(), "thread_2");
        assert_eq!(extract_thread_id("thread__thread_9").unwrap().as_str(), "thread_9");
        assert_eq!(extract_thread_id("x-thread_1"), None);
    }

    #[test]
    fn extraction_refuses_tails_longer_than_a_thread_id() {
        let long = format!("run_thread_{}", "a".repeat(THREAD_TAIL_MAX + 1));
        assert_eq!(extract_thread_id(&long), None);
        let max = format!("run_thread_{}_x", "a".repeat(THREAD_TAIL_MAX));
        assert!(extract_thread_id(&max).is_some());
    }

    #[test]
    fn thread_id_validation() {
        assert!(ThreadId::parse("thread_a").is_ok());
        assert!(ThreadId::parse(&format!("thread_{}", "Z9".repeat(32))).is_ok());
        for bad in ["thread_", "thread_a-b", "Thread_a", "thread_é", " thread_a", "thread_a\n"] {
            assert!(ThreadId::parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(ThreadId::parse(&format!("thread_{}", "a".repeat(65))).is_err());
    }

    #[test]
    fn minted_run_id_has_the_documented_shape() {
        let thread = ThreadId::parse("thread_abc123").unwrap();
        let run = RunId::mint(&thread);
        let hex = run.as_str().strip_prefix("run_thread_abc123_").expect("prefix");
        assert_eq!(hex.len(), 8);
        assert!(hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    }

    #[test]
    fn generated_thread_ids_are_valid() {
        let t = ThreadId::generate();
        assert!(ThreadId::parse(t.as_str()).is_ok());
    }

    proptest! {
        #[test]
        fn extraction_never_panics(s in any::<String>()) {
            let _ = extract_thread_id(&s);
        }

        #[test]
        fn extraction_never_panics_on_thread_like_input(s in "[a-z_]{0,6}(thread_)?[A-Za-z0-9_é]{0,80}") {
            if let Some(t) = extract_thread_id(&s) {
                prop_assert!(ThreadId::parse(t.as_str()).is_ok());
                prop_assert!(s.contains(t.as_str()));
            }
        }

        #[test]
        fn minted_run_ids_extract_back(tail in "[A-Za-z0-9]{1,64}") {
            let thread = ThreadId::parse(&format!("thread_{tail}")).unwrap();
            let run = RunId::mint(&thread);
            prop_assert!(RunId::parse(run.as_str()).is_ok());
            prop_assert_eq!(extract_thread_id(run.as_str()), Some(thread));
        }
    }
}
