//! Between the VMs of one Envoy: which VM polls (the lease), and what it
//! publishes for the others in shared data, on a clock they share.

pub mod avoided;
pub mod clock;
pub mod lease;
pub mod published;
