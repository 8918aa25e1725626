//! The session domain of sessiond, pure and given `now`.
//!
//! - [`clock`]: [`Timestamp`] and the one place that reads the wall clock.
//! - [`id`]: [`SessionId`], the public handle of a session.
//! - [`token`]: minting and verifying bearer tokens (MAC with key ids, hashed verifier).
//! - [`policy`]: idle timeout, maximum lifetime and the concurrent-session limit.
//! - [`session`]: the session record, its deadlines and end, and tombstones.
//! - [`input`]: limits and checks on what agents send.
//! - [`text`]: [`Text`], the record's strings, inline when short.
//!
//! Architecture invariant: nothing here does I/O or reads the clock; callers pass `now`.

pub mod clock;
pub mod id;
pub mod input;
pub mod policy;
pub mod session;
pub mod text;
pub mod token;

pub use clock::{Clock, ManualClock, SystemClock, Timestamp};
pub use id::SessionId;
pub use policy::{OnLimit, Policy};
pub use session::{Session, SessionStatus, Tombstone};
pub use sessiond_proto::EndReason;
pub use text::Text;
pub use token::{TokenError, TokenKey, TokenKeys, Verifier};
