//! What Nacos said: instances, their addresses, and the snapshot that keeps the
//! last good answer for each service.

pub mod endpoint;
pub mod instance;
pub mod snapshot;
