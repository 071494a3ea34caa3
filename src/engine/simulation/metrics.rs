//! The gateway's stats as Envoy keeps them for Wasm metrics: a name defined by
//! several VMs is one stat of the process, so counters sum what every VM adds
//! and a gauge holds what the VM that recorded last wrote.

use std::collections::BTreeMap;

use crate::engine::Metrics;

#[derive(Default)]
pub struct SimMetrics {
    /// Name → metric id, shared by every VM.
    ids: BTreeMap<String, u32>,
    /// Each metric's value, by id.
    values: Vec<u64>,
}

impl SimMetrics {
    fn define(&mut self, name: &str) -> Option<u32> {
        if let Some(id) = self.ids.get(name) {
            return Some(*id);
        }
        let id = u32::try_from(self.values.len()).ok()?;
        self.ids.insert(name.to_string(), id);
        self.values.push(0);
        Some(id)
    }

    fn value_mut(&mut self, id: u32) -> Option<&mut u64> {
        self.values.get_mut(id as usize)
    }

    /// The stat's value, if some VM defined it.
    pub fn get(&self, name: &str) -> Option<u64> {
        let id = self.ids.get(name)?;
        self.values.get(*id as usize).copied()
    }
}

impl Metrics for SimMetrics {
    fn define_counter(&mut self, name: &str) -> Option<u32> {
        self.define(name)
    }
    fn define_gauge(&mut self, name: &str) -> Option<u32> {
        self.define(name)
    }
    fn add(&mut self, id: u32, amount: u64) {
        if let Some(value) = self.value_mut(id) {
            *value += amount;
        }
    }
    fn record(&mut self, id: u32, value: u64) {
        if let Some(stored) = self.value_mut(id) {
            *stored = value;
        }
    }
}

/// The `usable_instances` gauge of simulated service `s<service>`, of the view
/// its filter gives (`View::gauge_segment`), if it has one.
pub fn usable_gauge(service: usize, view: Option<&str>) -> String {
    let view = view.map_or(String::new(), |v| format!("view.{v}."));
    format!("nacos_guard.service.public.DEFAULT_GROUP.s{service}.{view}usable_instances")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_name_is_one_stat_for_every_vm() {
        let mut metrics = SimMetrics::default();
        let a = metrics.define_counter("c");
        let b = metrics.define_counter("c");
        assert_eq!(a, b);
        metrics.add(a.unwrap(), 2);
        metrics.add(b.unwrap(), 3);
        assert_eq!(metrics.get("c"), Some(5), "counters sum");
        let g = metrics.define_gauge("g").unwrap();
        metrics.record(g, 4);
        metrics.record(g, 1);
        assert_eq!(metrics.get("g"), Some(1), "the last record wins");
        assert_eq!(metrics.get("absent"), None);
    }
}
