//! Each request: which rule applies, which instance it goes to, and the hosts
//! Higress's routed cluster knows.

pub mod avoidance;
pub mod cluster_name;
pub mod decision;
pub mod nacos_cluster;
pub mod rules;
pub mod selection;
pub mod upstream_failure;
pub mod upstream_hosts;
