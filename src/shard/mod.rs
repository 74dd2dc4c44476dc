//! The pure core: everything that decides who scrapes what, with no I/O,
//! no async runtime and no script engine. Given targets, nodes and
//! settings it returns values; the layers above carry out the effects.
//!
//! - [`target`]: labels and target validation, normalization
//! - [`placement`]: weighted rendezvous hashing, bounded loads
//! - [`affinity`]: grouping targets that belong together
//! - [`plan`]: targets + live nodes → per-node assignment and file names
//! - [`names`]: file-name rules; [`render`]: file_sd content
//! - [`spread`]: which `ha:` instance owns which service (shared mode)
//! - [`assignment`]: the plan's compact target → nodes lookup
//! - [`observation`]: what a server reported; [`audit`]: what the servers scrape against what was planned
//! - [`weights`]: series weights learned from the servers
//! - [`relabel`]: Prometheus `relabel_configs` on discovered targets
//! - [`template`]: the `{field}` templates used by affinity and scripts
//! - [`time`]: the one time format of every JSON answer (RFC 3339, UTC)

pub mod affinity;
pub mod assignment;
pub mod audit;
pub mod handover;
pub mod names;
pub mod observation;
pub mod placement;
pub mod plan;
pub mod relabel;
pub mod render;
pub mod spread;
pub mod target;
pub mod template;
pub mod time;
pub mod weights;
