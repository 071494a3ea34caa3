//! `nacos.push`: the poller's gRPC link to each pushed server (`push::Link`),
//! found by the server it belongs to or by the gRPC token of an event.

use super::host_traits::{Metrics, Outbox};
use super::ids::{slot_at, Id, ServerId, TargetId};
use super::metrics::PushMetrics;
use super::push::{DuePoll, Heard, Link, Token, Wanted};
use super::servers::Servers;
use super::targets::Targets;
use crate::pure::config::NacosServer;

#[derive(Default)]
pub(super) struct PushLinks {
    /// Each server's link, by the server's index; `None`: polled only.
    by_server: Vec<Option<Link>>,
    metrics: PushMetrics,
}

impl PushLinks {
    pub fn new(metrics: PushMetrics) -> Self {
        Self {
            by_server: Vec::new(),
            metrics,
        }
    }

    /// Server `id` was added with `settings`: a link if it is pushed to.
    pub fn add_server(&mut self, id: ServerId, settings: &NacosServer) {
        let link = settings
            .push
            .clone()
            .map(|push| Link::new(push, settings.timeout_ms, self.metrics));
        if let Some(slot) = slot_at(&mut self.by_server, id.index()) {
            *slot = link;
        }
    }

    fn links(&mut self) -> impl Iterator<Item = (ServerId, &mut Link)> {
        self.by_server
            .iter_mut()
            .enumerate()
            .filter_map(|(index, link)| Some((ServerId::from_index(index), link.as_mut()?)))
    }

    fn link(&mut self, server: ServerId) -> Option<&mut Link> {
        self.by_server.get_mut(server.index())?.as_mut()
    }

    /// How the due poll of `target` on `server` goes.
    pub fn due_poll(&mut self, server: ServerId, target: TargetId, now_ms: u64) -> DuePoll {
        self.link(server)
            .map_or(DuePoll::Poll, |link| link.due_poll(target, now_ms))
    }

    /// As the poller: keep each link connected, and its services subscribed
    /// once the server's token (where it needs one) is there.
    pub fn drive(
        &mut self,
        now_ms: u64,
        servers: &Servers,
        targets: &Targets,
        outbox: &mut dyn Outbox,
        metrics: &mut dyn Metrics,
    ) {
        for (id, link) in self.links() {
            let needs_token = servers
                .settings(id)
                .is_some_and(|s| s.credentials.is_some());
            let token = match servers.access_token(id, now_ms) {
                Some(token) => Token::Valid(token),
                None if needs_token => Token::Awaited,
                None => Token::NotNeeded,
            };
            let of_server = targets.of_server(id);
            let wanted = || {
                of_server
                    .iter()
                    .filter_map(|target| {
                        let t = targets.get(*target)?;
                        Some(Wanted {
                            target: *target,
                            service: t.service(),
                            clusters: t.query_clusters(),
                        })
                    })
                    .collect()
            };
            link.drive(now_ms, of_server.len(), wanted, token, outbox, metrics);
        }
    }

    /// This VM no longer polls: close every link.
    pub fn stop(&mut self, outbox: &mut dyn Outbox, metrics: &mut dyn Metrics) {
        for (_, link) in self.links() {
            link.stop(outbox, metrics);
        }
    }

    /// Connections a stream of these links was cancelled on.
    pub fn cancelled_connections(&self) -> Vec<String> {
        self.by_server
            .iter()
            .flatten()
            .flat_map(|link| link.cancelled_connections().iter().cloned())
            .collect()
    }

    /// Connections this engine's open streams are on.
    pub fn open_connections(&self) -> Vec<String> {
        self.by_server
            .iter()
            .flatten()
            .filter_map(|link| link.open_connection().map(str::to_string))
            .collect()
    }

    /// Connections other engines of this VM hold streams open on.
    pub fn held_elsewhere(&mut self, ids: &[String], metrics: &mut dyn Metrics) {
        for (_, link) in self.links() {
            link.held_elsewhere(ids, metrics);
        }
    }

    /// Connections cancelled by another engine of this VM: not trusted here.
    pub fn distrust(&mut self, ids: &[String]) {
        for (_, link) in self.links() {
            link.distrust(ids);
        }
    }

    /// The servers whose open link was lost since the last call: a change
    /// pushed just before the loss may never have arrived.
    pub fn take_lost(&mut self) -> Vec<ServerId> {
        self.links()
            .filter_map(|(id, link)| link.take_lost().then_some(id))
            .collect()
    }

    /// The server whose link made unary call `token`.
    pub fn owner_of_call(&self, token: u32) -> Option<ServerId> {
        self.find(|link| link.owns_call(token))
    }

    /// The server whose link has stream `token`.
    pub fn owner_of_stream(&self, token: u32) -> Option<ServerId> {
        self.find(|link| link.owns_stream(token))
    }

    fn find(&self, owns: impl Fn(&Link) -> bool) -> Option<ServerId> {
        self.by_server
            .iter()
            .position(|link| link.as_ref().is_some_and(&owns))
            .map(ServerId::from_index)
    }

    /// The answer to unary call `token` of `server`'s link.
    pub fn on_call_answer(
        &mut self,
        server: ServerId,
        token: u32,
        answer: Option<&[u8]>,
        now_ms: u64,
        outbox: &mut dyn Outbox,
        metrics: &mut dyn Metrics,
    ) -> Option<Heard> {
        self.link(server)?
            .on_call_answer(token, answer, now_ms, outbox, metrics)
    }

    /// A message on the stream of `server`'s link.
    pub fn on_stream_message(
        &mut self,
        server: ServerId,
        message: &[u8],
        now_ms: u64,
        outbox: &mut dyn Outbox,
        metrics: &mut dyn Metrics,
    ) -> Option<Heard> {
        self.link(server)?
            .on_stream_message(message, now_ms, outbox, metrics)
    }

    /// A message too large to read on the stream of `server`'s link.
    pub fn on_oversized(
        &mut self,
        server: ServerId,
        size: usize,
        head: &[u8],
        now_ms: u64,
        outbox: &mut dyn Outbox,
        metrics: &mut dyn Metrics,
    ) {
        if let Some(link) = self.link(server) {
            link.on_oversized(size, head, now_ms, outbox, metrics);
        }
    }

    /// Stream `stream` ended.
    pub fn on_stream_closed(&mut self, stream: u32, now_ms: u64, metrics: &mut dyn Metrics) {
        for (_, link) in self.links() {
            if link.owns_stream(stream) {
                link.on_stream_closed(now_ms, metrics);
            }
        }
    }

    /// A list `server` pushed for `target` did not parse: poll it soon.
    pub fn poll_soon(
        &mut self,
        server: ServerId,
        target: TargetId,
        service: &str,
        reason: &str,
        now_ms: u64,
        metrics: &mut dyn Metrics,
    ) {
        if let Some(link) = self.link(server) {
            link.poll_soon(target, service, reason, now_ms, metrics);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fakes::{guard_settings, FakeMetrics, FakeOutbox};
    use crate::engine::metrics::LoginMetrics;
    use crate::engine::servers::Servers;
    use crate::testing::test;

    const PUSHED: &str = r#"{"nacos": {"cluster": "nacos",
        "push": {"grpcCluster": "nacos-grpc"}}, "service": {"name": "demo"}}"#;
    const POLLED: &str = r#"{"nacos": {"cluster": "other"}, "service": {"name": "demo"}}"#;

    #[test]
    fn only_a_pushed_server_has_a_link_and_events_find_it_by_token() {
        let mut metrics = FakeMetrics::default();
        let mut servers = Servers::new(LoginMetrics::default());
        let mut links = PushLinks::new(PushMetrics::define(&mut metrics));
        let targets = Targets::default();
        for json in [POLLED, PUSHED] {
            let settings = guard_settings(json).server;
            let (id, _) = servers.find_or_add(&settings);
            links.add_server(id, &settings);
        }
        let (polled, pushed) = (ServerId::from_index(0), ServerId::from_index(1));
        let target = TargetId::from_index(0);
        assert_eq!(links.due_poll(polled, target, 0), DuePoll::Poll);

        let mut outbox = FakeOutbox::default();
        links.drive(0, &servers, &targets, &mut outbox, &mut metrics);
        assert_eq!(
            outbox.grpc_calls.len(),
            1,
            "one ServerCheck, for the pushed server"
        );
        let token = outbox.grpc_calls[0].0;
        assert_eq!(links.owner_of_call(token), Some(pushed));
        assert_eq!(links.owner_of_call(token + 1), None);
        assert_eq!(links.owner_of_stream(token), None);
        assert_eq!(
            links.due_poll(pushed, target, 0),
            DuePoll::Poll,
            "not subscribed"
        );
    }
}
