//! Integrity: scrub (does what we hold hash right, and does every reference resolve the
//! way a pull resolves it?) and repair (re-fetch cached content from its upstream,
//! quarantine what cannot be trusted, report hosted damage loudly).

mod scrub;
mod verify;

pub use scrub::{Problem, ScrubOptions, ScrubReport};
