//! What promshard keeps on disk: sd files written atomically, cleanup
//! that removes only what promshard wrote, and each service's state.

pub mod files;
pub mod state;
