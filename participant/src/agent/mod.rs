//! The reference agent (`lockstep-agent`) on the SDK: one project, releases staged as
//! directories under a deploy root and made live by an atomic symlink switch, with
//! optional hook commands at prepare, commit and abort.
//!
//! Deploy root layout:
//! ```text
//! <deploy-root>/releases/<version>/   one directory per version ever staged (kept, so a
//!                                     revert or rollback finds the old build)
//! <deploy-root>/current -> releases/<version>   what is live
//! <deploy-root>/cache/sha256-<hex>.tar.gz      URL artifacts, verified (--artifact-cache)
//! ```

pub mod artifact;
pub mod fetch;
pub mod fs_deployer;
pub mod hooks;
pub mod roots;

pub use fetch::Fetcher;
pub use fs_deployer::FsDeployer;
pub use hooks::Hooks;
pub use roots::ArtifactRoots;
