//! The pure core: no proxy-wasm in here, only data in and decisions out.

pub mod auth;
pub mod config;
pub mod decision;
pub mod endpoint;
pub mod instance;
pub mod lease;
pub mod nacos;
pub mod published;
pub mod rules;
pub mod schedule;
pub mod selection;
pub mod snapshot;
pub mod upstream_hosts;
