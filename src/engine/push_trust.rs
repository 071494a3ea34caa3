//! Whether a push link's stream is the one the server pushes to.
//!
//! Java Nacos knows a client by its TCP connection
//! (`core/.../remote/grpc/AddressTransportFilter.java`), and a second
//! `ConnectionSetupRequest` on a connection it has registered keeps the first
//! stream (`core/.../remote/ConnectionManager.java`, `register`). The plugin can
//! only cancel its stream; Envoy keeps the HTTP/2 connection and puts the next
//! stream on it. Java then answers that stream's subscriptions but pushes to the
//! cancelled one, until a push fails and it closes the connection.
//!
//! So a link is trusted only on a connection whose id (`ServerCheckResponse`'s
//! `connectionId`, one per TCP connection on both servers) no stream of this
//! VM was cancelled on. A link on such a reused connection is unconfirmed: its
//! services stay polled at their interval until a push arrives on its stream,
//! which proves the server pushes there (r-nacos, which replaces the stream,
//! confirms at its first push; Java never does, and heals by closing the
//! connection).
//!
//! Nor is a link trusted on a connection where another engine of this VM holds a
//! stream open: a configuration edit keeps the replaced configuration's root
//! context, and its link, until Envoy has drained the old filter chain (600 s
//! by default, Istio's `drainDuration` in Higress), and the new configuration's
//! stream rides the same connection. Java keeps pushing to the first stream;
//! r-nacos moves to the second, so the first link, seeing its connection newly
//! held elsewhere, is unconfirmed too. Each is confirmed by a push on it.
//!
//! The same id shows a gRPC cluster of several hosts: each host is its own
//! connection, so a `ServerCheck` that lands on another host than the link's
//! first one answers another id. Its unary calls and its stream may then reach
//! different servers, so push is turned off for that cluster and it is polled.

/// Connection ids remembered as cancelled: a few reconnections' worth.
const REMEMBERED: usize = 16;

#[derive(Default)]
pub(super) struct ConnectionTrust {
    /// Connections a stream of this VM was cancelled on, newest last.
    cancelled: Vec<String>,
    /// The connection of the open stream.
    current: Option<String>,
    /// Connections another engine of this VM holds a stream open on.
    held_elsewhere: Vec<String>,
    /// Calls of this link reached more than one connection: push is off.
    spread: bool,
}

impl ConnectionTrust {
    /// A stream opened on `connection_id`; whether pushes can be trusted to
    /// reach it.
    pub fn opened(&mut self, connection_id: &str) -> bool {
        self.current = Some(connection_id.to_string());
        self.distrusted(connection_id).is_none()
    }

    /// Why a stream on `connection_id` may not be the one the server pushes to.
    pub fn distrusted(&self, connection_id: &str) -> Option<&'static str> {
        if self.cancelled.iter().any(|id| id == connection_id) {
            Some("where a stream of this gateway was closed")
        } else if self.held_elsewhere.iter().any(|id| id == connection_id) {
            Some("where another configuration of this gateway holds a stream")
        } else {
            None
        }
    }

    /// Other engines of this VM hold streams on `ids` now; whether this link's
    /// connection is among them and was not before: a stream came after this
    /// one on its connection.
    pub fn held_elsewhere(&mut self, ids: &[String]) -> bool {
        let newly = self
            .current
            .as_ref()
            .is_some_and(|id| ids.contains(id) && !self.held_elsewhere.contains(id));
        self.held_elsewhere = ids.to_vec();
        newly
    }

    /// The connection of the open stream.
    pub fn current(&self) -> Option<&str> {
        self.current.as_deref()
    }

    /// The plugin cancelled the open stream: its connection, if Envoy keeps
    /// it, now has a dead first stream.
    pub fn cancelled_current(&mut self) {
        if let Some(id) = self.current.take() {
            self.remember([id]);
        }
    }

    /// The stream ended from the server's side.
    pub fn closed_current(&mut self) {
        self.current = None;
    }

    /// Connections cancelled elsewhere in this VM (a replaced configuration's
    /// links).
    pub fn remember(&mut self, ids: impl IntoIterator<Item = String>) {
        for id in ids {
            if !self.cancelled.contains(&id) {
                self.cancelled.push(id);
            }
        }
        let excess = self.cancelled.len().saturating_sub(REMEMBERED);
        self.cancelled.drain(..excess);
    }

    pub fn cancelled(&self) -> &[String] {
        &self.cancelled
    }

    /// A `ServerCheck` sent while the stream was open on `opened_on` answered
    /// `connection_id`; whether it is that connection. Once not, push stays off
    /// (`is_spread`), even if the link has ended since.
    pub fn same_connection(&mut self, connection_id: &str, opened_on: Option<&str>) -> bool {
        let same = opened_on.is_none_or(|id| id == connection_id);
        self.spread |= !same;
        same
    }

    pub fn is_spread(&self) -> bool {
        self.spread
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::test;

    #[test]
    fn a_connection_whose_stream_was_cancelled_is_not_trusted_again() {
        let mut trust = ConnectionTrust::default();
        assert!(trust.opened("c1"));
        trust.cancelled_current();
        assert!(!trust.opened("c1"), "Envoy reused the connection");
        trust.closed_current();
        assert!(trust.opened("c2"), "a new connection");
    }

    #[test]
    fn a_connection_another_engine_holds_is_not_trusted_and_a_newcomer_is_noticed() {
        let mut trust = ConnectionTrust::default();
        assert!(!trust.held_elsewhere(&["c1".into()]), "no stream yet");
        assert!(
            !trust.opened("c1"),
            "another configuration's stream is there"
        );
        assert!(trust.opened("c2"));
        assert!(
            !trust.held_elsewhere(&["c1".into()]),
            "not this link's connection"
        );
        assert!(
            trust.held_elsewhere(&["c1".into(), "c2".into()]),
            "a stream came after"
        );
        assert!(!trust.held_elsewhere(&["c2".into()]), "said once");
        assert!(!trust.held_elsewhere(&[]));
        assert!(trust.opened("c2"), "let go");
    }

    #[test]
    fn only_the_last_few_cancelled_connections_are_remembered() {
        let mut trust = ConnectionTrust::default();
        trust.remember((0..40).map(|i| format!("c{i}")));
        assert_eq!(trust.cancelled().len(), REMEMBERED);
        assert!(trust.opened("c0"));
        assert!(!trust.opened("c39"));
    }

    #[test]
    fn another_connection_id_on_the_open_link_turns_push_off() {
        let mut trust = ConnectionTrust::default();
        trust.opened("a");
        assert_eq!(trust.current(), Some("a"));
        assert!(trust.same_connection("a", Some("a")));
        assert!(!trust.is_spread());
        // The link may have ended before the answer came: still judged.
        trust.closed_current();
        assert!(!trust.same_connection("b", Some("a")));
        assert!(trust.is_spread());
    }
}
