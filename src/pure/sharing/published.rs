//! What VMs keep in Envoy's process-wide shared data, and how it is encoded.
//!
//! - Per configuration (keys carry a hash of it): the lease, the poller's
//!   heartbeat (each service's content stamp and health, one small binary value
//!   rewritten at most once per tick), and each server's token.
//! - Per service, whatever the configuration: its content, rewritten only when it
//!   changes, and when it was last confirmed. A configuration edit makes a new
//!   configuration with new keys, and it starts from these instead of nothing.
//! - Per service and configuration, only once another configuration overwrote
//!   its content: that content, kept for its followers (`ServiceKeys::kept`).

use crate::pure::hashing::stable_hash;
use crate::pure::registry::instance::{Instance, InstanceSet};
use crate::pure::registry::snapshot::Health;

const PLUGIN: &str = "nacos-instance-guard";

/// The gateway clock's last reading, shared by every configuration: a constant,
/// as every VM reads and writes it on every tick.
pub const CLOCK_KEY: &str = "nacos-instance-guard.clock";

/// Learned services, one Higress host a line, in the order they were learned.
pub fn encode_learned(clusters: &[String]) -> Vec<u8> {
    clusters.join("\n").into_bytes()
}

pub fn decode_learned(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter(|line| !line.is_empty())
        .map(str::to_string)
        .collect()
}

/// What adding hosts to an encoded learned list gives.
#[derive(Debug, PartialEq, Eq)]
pub struct Appended {
    /// Per host asked for: whether the list holds it now (`false`: no room).
    pub listed: Vec<bool>,
    /// The list with the hosts added, if any was.
    pub bytes: Option<Vec<u8>>,
    /// How many hosts the list then holds.
    pub count: usize,
}

/// Add `hosts` to the encoded learned list `list` while it holds fewer than
/// `max`. One pass over the bytes, comparing lines without decoding them: a
/// VM adds what it learned to a list of up to 10,000 services on its tick.
pub fn append_learned(list: &[u8], hosts: &[&str], max: usize) -> Appended {
    let mut listed = vec![false; hosts.len()];
    let mut count = 0;
    let lines = list
        .split(|byte| *byte == b'\n')
        .filter(|line| !line.is_empty());
    if hosts.len() <= 16 {
        for line in lines {
            count += 1;
            for (found, host) in listed.iter_mut().zip(hosts) {
                *found |= line == host.as_bytes();
            }
        }
    } else {
        let wanted: std::collections::HashMap<&[u8], Vec<usize>> =
            hosts
                .iter()
                .enumerate()
                .fold(Default::default(), |mut map, (i, host)| {
                    map.entry(host.as_bytes()).or_insert_with(Vec::new).push(i);
                    map
                });
        for line in lines {
            count += 1;
            for i in wanted.get(line).into_iter().flatten() {
                if let Some(found) = listed.get_mut(*i) {
                    *found = true;
                }
            }
        }
    }
    let mut bytes = list.to_vec();
    let mut added: Vec<&str> = Vec::new();
    for (found, host) in listed.iter_mut().zip(hosts) {
        if *found {
            continue;
        }
        if added.contains(host) {
            *found = true;
            continue;
        }
        if count >= max {
            continue;
        }
        if !bytes.is_empty() {
            bytes.push(b'\n');
        }
        bytes.extend_from_slice(host.as_bytes());
        added.push(host);
        count += 1;
        *found = true;
    }
    Appended {
        listed,
        bytes: (!added.is_empty()).then_some(bytes),
        count,
    }
}

/// The learned list's inbox, one small value beside the list: a request that
/// learns a service takes the next number (`handed`) by compare-and-swap and
/// writes its host under that number (`ConfigKeys::inbox`), so that it costs
/// the same whatever the list holds; the poller's tick takes what was handed
/// in (`taken`, the first number not yet taken) into the list, and says how
/// many services the list holds (`listed`). A request is refused once
/// `listed` and what waits in the inbox reach `maxServices`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Inbox {
    pub handed: u64,
    pub taken: u64,
    pub listed: u64,
}

impl Inbox {
    /// Hosts handed in and not yet taken into the list.
    pub fn waiting(&self) -> u64 {
        self.handed.saturating_sub(self.taken)
    }

    /// The three numbers, 64-bit little-endian: 24 bytes whatever they are.
    pub fn encode(&self) -> Vec<u8> {
        [self.handed, self.taken, self.listed]
            .iter()
            .flat_map(|n| n.to_le_bytes())
            .collect()
    }

    /// `None` for anything but exactly what [`Self::encode`] writes.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let mut reader = Reader(bytes);
        let inbox = Self {
            handed: reader.u64()?,
            taken: reader.u64()?,
            listed: reader.u64()?,
        };
        reader.end()?;
        Some(inbox)
    }
}

/// How many places the inbox has: its keys are reused, number modulo this, so
/// that they are a few whatever comes and goes, and at most this many hosts
/// wait in it between two ticks of the poller (more are listed by their VMs'
/// ticks, as after a lost compare-and-swap).
pub fn inbox_places(max_services: usize) -> u64 {
    u64::try_from(max_services.clamp(1, INBOX_PLACES)).unwrap_or(1)
}

const INBOX_PLACES: usize = 16;

/// A host handed in under number `number`: the number (64-bit little-endian),
/// so that the poller tells it from what an earlier round left in the same
/// place, then the host.
pub fn encode_handed(number: u64, host: &str) -> Vec<u8> {
    let mut bytes = number.to_le_bytes().to_vec();
    bytes.extend_from_slice(host.as_bytes());
    bytes
}

pub fn decode_handed(bytes: &[u8]) -> Option<(u64, String)> {
    let (number, host) = bytes.split_at_checked(8)?;
    let number = u64::from_le_bytes(number.try_into().ok()?);
    let host = std::str::from_utf8(host).ok()?;
    (!host.is_empty()).then(|| (number, host.to_string()))
}

/// Keys of one configuration. The lease and the heartbeat are read on most
/// ticks of every VM, so their names are made once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigKeys {
    /// The configuration's hash: which configuration wrote a service's content.
    id: u64,
    prefix: String,
    lease: String,
    heartbeat: String,
    learned: Option<String>,
}

impl ConfigKeys {
    pub fn new(config: &[u8]) -> Self {
        let id = stable_hash(config);
        let prefix = format!("{PLUGIN}.{id:016x}");
        Self {
            id,
            lease: format!("{prefix}.lease"),
            heartbeat: format!("{prefix}.heartbeat"),
            learned: None,
            prefix,
        }
    }

    /// Keep the learned list under `scope` (what shapes the services learned:
    /// the `guardNacosRoutes` settings) rather than under the whole
    /// configuration: an edit elsewhere keeps the list, and the edits of a
    /// gateway's life do not each leave one behind.
    pub fn with_learned_scope(mut self, scope: &str) -> Self {
        self.learned = Some(format!(
            "{PLUGIN}.{:016x}.learned",
            stable_hash(scope.as_bytes())
        ));
        self
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn lease(&self) -> &str {
        &self.lease
    }

    pub fn heartbeat(&self) -> &str {
        &self.heartbeat
    }

    pub fn token(&self, server: usize) -> String {
        format!("{}.token.{server}", self.prefix)
    }

    /// The services VMs learned from traffic.
    pub fn learned(&self) -> String {
        self.learned
            .clone()
            .unwrap_or_else(|| format!("{}.learned", self.prefix))
    }

    /// The learned list's inbox (`Inbox`).
    pub fn inbox(&self) -> String {
        format!("{}.inbox", self.learned())
    }

    /// The place of the inbox where the host handed in under `number` is.
    pub fn handed(&self, number: u64, places: u64) -> String {
        format!("{}.inbox.{}", self.learned(), number % places.max(1))
    }

    /// When a learned service (`ServiceKeys::id`) last carried a request, by any
    /// VM of any configuration: a fact about the service, kept once however many
    /// configurations come and go.
    pub fn touched(&self, service: u64) -> String {
        format!("{PLUGIN}.touched.{service:016x}")
    }
}

/// Keys of one service as one server is asked about it; `question` is everything
/// that shapes the answer (server, account, namespace, group, name, clusters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceKeys {
    id: u64,
    content: String,
    confirmed: String,
}

impl ServiceKeys {
    pub fn new(question: &str) -> Self {
        let id = stable_hash(question.as_bytes());
        let content = format!("{PLUGIN}.service.{id:016x}");
        Self {
            id,
            confirmed: format!("{content}.confirmed"),
            content,
        }
    }

    /// The service's number in heartbeats.
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn content(&self) -> &str {
        &self.content
    }

    pub fn confirmed(&self) -> &str {
        &self.confirmed
    }

    /// Where configuration `writer`'s content is kept once another
    /// configuration overwrote it: its followers follow their own poller, not
    /// whichever configuration wrote last.
    pub fn kept(&self, writer: u64) -> String {
        format!("{PLUGIN}.{writer:016x}.service.{:016x}", self.id)
    }
}

/// The first byte of a service's content list and of a token. Releases before it
/// wrote JSON there, which starts with `{`: VMs of two releases share one Envoy
/// during an upgrade, and each must find the other's values unreadable (nothing to
/// adopt) rather than misread them. Change it whenever the layout below changes.
const FORMAT: u8 = 2;

/// A service's content as stored: when the poll that brought it was sent, which
/// configuration's poller wrote it ([`ConfigKeys::id`]), and the list.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredContent {
    pub stamp: u64,
    pub writer: u64,
    pub set: InstanceSet,
}

/// A service's content: `<stamp> <writer>\n` and the list, so that a writer can
/// tell whether what is stored is newer than what it holds, and whose it is,
/// without decoding the list.
///
/// The list is binary rather than JSON, which needed a serializer and a deserializer
/// in the plugin for this alone: [`FORMAT`], then whether the protection threshold
/// was reached, the number of instances and each instance (endpoint, weight as
/// IEEE 754 bits, healthy, enabled, cluster, the number of metadata pairs and
/// each key and value). Numbers are little-endian, the count and string lengths
/// 32-bit, flags one byte of 0 or 1.
pub fn encode_content(stamp: u64, writer: u64, set: &InstanceSet) -> Option<Vec<u8>> {
    let mut bytes = format!("{stamp} {writer:x}\n").into_bytes();
    encode_list(&mut bytes, set)?;
    Some(bytes)
}

/// A digest of a list as it is stored: the same list has the same digest
/// whichever configuration polled it, and when.
pub fn list_digest(set: &InstanceSet) -> Option<u64> {
    let mut bytes = Vec::new();
    encode_list(&mut bytes, set)?;
    Some(stable_hash(&bytes))
}

fn encode_list(bytes: &mut Vec<u8>, set: &InstanceSet) -> Option<()> {
    bytes.push(FORMAT);
    bytes.push(u8::from(set.protection_reached));
    put_len(bytes, set.instances.len())?;
    for instance in &set.instances {
        put_str(bytes, &instance.endpoint)?;
        bytes.extend_from_slice(&instance.weight.to_bits().to_le_bytes());
        bytes.push(u8::from(instance.healthy));
        bytes.push(u8::from(instance.enabled));
        put_str(bytes, &instance.cluster)?;
        put_len(bytes, instance.metadata.len())?;
        for (key, value) in &instance.metadata {
            put_str(bytes, key)?;
            put_str(bytes, value)?;
        }
    }
    Some(())
}

/// The stamp and the writer of stored content.
pub fn content_header(bytes: &[u8]) -> Option<(u64, u64)> {
    let end = bytes.iter().position(|b| *b == b'\n')?;
    let header = std::str::from_utf8(bytes.get(..end)?).ok()?;
    let (stamp, writer) = header.split_once(' ')?;
    Some((stamp.parse().ok()?, u64::from_str_radix(writer, 16).ok()?))
}

/// `None` for anything but exactly what [`encode_content`] writes: another format,
/// a torn or truncated value, bytes left over.
pub fn decode_content(bytes: &[u8]) -> Option<StoredContent> {
    let (stamp, writer) = content_header(bytes)?;
    let start = bytes.iter().position(|b| *b == b'\n')? + 1;
    let mut reader = Reader(bytes.get(start..)?);
    reader.format()?;
    let protection_reached = reader.flag()?;
    let mut instances = Vec::new();
    // Not preallocated: the count is not trusted before the bytes back it.
    for _ in 0..reader.u32()? {
        let endpoint = reader.string()?;
        let weight = f64::from_bits(reader.u64()?);
        let healthy = reader.flag()?;
        let enabled = reader.flag()?;
        let cluster = reader.string()?;
        let mut metadata = Vec::new();
        for _ in 0..reader.u32()? {
            metadata.push((reader.string()?, reader.string()?));
        }
        instances.push(Instance {
            endpoint,
            weight,
            healthy,
            enabled,
            cluster,
            metadata,
        });
    }
    reader.end()?;
    Some(StoredContent {
        stamp,
        writer,
        set: InstanceSet {
            instances,
            protection_reached,
        },
    })
}

fn put_len(bytes: &mut Vec<u8>, len: usize) -> Option<()> {
    bytes.extend_from_slice(&u32::try_from(len).ok()?.to_le_bytes());
    Some(())
}

fn put_str(bytes: &mut Vec<u8>, text: &str) -> Option<()> {
    put_len(bytes, text.len())?;
    bytes.extend_from_slice(text.as_bytes());
    Some(())
}

/// The unread rest of a binary value; every read is `None` past its end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(len)?;
        self.0 = rest;
        Some(head)
    }

    fn format(&mut self) -> Option<()> {
        (self.take(1)? == [FORMAT]).then_some(())
    }

    fn flag(&mut self) -> Option<bool> {
        match self.take(1)? {
            [0] => Some(false),
            [1] => Some(true),
            _ => None,
        }
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn string(&mut self) -> Option<String> {
        let len = usize::try_from(self.u32()?).ok()?;
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }

    fn end(&self) -> Option<()> {
        self.0.is_empty().then_some(())
    }
}

/// Each service's [`Health`] under its [`ServiceKeys::id`], 32 bytes apiece
/// (little-endian: id, content stamp, confirmed at, failing since or 0): a
/// thousand services are 32 KB that followers read without parsing text, and
/// VMs that learned services in different orders still agree on which is which.
pub fn encode_heartbeat(health: impl Iterator<Item = (u64, Health)>) -> Vec<u8> {
    let mut bytes = Vec::new();
    for (id, h) in health {
        bytes.extend_from_slice(&id.to_le_bytes());
        bytes.extend_from_slice(&h.content_stamp.to_le_bytes());
        bytes.extend_from_slice(&h.confirmed_at_ms.to_le_bytes());
        bytes.extend_from_slice(&h.failing_since_ms.unwrap_or(0).to_le_bytes());
    }
    bytes
}

pub fn decode_heartbeat(bytes: &[u8]) -> impl Iterator<Item = (u64, Health)> + '_ {
    bytes.chunks_exact(32).map(|chunk| {
        let word = |at: usize| {
            chunk
                .get(at..at + 8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map_or(0, u64::from_le_bytes)
        };
        let health = Health {
            content_stamp: word(8),
            confirmed_at_ms: word(16),
            failing_since_ms: Some(word(24)).filter(|since| *since != 0),
        };
        (word(0), health)
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedToken {
    pub token: String,
    pub refresh_at_ms: u64,
    pub expires_at_ms: u64,
}

impl PublishedToken {
    /// [`FORMAT`], the two times (64-bit little-endian), then the token's length
    /// and bytes.
    pub fn encode(&self) -> Option<Vec<u8>> {
        let mut bytes = vec![FORMAT];
        bytes.extend_from_slice(&self.refresh_at_ms.to_le_bytes());
        bytes.extend_from_slice(&self.expires_at_ms.to_le_bytes());
        put_str(&mut bytes, &self.token)?;
        Some(bytes)
    }

    /// `None` for anything but exactly what [`Self::encode`] writes.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let mut reader = Reader(bytes);
        reader.format()?;
        let refresh_at_ms = reader.u64()?;
        let expires_at_ms = reader.u64()?;
        let token = reader.string()?;
        reader.end()?;
        Some(Self {
            token,
            refresh_at_ms,
            expires_at_ms,
        })
    }
}

/// A service's confirmation: the poll that confirmed a list, the list named
/// (the key is one per question, and the content stored beside it may be
/// another configuration's), and the configuration whose poller confirmed it
/// (where that list is kept if another configuration stored a newer one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confirmation {
    pub digest: u64,
    pub confirmed_at_ms: u64,
    /// `None`: written by a version that did not name it.
    pub writer: Option<u64>,
}

/// `<confirmed at> <list digest> <writer>`.
pub fn encode_confirmation(digest: u64, confirmed_at_ms: u64, writer: u64) -> String {
    format!("{confirmed_at_ms} {digest:x} {writer:x}")
}

/// A stored confirmation; `None` for anything else, the bare number of
/// versions before 0.3 among them.
pub fn decode_confirmation(bytes: Option<&[u8]>) -> Option<Confirmation> {
    let mut fields = std::str::from_utf8(bytes?).ok()?.split(' ');
    let confirmed_at_ms = fields.next()?.parse().ok()?;
    let digest = u64::from_str_radix(fields.next()?, 16).ok()?;
    let writer = match fields.next() {
        Some(writer) => Some(u64::from_str_radix(writer, 16).ok()?),
        None => None,
    };
    if fields.next().is_some() {
        return None;
    }
    Some(Confirmation {
        digest,
        confirmed_at_ms,
        writer,
    })
}

pub fn decode_number(bytes: Option<&[u8]>) -> Option<u64> {
    std::str::from_utf8(bytes?).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pure::registry::instance::instance;
    use crate::testing::test;

    #[test]
    fn hosts_are_appended_to_the_encoded_list_once_and_within_the_bound() {
        let list = encode_learned(&["a.G.public.nacos".into(), "b.G.public.nacos".into()]);
        let asked = [
            "b.G.public.nacos",
            "c.G.public.nacos",
            "c.G.public.nacos",
            "d.G.public.nacos",
        ];
        let appended = append_learned(&list, &asked, 3);
        assert_eq!(
            appended.listed,
            [true, true, true, false],
            "d finds no room"
        );
        assert_eq!(appended.count, 3);
        let bytes = appended.bytes.unwrap();
        assert_eq!(
            decode_learned(&bytes),
            ["a.G.public.nacos", "b.G.public.nacos", "c.G.public.nacos"]
        );
        let again = append_learned(&bytes, &asked[..3], 3);
        assert_eq!(
            (again.listed, again.bytes, again.count),
            (vec![true; 3], None, 3)
        );
        let first = append_learned(b"", &["a.G.public.nacos"], 3);
        assert_eq!(first.bytes.unwrap(), b"a.G.public.nacos");
    }

    #[test]
    fn many_hosts_at_once_are_found_and_added_as_a_few_are() {
        let listed: Vec<String> = (0..40).map(|n| format!("s{n}.G.public.nacos")).collect();
        let list = encode_learned(&listed);
        // 30 hosts (looked up by hash, past 16), 10 of them listed, one twice.
        let mut asked: Vec<String> = (30..60).map(|n| format!("s{n}.G.public.nacos")).collect();
        asked.push(asked[15].clone());
        let asked: Vec<&str> = asked.iter().map(String::as_str).collect();
        let many = append_learned(&list, &asked, 1_000);
        assert!(many.listed.iter().all(|listed| *listed));
        assert_eq!(many.count, 60);
        let expected: Vec<String> = (0..60).map(|n| format!("s{n}.G.public.nacos")).collect();
        assert_eq!(decode_learned(&many.bytes.unwrap()), expected);
        let few = append_learned(&list, &asked[8..14], 1_000);
        assert_eq!(few.count, 44, "s38, s39 listed; s40-s43 four more");
    }

    #[test]
    fn the_inbox_and_what_it_holds_round_trip() {
        let inbox = Inbox {
            handed: 12,
            taken: 9,
            listed: 40,
        };
        assert_eq!(Inbox::decode(&inbox.encode()), Some(inbox));
        assert_eq!(inbox.waiting(), 3);
        let bytes = inbox.encode();
        assert_eq!(bytes.len(), 24);
        assert_eq!(Inbox::decode(&bytes[..23]), None);
        assert_eq!(Inbox::decode(&[bytes.clone(), vec![0]].concat()), None);
        let handed = encode_handed(7, "a.G.public.nacos");
        assert_eq!(decode_handed(&handed), Some((7, "a.G.public.nacos".into())));
        assert_eq!(decode_handed(&encode_handed(7, "")), None);
        assert_eq!(decode_handed(b"short"), None);
        assert_eq!((inbox_places(1), inbox_places(10_000)), (1, 16));
        let keys = ConfigKeys::new(b"{}");
        assert_eq!(keys.handed(3, 2), keys.handed(5, 2), "places are reused");
        assert_ne!(keys.handed(3, 2), keys.handed(4, 2));
        assert!(!keys.inbox().ends_with(".learned"));
    }

    #[test]
    fn key_names_stay_those_every_release_shares() {
        // VMs of two releases share one Envoy during an upgrade: the names are
        // the meeting point, whether made once or on every call.
        let keys = ConfigKeys::new(b"{}");
        let prefix = format!("nacos-instance-guard.{:016x}", stable_hash(b"{}"));
        assert_eq!(keys.lease(), format!("{prefix}.lease"));
        assert_eq!(keys.heartbeat(), format!("{prefix}.heartbeat"));
        assert_eq!(CLOCK_KEY, format!("{PLUGIN}.clock"));
    }

    fn rich_set() -> InstanceSet {
        let mut odd = instance("[::1]:8080", f64::MIN_POSITIVE);
        odd.healthy = false;
        odd.cluster = "集群\n\"B\"".into();
        odd.metadata = vec![("zone".into(), "a".into()), (String::new(), "\0".into())];
        let mut disabled = instance("10.0.0.2:1", 0.0);
        disabled.enabled = false;
        disabled.cluster = String::new();
        InstanceSet {
            instances: vec![instance("10.0.0.1:80", 2.5), odd, disabled],
            protection_reached: true,
        }
    }

    fn token() -> PublishedToken {
        PublishedToken {
            token: "eyJ0.é".into(),
            refresh_at_ms: 1,
            expires_at_ms: u64::MAX,
        }
    }

    #[test]
    fn each_service_has_keys_of_its_own() {
        let (a, b) = (ServiceKeys::new("q|a"), ServiceKeys::new("q|b"));
        let keys = [a.content(), a.confirmed(), b.content(), b.confirmed()];
        let distinct: std::collections::BTreeSet<&str> = keys.into_iter().collect();
        assert_eq!(distinct.len(), 4, "{keys:?}");
        let config = ConfigKeys::new(b"{}");
        assert_ne!(config.touched(a.id()), config.touched(b.id()));
        assert_ne!(a.kept(1), a.kept(2));
        assert_ne!(a.kept(1), b.kept(1));
    }

    #[test]
    fn content_and_tokens_round_trip() {
        for set in [rich_set(), InstanceSet::default()] {
            let bytes = encode_content(99, 0xabc, &set).unwrap();
            assert_eq!(content_header(&bytes), Some((99, 0xabc)));
            let stored = StoredContent {
                stamp: 99,
                writer: 0xabc,
                set,
            };
            assert_eq!(decode_content(&bytes), Some(stored));
        }
        assert_eq!(content_header(b"no stamp"), None);
        let token = token();
        assert_eq!(
            PublishedToken::decode(&token.encode().unwrap()),
            Some(token)
        );
    }

    #[test]
    fn garbage_torn_or_foreign_values_decode_to_nothing() {
        let content = encode_content(7, 1, &rich_set()).unwrap();
        let token = token().encode().unwrap();
        // Every torn value, and one with a byte too many.
        for end in 0..content.len() {
            assert_eq!(decode_content(&content[..end]), None, "{end}");
        }
        for end in 0..token.len() {
            assert_eq!(PublishedToken::decode(&token[..end]), None, "{end}");
        }
        let mut longer = content.clone();
        longer.push(0);
        assert_eq!(decode_content(&longer), None);
        let mut longer = token.clone();
        longer.push(0);
        assert_eq!(PublishedToken::decode(&longer), None);
        // The JSON that releases before FORMAT wrote, the header of releases
        // before the writer was stored, and another format's byte.
        let json_content = br#"12
{"instances":[],"protection_reached":false}"#;
        assert_eq!(decode_content(json_content), None);
        assert_eq!(content_header(json_content), None);
        let json_token = br#"{"token":"t","refresh_at_ms":1,"expires_at_ms":2}"#;
        assert_eq!(PublishedToken::decode(json_token), None);
        let start = content.iter().position(|b| *b == b'\n').unwrap() + 1;
        let mut other_format = content.clone();
        other_format[start] = FORMAT + 1;
        assert_eq!(decode_content(&other_format), None);
        let mut other_format = token.clone();
        other_format[0] = FORMAT + 1;
        assert_eq!(PublishedToken::decode(&other_format), None);
        // A flag that is neither 0 nor 1, a length past the end, text not UTF-8.
        let mut bad_flag = content.clone();
        bad_flag[start + 1] = 2;
        assert_eq!(decode_content(&bad_flag), None);
        let mut huge_count = content.clone();
        huge_count[start + 2..start + 6].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_content(&huge_count), None);
        let mut bad_text = token.clone();
        let last = bad_text.len() - 1;
        bad_text[last] = 0xff;
        assert_eq!(PublishedToken::decode(&bad_text), None);
        assert_eq!(decode_content(b"12\n"), None);
        assert_eq!(decode_content(b"12 1\n"), None);
        assert_eq!(PublishedToken::decode(b"garbage"), None);
    }

    #[test]
    fn heartbeats_round_trip_and_ignore_a_torn_tail() {
        let health = [
            Health {
                content_stamp: 1,
                confirmed_at_ms: 2,
                failing_since_ms: None,
            },
            Health {
                content_stamp: u64::MAX,
                confirmed_at_ms: 7,
                failing_since_ms: Some(9),
            },
        ];
        let entries = [(7, health[0]), (u64::MAX, health[1])];
        let mut bytes = encode_heartbeat(entries.iter().copied());
        assert_eq!(bytes.len(), 64);
        bytes.push(1);
        assert_eq!(decode_heartbeat(&bytes).collect::<Vec<_>>(), entries);
    }

    #[test]
    fn keys_carry_the_plugin_name_and_what_they_belong_to() {
        let keys = ConfigKeys::new(b"{}");
        assert!(keys.lease().starts_with("nacos-instance-guard."));
        assert_ne!(keys.lease(), ConfigKeys::new(b"{\"a\":1}").lease());
        assert_ne!(keys.heartbeat(), keys.lease());
        let service = ServiceKeys::new("nacos|public|DEFAULT_GROUP|demo");
        assert!(service
            .content()
            .starts_with("nacos-instance-guard.service."));
        assert_ne!(
            service,
            ServiceKeys::new("nacos|public|DEFAULT_GROUP|other")
        );
        assert_eq!(decode_number(Some(b"17")), Some(17));
        assert_eq!(decode_number(Some(b"x")), None);
    }

    #[test]
    fn a_confirmation_names_the_list_it_confirms_and_its_writer() {
        let bytes = encode_confirmation(0xbeef, 36_048_982, 0x7a);
        let confirmation = |writer| Confirmation {
            digest: 0xbeef,
            confirmed_at_ms: 36_048_982,
            writer,
        };
        assert_eq!(
            decode_confirmation(Some(bytes.as_bytes())),
            Some(confirmation(Some(0x7a)))
        );
        assert_eq!(
            decode_confirmation(Some(b"36048982 beef")),
            Some(confirmation(None))
        );
        assert_eq!(decode_confirmation(Some(b"36048982 beef 7a 1")), None);
        assert_eq!(decode_confirmation(Some(b"36048982")), None);
        assert_eq!(decode_confirmation(Some(b"1 x")), None);
        assert_eq!(decode_confirmation(None), None);
    }

    #[test]
    fn equal_lists_have_one_digest_whoever_stored_them() {
        let (set, mut other) = (rich_set(), rich_set());
        assert_eq!(list_digest(&set), list_digest(&other));
        other.instances[0].healthy = !other.instances[0].healthy;
        assert_ne!(list_digest(&set), list_digest(&other));
        let stored = encode_content(7, 1, &set).unwrap();
        let again = encode_content(9, 2, &set).unwrap();
        let list =
            |bytes: &[u8]| bytes[bytes.iter().position(|b| *b == b'\n').unwrap() + 1..].to_vec();
        assert_eq!(list(&stored), list(&again));
    }
}
