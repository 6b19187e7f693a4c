//! Lifecycle: garbage collection, online. One run at a time; every run can be a dry run
//! that reports exactly what the real run would remove.

mod gc;

pub use gc::GcOutcome;
