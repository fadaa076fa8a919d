//! The coordinator's crash points (see [`lockstep::crash`]): where the crash tests stop
//! it between two protocol steps.

pub use lockstep::crash::point;

/// After a failed live check and the revert it owes are written, before the revert is
/// created.
pub const AFTER_LIVE_CHECK_FAILED: &str = "after-live-check-failed";
/// After every vote has arrived and before the decision is written.
pub const BEFORE_DECISION: &str = "before-decision";
/// After the COMMIT decision is durable and before any Commit is sent.
pub const AFTER_COMMIT_DECISION: &str = "after-commit-decision";
/// After the first participant acknowledged its Commit.
pub const AFTER_FIRST_COMMIT_ACK: &str = "after-first-commit-ack";
/// After a subscription was added (stored and announced in the log), before its
/// delivery starts and the caller is answered.
pub const AFTER_SUBSCRIPTION_STORED: &str = "after-subscription-stored";
