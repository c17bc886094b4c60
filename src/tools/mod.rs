//! Operator tools built on the pipeline's layers, never imported by the pipeline: the traffic
//! generator, replay, the demo, the probes that check an end state, and what `dead-letters` and
//! `status` report.

pub mod dead_letters;
pub mod demo;
pub mod probe;
pub mod replay;
pub mod status;
pub mod table;
pub mod traffic;
