//! Operator tools built on the pipeline's layers, never imported by the pipeline: the traffic
//! generator, replay, the demo and the probes that check an end state.

pub mod demo;
pub mod probe;
pub mod replay;
pub mod traffic;
