//! What this binary is: its version and the git commit it was built from,
//! as `promshard --version` prints them and metrics can label them.
//!
//! The commit is recorded by the build script (`build.rs` at the crate
//! root): the checkout's `git rev-parse --short HEAD`, else the
//! `PROMSHARD_GIT_COMMIT` variable at build time, else `unknown`.

/// The crate version (`Cargo.toml`), e.g. `0.1.0`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The short git commit built from, or `unknown`.
pub const COMMIT: &str = env!("PROMSHARD_BUILD_COMMIT");

/// What `--version` prints after the program name: `0.1.0 (commit 901213d)`.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("PROMSHARD_BUILD_COMMIT"),
    ")"
);
