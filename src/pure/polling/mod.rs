//! Asking Nacos: when to poll each service, how to log in, and the requests and
//! answers of the Nacos API.

pub mod auth;
pub mod nacos;
pub mod schedule;
