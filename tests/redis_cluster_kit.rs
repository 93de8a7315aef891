//! `testing::RedisCluster`, the loopback Redis Cluster the cluster-mode store is tested against:
//! it forms a cluster whose slots are served where it says, moves a slot by a planned failover
//! (the old primary demoted, reachable), by a killed primary and by a reshard (with its keys,
//! half moved in between), and, with TLS, names the TLS ports to TLS clients. Checked with plain
//! connections, following no redirection.
#![cfg(all(feature = "redis", feature = "test-util"))]

use std::io::{Read as _, Write as _};
use std::sync::Arc;
use std::time::Duration;

use tower_cognito_auth::testing::RedisCluster;

/// Starts a cluster, or fails the test with the reason (among them, how to get a server).
fn started(cluster: std::io::Result<RedisCluster>) -> RedisCluster {
    match cluster {
        Ok(cluster) => cluster,
        Err(error) => panic!("{error}"),
    }
}

/// A plain connection to one node, with no cluster client in between.
fn connect(url: &str) -> redis::Connection {
    let conn = redis::Client::open(url)
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(5))
        .unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    conn
}

fn port(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}

/// `SET key value` at `url`: `Ok` or the error it answered.
fn set(url: &str, key: &str, value: &str) -> redis::RedisResult<()> {
    redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query(&mut connect(url))
}

/// `SET` at `url` must be redirected to `owner` by `MOVED` (not refused by `READONLY`).
fn assert_moved(url: &str, key: &str, owner: &str) {
    let error = set(url, key, "elsewhere").unwrap_err();
    assert_eq!(error.code(), Some("MOVED"), "{url}: {error}");
    // (address, slot)
    let (address, _) = error.redirect_node().unwrap();
    assert_eq!(
        address,
        format!("127.0.0.1:{}", port(owner)),
        "{url}: {error}"
    );
}

/// `SET key value` at `url`, then `WAIT` until one replica has it.
fn set_replicated(url: &str, key: &str, value: &str) {
    set(url, key, value).unwrap();
    let replicas: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(5000)
        .query(&mut connect(url))
        .unwrap();
    assert_eq!(replicas, 1, "the write reached no replica");
}

fn get(url: &str, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query(&mut connect(url)).unwrap()
}

/// `CLUSTER SLOTS` at `url` over a plain connection.
fn cluster_slots(url: &str) -> redis::Value {
    redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query(&mut connect(url))
        .unwrap()
}

/// The port `url`'s `CLUSTER SLOTS` names as the primary of `key`'s slot, and those of its
/// replicas.
fn owner_in_view(url: &str, key: &str) -> (u16, Vec<u16>) {
    let slot: i64 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query(&mut connect(url))
        .unwrap();
    let reply = cluster_slots(url);
    let int = |value: &redis::Value| match value {
        redis::Value::Int(n) => *n,
        other => panic!("not an integer: {other:?}"),
    };
    let port = |node: &redis::Value| u16::try_from(int(&node.as_sequence().unwrap()[1])).unwrap();
    let range = reply
        .as_sequence()
        .unwrap()
        .iter()
        .map(|range| range.as_sequence().unwrap())
        .find(|range| (int(&range[0])..=int(&range[1])).contains(&slot))
        .unwrap_or_else(|| panic!("{url} maps no node to slot {slot}: {reply:?}"));
    (port(&range[2]), range[3..].iter().map(port).collect())
}

fn url(port: u16) -> String {
    format!("redis://127.0.0.1:{port}")
}

/// Every live node in `nodes` maps `key`'s slot to `owner`.
fn assert_every_view(nodes: &[String], key: &str, owner: &str) {
    for node in nodes {
        assert_eq!(
            owner_in_view(node, key).0,
            port(owner),
            "{node}'s CLUSTER SLOTS: {:?}",
            cluster_slots(node)
        );
    }
}

/// Three primaries with a replica each: the slot's primary takes the write and the others send
/// it there; a planned failover makes the replica primary with the data while the old primary,
/// still up, redirects writes to it; killing that primary makes the demoted one primary again.
#[test]
fn a_cluster_serves_a_slot_where_it_says_through_a_failover_and_a_crash() {
    let mut cluster = started(RedisCluster::start(3, 1));
    let key = "tower-cognito-auth:kit";
    let urls = cluster.urls();
    assert_eq!(urls.len(), 3);
    // Started means: each primary has its replica, linked, in every node's view.
    let slots = cluster_slots(&urls[0]);
    let (primaries, replicas) = slot_ports(&slots);
    assert_eq!(replicas.len(), 3, "{slots:?}");
    let nodes: Vec<String> = primaries.iter().chain(&replicas).map(|p| url(*p)).collect();
    for node in &nodes {
        assert_eq!(
            cluster_slots(node),
            slots,
            "{node} disagrees with {}",
            urls[0]
        );
    }
    for replica in &replicas {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query(&mut connect(&url(*replica)))
            .unwrap();
        assert!(info.contains("master_link_status:up"), "{info}");
    }
    let first = cluster.primary_url_for(key).unwrap();
    assert!(urls.contains(&first), "{first} is not among {urls:?}");
    set_replicated(&first, key, "one");
    for other in urls.iter().filter(|url| **url != first) {
        assert_moved(other, key, &first);
    }

    let second = cluster.failover(key).unwrap();
    assert_ne!(second, first);
    assert!(!urls.contains(&second), "a replica was promoted");
    assert_eq!(cluster.primary_url_for(key).unwrap(), second);
    assert_every_view(&nodes, key, &second);
    assert_eq!(get(&second, key).as_deref(), Some("one"));
    // The old primary is up and demoted: it redirects to the new one.
    assert_moved(&first, key, &second);

    set_replicated(&second, key, "two");
    let third = cluster.kill_primary(key).unwrap();
    assert_eq!(third, first, "the demoted primary was the only replica");
    assert_eq!(cluster.primary_url_for(key).unwrap(), third);
    let live: Vec<String> = nodes.iter().filter(|n| **n != second).cloned().collect();
    assert_every_view(&live, key, &third);
    assert_eq!(get(&third, key).as_deref(), Some("two"));
    assert!(
        redis::Client::open(second.as_str())
            .unwrap()
            .get_connection_with_timeout(Duration::from_secs(5))
            .is_err(),
        "the killed primary still accepts connections"
    );
    for other in urls.iter().filter(|url| **url != first) {
        assert_moved(other, key, &third);
    }
    assert!(format!("{cluster:?}").starts_with("RedisCluster"));
}

#[test]
fn a_cluster_needs_three_primaries() {
    let error = RedisCluster::start(2, 1).unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput, "{error}");
}

/// A throwaway authority and one certificate for `127.0.0.1`, without an extended key usage,
/// so that the nodes present it as servers and, to each other, as clients. DER for rustls.
struct Pki {
    ca_pem: String,
    ca_der: Vec<u8>,
    chain_pem: String,
    cert_der: Vec<u8>,
    key_pem: String,
    key_der: Vec<u8>,
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    // Distinct subjects: OpenSSL (the nodes verifying each other) takes a certificate whose
    // subject is its issuer's for a self-signed one, and refuses it (rcgen names both alike).
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "tower-cognito-auth test authority");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut cert = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    cert.distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    let cert = cert.signed_by(&key, &ca).unwrap();
    Pki {
        ca_pem: ca.pem(),
        ca_der: ca.der().to_vec(),
        chain_pem: cert.pem(),
        cert_der: cert.der().to_vec(),
        key_pem: key.serialize_pem(),
        key_der: key.serialize_der(),
    }
}

/// `CLUSTER SLOTS` over TLS (blocking rustls, ring), presenting the certificate when
/// `with_cert`.
fn tls_cluster_slots(url: &str, pki: &Pki, with_cert: bool) -> std::io::Result<redis::Value> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(pki.ca_der.clone())).unwrap();
    #[allow(deprecated)] // rustls 0.23.48: ring's provider has no post-quantum groups.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = if with_cert {
        config
            .with_client_auth_cert(
                vec![CertificateDer::from(pki.cert_der.clone())],
                PrivateKeyDer::try_from(pki.key_der.clone()).unwrap(),
            )
            .unwrap()
    } else {
        config.with_no_client_auth()
    };
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port(url)))?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(b"*2\r\n$7\r\nCLUSTER\r\n$5\r\nSLOTS\r\n")?;
    let mut reply = Vec::new();
    let mut chunk = [0u8; 4096];
    // Bounded: each read waits at most 5 s, and a reply of CLUSTER SLOTS is a few chunks.
    for _ in 0..64 {
        let read = tls.read(&mut chunk)?;
        if read == 0 {
            break;
        }
        reply.extend_from_slice(&chunk[..read]);
        if let Ok(value) = redis::parse_redis_value(&reply) {
            return Ok(value);
        }
    }
    Err(std::io::Error::other(format!(
        "no whole reply: {:?}",
        String::from_utf8_lossy(&reply)
    )))
}

/// Every port a `CLUSTER SLOTS` reply names: (primaries, replicas).
fn slot_ports(reply: &redis::Value) -> (Vec<u16>, Vec<u16>) {
    let port = |node: &redis::Value| match &node.as_sequence().unwrap()[1] {
        redis::Value::Int(port) => u16::try_from(*port).unwrap(),
        other => panic!("a port {other:?}"),
    };
    let (mut primaries, mut replicas) = (Vec::new(), Vec::new());
    for range in reply.as_sequence().unwrap() {
        let fields = range.as_sequence().unwrap();
        primaries.push(port(&fields[2]));
        replicas.extend(fields[3..].iter().map(port));
    }
    primaries.sort_unstable();
    replicas.sort_unstable();
    (primaries, replicas)
}

/// With TLS between clients and nodes and among the nodes (cluster bus, replication) and
/// client certificates required: the replicas' links are up over TLS, `CLUSTER SLOTS` names
/// the TLS ports to a TLS client and the plain ports to a plain one, a client without a
/// certificate is refused, and a failover and a slot move work over TLS among the nodes.
#[test]
fn rediss_cluster_names_tls_ports_to_tls_clients() {
    let pki = pki();
    let cluster = started(RedisCluster::start_tls(
        3,
        1,
        &pki.ca_pem,
        &pki.chain_pem,
        &pki.key_pem,
        true,
    ));
    let mut plain_primaries: Vec<u16> = cluster.urls().iter().map(|url| port(url)).collect();
    let mut tls_primaries: Vec<u16> = cluster.tls_urls().iter().map(|url| port(url)).collect();
    plain_primaries.sort_unstable();
    tls_primaries.sort_unstable();
    assert_eq!(tls_primaries.len(), 3);
    assert!(
        cluster
            .tls_urls()
            .iter()
            .all(|url| url.starts_with("rediss://127.0.0.1:"))
    );

    let plain: redis::Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query(&mut connect(&cluster.urls()[0]))
        .unwrap();
    let (primaries, plain_replicas) = slot_ports(&plain);
    assert_eq!(primaries, plain_primaries, "plain CLUSTER SLOTS: {plain:?}");

    let tls_url = &cluster.tls_urls()[0];
    let over_tls = tls_cluster_slots(tls_url, &pki, true).unwrap();
    let (primaries, tls_replicas) = slot_ports(&over_tls);
    assert_eq!(
        primaries, tls_primaries,
        "CLUSTER SLOTS over TLS: {over_tls:?}"
    );
    assert_eq!(tls_replicas.len(), 3);
    assert!(
        tls_replicas
            .iter()
            .all(|port| !plain_replicas.contains(port)),
        "plain {plain_replicas:?}, TLS {tls_replicas:?}"
    );
    assert!(
        tls_cluster_slots(tls_url, &pki, false).is_err(),
        "a client without a certificate was answered"
    );

    let key = "tower-cognito-auth:kit";
    let before = cluster.primary_url_for(key).unwrap();
    let after = cluster.failover(key).unwrap();
    assert_ne!(before, after);
    assert_moved(&before, key, &after);
    // A slot move: `MIGRATE` goes over TLS, as the cluster bus does.
    set(&after, key, "kept").unwrap();
    let moved = cluster.move_slot(key).unwrap();
    assert_ne!(moved, after);
    assert_eq!(get(&moved, key).as_deref(), Some("kept"));
    assert_moved(&after, key, &moved);
}

/// Planned failovers back and forth: the third one moves the slot back to a node demoted
/// seconds before, whose failover Redis's primaries refuse to vote for twice within two node
/// timeouts (the kit asks again once the first request has expired).
#[test]
fn planned_failovers_back_and_forth_each_move_the_slot() {
    let cluster = started(RedisCluster::start(3, 1));
    let key = "tower-cognito-auth:kit";
    let mut primary = cluster.primary_url_for(key).unwrap();
    set_replicated(&primary, key, "kept");
    for _ in 0..3 {
        let next = cluster.failover(key).unwrap();
        assert_ne!(next, primary);
        assert_moved(&primary, key, &next);
        assert_eq!(get(&next, key).as_deref(), Some("kept"));
        primary = next;
    }
}

/// Without `auth_clients`, a TLS client without a certificate is answered, with the TLS ports.
#[test]
fn rediss_cluster_without_client_authentication_answers_any_tls_client() {
    let pki = pki();
    let cluster = started(RedisCluster::start_tls(
        3,
        1,
        &pki.ca_pem,
        &pki.chain_pem,
        &pki.key_pem,
        false,
    ));
    let mut tls_primaries: Vec<u16> = cluster.tls_urls().iter().map(|url| port(url)).collect();
    tls_primaries.sort_unstable();
    let reply = tls_cluster_slots(&cluster.tls_urls()[0], &pki, false).unwrap();
    assert_eq!(slot_ports(&reply).0, tls_primaries, "{reply:?}");
}

/// `GET key` at `url`: the value, or the error it answered.
fn try_get(url: &str, key: &str) -> redis::RedisResult<Option<String>> {
    redis::cmd("GET").arg(key).query(&mut connect(url))
}

/// `GET key` at `url` after `ASKING` on the same connection.
fn get_asking(url: &str, key: &str) -> redis::RedisResult<Option<String>> {
    let mut conn = connect(url);
    let () = redis::cmd("ASKING").query(&mut conn)?;
    redis::cmd("GET").arg(key).query(&mut conn)
}

/// `error` is a redirection of kind `code` (`MOVED`, `ASK`) to `owner`.
fn assert_redirected(error: &redis::RedisError, code: &str, owner: &str) {
    assert_eq!(error.code(), Some(code), "{error}");
    let (address, _) = error.redirect_node().unwrap();
    assert_eq!(address, format!("127.0.0.1:{}", port(owner)), "{error}");
}

/// Every node of the cluster (primaries and replicas), as `seed`'s `CLUSTER SLOTS` names them.
fn every_node(seed: &str) -> Vec<String> {
    let (primaries, replicas) = slot_ports(&cluster_slots(seed));
    let mut ports: Vec<u16> = primaries.into_iter().chain(replicas).collect();
    ports.sort_unstable();
    ports.dedup();
    ports.into_iter().map(url).collect()
}

/// A slot moved as `redis-cli --cluster reshard` moves it, in two steps. Half moved (one key
/// on the target, one still on the source): the source serves the key it holds and answers
/// `ASK` (to the target) for the moved key and for a key that does not exist yet; the target
/// serves the moved key after `ASKING` only, `MOVED` to the source otherwise; every node still
/// names the source as the owner. Finished: every node, replicas included, names the target,
/// which holds both keys; the source and the third primary answer `MOVED` to it. A second move
/// takes the slot on to the third primary.
#[test]
fn a_slot_moves_to_another_primary_with_its_keys_through_a_half_moved_state() {
    let cluster = started(RedisCluster::start(3, 1));
    let urls = cluster.urls();
    let tag = "{tower-cognito-auth:kit}";
    let (moved, kept, absent) = (
        format!("{tag}:moved-first"),
        format!("{tag}:kept"),
        format!("{tag}:absent"),
    );
    let source = cluster.primary_url_for(tag).unwrap();
    set(&source, &moved, "one").unwrap();
    set(&source, &kept, "two").unwrap();
    let nodes = every_node(&source);
    assert_eq!(nodes.len(), 6, "{nodes:?}");

    let half = cluster.begin_slot_move(tag, &[&moved]).unwrap();
    let target = half.target_url().to_owned();
    assert_eq!(half.source_url(), source);
    assert_ne!(target, source);
    assert!(urls.contains(&target), "{target} is not among {urls:?}");
    let third = urls
        .iter()
        .find(|url| **url != source && **url != target)
        .unwrap()
        .clone();
    assert_eq!(try_get(&source, &kept).unwrap().as_deref(), Some("two"));
    assert_redirected(&try_get(&source, &moved).unwrap_err(), "ASK", &target);
    assert_redirected(&set(&source, &absent, "x").unwrap_err(), "ASK", &target);
    assert_eq!(get_asking(&target, &moved).unwrap().as_deref(), Some("one"));
    assert_redirected(&try_get(&target, &moved).unwrap_err(), "MOVED", &source);
    assert_redirected(&try_get(&third, &kept).unwrap_err(), "MOVED", &source);
    assert_eq!(cluster.primary_url_for(tag).unwrap(), source);
    assert_every_view(&nodes, tag, &source);

    let after = cluster.finish_slot_move(&half).unwrap();
    assert_eq!(after, target);
    assert_eq!(cluster.primary_url_for(tag).unwrap(), target);
    assert_every_view(&nodes, tag, &target);
    assert_eq!(get(&target, &moved).as_deref(), Some("one"));
    assert_eq!(get(&target, &kept).as_deref(), Some("two"));
    assert_moved(&source, &kept, &target);
    assert_moved(&third, &kept, &target);
    // The target's replica has the keys too.
    set_replicated(&target, &absent, "three");

    let last = cluster.move_slot(tag).unwrap();
    assert_eq!(last, third, "the next primary after {target}");
    assert_every_view(&nodes, tag, &third);
    for (key, value) in [(&moved, "one"), (&kept, "two"), (&absent, "three")] {
        assert_eq!(get(&third, key).as_deref(), Some(value));
    }
    assert_moved(&target, &kept, &third);
    assert_moved(&source, &kept, &third);
}

/// Keys of another slot cannot be moved first.
#[test]
fn a_half_move_refuses_keys_of_another_slot() {
    let cluster = started(RedisCluster::start(3, 0));
    let error = cluster
        .begin_slot_move("{a}", &["{a}x", "{b}y"])
        .unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput, "{error}");
}
