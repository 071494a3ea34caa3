//! Following: a VM that does not poll adopts what the poller published, each
//! service's health from the heartbeat, content that moved, and login tokens.
//! A new poller and a new configuration start from the same.

use super::host_traits::SharedStore;
use super::ids::{Id, TargetId};
use super::servers::Servers;
use super::sharing::Sharing;
use super::targets::Targets;

/// Adopt the heartbeat's news: each service's health, and the content of those
/// whose content moved. The targets whose content changed.
pub(super) fn follow(
    sharing: &mut Sharing,
    targets: &mut Targets,
    servers: &mut Servers,
    store: &dyn SharedStore,
) -> Vec<TargetId> {
    let Some(heartbeat) = sharing.read_heartbeat(store) else {
        return Vec::new();
    };
    let mut moved = Vec::new();
    for (service, health) in heartbeat {
        let Some(id) = targets.by_heartbeat_id(service) else {
            continue;
        };
        if let Some(stamp) = targets.adopt_health(id, health) {
            moved.push((id, stamp));
        }
    }
    let changed = moved
        .into_iter()
        .filter(|(id, stamp)| targets.adopt_stored(*id, *stamp, false, store))
        .map(|(id, _)| id)
        .collect();
    adopt_tokens(sharing, servers, store);
    changed
}

/// Take the tokens the poller's logins got.
pub(super) fn adopt_tokens(sharing: &Sharing, servers: &mut Servers, store: &dyn SharedStore) {
    let ids: Vec<_> = servers.ids().collect();
    for server in ids {
        if let Some(token) = sharing.read_token(server.index(), store) {
            servers.adopt_token(server, token);
        }
    }
}

/// Start `target` from what is stored of it, confirmation included, so a new
/// configuration or a newly learned service serves at once; whether it took any.
pub(super) fn start_from_stored(
    targets: &mut Targets,
    target: TargetId,
    store: &dyn SharedStore,
) -> bool {
    targets.adopt_stored(target, 0, true, store)
}
