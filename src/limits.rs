//! Sizes every Lockstep server enforces. Requests beyond them are refused whole, with
//! the field named, before anything is written.

/// Largest gRPC message a server decodes. A bigger one is refused with
/// RESOURCE_EXHAUSTED before the handler sees it.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Longest project name, transaction id or environment name.
pub const MAX_NAME_LEN: usize = 64;

/// Longest version string.
pub const MAX_VERSION_LEN: usize = 128;

/// Most components in one release.
pub const MAX_COMPONENTS: usize = 256;

/// Most metadata entries per component.
pub const MAX_METADATA_ENTRIES: usize = 64;

/// Longest metadata key or value, and longest artifact reference.
pub const MAX_METADATA_VALUE_LEN: usize = 4096;

/// Most environments declared, with `env add` and pipeline files together: every
/// check of the promotion graph (and the graph a console draws) stays small, and a
/// pipeline file of a hundred thousand environments is refused before it is checked
/// under the state lock (stop 62).
pub const MAX_ENVIRONMENTS: usize = 1000;

/// Longest free-text field (reasons).
pub const MAX_TEXT_LEN: usize = 1024;
