//! promshard's etcd client (`ha::etcd`) against real etcd members: every
//! call it makes, an endpoint list whose first member is down, TLS with a
//! client certificate, and a user whose token etcd stops accepting.
//!
//! Needs `etcd` (`PROMSHARD_ETCD`, else `PATH`) and for the TLS test
//! `openssl` (`PROMSHARD_OPENSSL`); `bash .ci/test` installs them.

mod util;

use std::time::Duration;

use promshard::config::ha::{HaConfig, Tls};
use promshard::ha::etcd::{Client, Compare, CompareOp, Error, Op, Put, Range, Txn, code};
use util::Dir;
use util::child::free_port;
use util::etcd::{Certs, Etcd};

const TIMEOUT: Duration = Duration::from_secs(3);

fn config(endpoints: Vec<String>) -> HaConfig {
    HaConfig {
        endpoints,
        tls: None,
        user: None,
        name: "t".into(),
        lease_ttl: Duration::from_secs(5),
        instance: "i".into(),
        mode: Default::default(),
    }
}

fn urls(etcd: &Etcd) -> Vec<String> {
    etcd.members
        .iter()
        .map(|m| format!("{}://{}", etcd.scheme, m.client))
        .collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("runtime")
}

#[test]
#[ignore = "needs etcd"]
fn every_call_works_against_a_real_member() {
    let dir = Dir::new();
    let etcd = Etcd::start(dir.path(), 1);
    let c = Client::new(&config(urls(&etcd)), TIMEOUT).unwrap();
    runtime().block_on(async {
        // Keys: put, prefix range, delete.
        for k in ["p/a", "p/b", "q"] {
            c.put(k, format!("v-{k}"), 0).await.unwrap();
        }
        let under: Vec<(Vec<u8>, Vec<u8>)> = c
            .get_prefix("p/")
            .await
            .unwrap()
            .into_iter()
            .map(|kv| (kv.key, kv.value))
            .collect();
        assert_eq!(
            under,
            [
                (b"p/a".to_vec(), b"v-p/a".to_vec()),
                (b"p/b".to_vec(), b"v-p/b".to_vec())
            ]
        );
        assert_eq!(c.delete(Range::prefix("p/")).await.unwrap(), 2);
        assert!(c.get_prefix("p/").await.unwrap().is_empty());

        // A txn guarded by a key's creation revision.
        let q = c.range(Range::key("q")).await.unwrap().kvs.remove(0);
        let guarded = |rev| Txn {
            compare: vec![Compare::CreateRevision(
                b"q".to_vec(),
                CompareOp::Equal,
                rev,
            )],
            success: vec![Op::Put(Put {
                key: b"r".to_vec(),
                value: b"1".to_vec(),
                lease: 0,
            })],
            failure: vec![Op::Range(Range::key("q"))],
        };
        let stale = c.txn(guarded(q.create_revision + 100)).await.unwrap();
        assert!(!stale.succeeded, "{stale:?}");
        assert!(c.txn(guarded(q.create_revision)).await.unwrap().succeeded);
        assert_eq!(c.range(Range::key("r")).await.unwrap().kvs[0].value, b"1");

        // A lease: grant, a key on it, keep-alive, time to live, revoke.
        let lease = c.lease_grant(Duration::from_secs(10)).await.unwrap();
        c.put("leased", "", lease.id).await.unwrap();
        assert!(c.lease_keep_alive(lease.id).await.unwrap() > 0);
        let ttl = c.lease_time_to_live(lease.id, true).await.unwrap();
        assert!(ttl.ttl > 0 && ttl.granted_ttl == 10, "{ttl:?}");
        assert_eq!(ttl.keys, [b"leased".to_vec()]);
        c.lease_revoke(lease.id).await.unwrap();
        assert!(c.range(Range::key("leased")).await.unwrap().kvs.is_empty());
        assert_eq!(
            c.lease_keep_alive(lease.id).await.unwrap(),
            0,
            "a gone lease renews to 0"
        );
        assert!(c.lease_time_to_live(lease.id, false).await.unwrap().ttl < 1);
        let e = c.lease_revoke(lease.id).await.unwrap_err();
        assert_eq!(e.code(), Some(code::NOT_FOUND), "{e}");
        assert!(
            e.to_string().contains("/v3/lease/revoke") && e.to_string().contains("lease not found"),
            "{e}"
        );
    });
}

#[test]
#[ignore = "needs etcd"]
fn a_campaign_waits_its_time_then_wins_when_the_leader_goes() {
    let dir = Dir::new();
    let etcd = Etcd::start(dir.path(), 1);
    let c = Client::new(&config(urls(&etcd)), TIMEOUT).unwrap();
    let rt = runtime();
    assert_eq!(
        rt.block_on(c.leader("e")).unwrap(),
        None,
        "nobody leads yet"
    );
    let a = rt
        .block_on(c.lease_grant(Duration::from_secs(30)))
        .unwrap()
        .id;
    let b = rt
        .block_on(c.lease_grant(Duration::from_secs(30)))
        .unwrap()
        .id;
    let won = rt
        .block_on(c.campaign("e", "a", a, TIMEOUT))
        .unwrap()
        .expect("a wins at once");
    assert_eq!(won.lease, a);
    let leader = rt.block_on(c.leader("e")).unwrap().expect("a leads");
    assert_eq!(
        (leader.value, leader.create_revision),
        (b"a".to_vec(), won.rev)
    );

    // b waits while a leads; when the wait ends its candidacy is gone.
    let waited = rt.block_on(c.campaign("e", "b", b, Duration::from_millis(800)));
    assert_eq!(waited.unwrap(), None);
    util::child::poll("etcd to withdraw b's candidacy", TIMEOUT, || {
        let held = rt
            .block_on(c.lease_time_to_live(b, true))
            .map_err(|e| e.to_string())?;
        match held.keys[..] {
            [] => Ok(()),
            _ => Err(format!("{held:?}")),
        }
    })
    .unwrap();

    // b campaigns again; a resigns (its lease revoked): b wins.
    let pending = rt.spawn({
        let c = c.clone();
        async move { c.campaign("e", "b", b, Duration::from_secs(10)).await }
    });
    util::child::poll("b's candidacy to be in etcd", TIMEOUT, || {
        let held = rt
            .block_on(c.lease_time_to_live(b, true))
            .map_err(|e| e.to_string())?;
        match held.keys.len() {
            1 => Ok(()),
            _ => Err(format!("{held:?}")),
        }
    })
    .unwrap();
    assert!(!pending.is_finished(), "b waits while a leads");
    rt.block_on(c.lease_revoke(a)).unwrap();
    let won_b = rt
        .block_on(pending)
        .unwrap()
        .unwrap()
        .expect("b wins once a is gone");
    assert!(
        won_b.rev > won.rev,
        "a later leader has a higher revision: {won_b:?}"
    );
    assert_eq!(rt.block_on(c.leader("e")).unwrap().unwrap().value, b"b");
}

#[test]
#[ignore = "needs etcd"]
fn a_dead_first_endpoint_is_skipped_and_all_dead_names_each() {
    let dir = Dir::new();
    let etcd = Etcd::start(dir.path(), 1);
    let dead = format!("http://127.0.0.1:{}", free_port());
    let mut endpoints = vec![dead.clone()];
    endpoints.extend(urls(&etcd));
    let c = Client::new(&config(endpoints), TIMEOUT).unwrap();
    let rt = runtime();
    rt.block_on(async {
        c.put("k", "v", 0).await.unwrap();
        assert_eq!(c.range(Range::key("k")).await.unwrap().kvs[0].value, b"v");
    });
    let other_dead = format!("http://127.0.0.1:{}", free_port());
    let c = Client::new(&config(vec![dead.clone(), other_dead.clone()]), TIMEOUT).unwrap();
    let e = rt.block_on(c.put("k", "v", 0)).unwrap_err();
    let text = e.to_string();
    assert!(
        matches!(&e, Error::Unavailable(each) if each.len() == 2),
        "{e:?}"
    );
    assert!(
        text.starts_with("no etcd endpoint answered: ")
            && text.contains(&dead)
            && text.contains(&other_dead),
        "{text}"
    );
}

#[test]
#[ignore = "needs etcd and openssl"]
fn tls_with_the_configured_ca_and_client_certificate() {
    let dir = Dir::new();
    let certs = Certs::make(&dir.join("certs"));
    let etcd = Etcd::start_with(dir.path(), 1, Some(&certs));
    let mut cfg = config(urls(&etcd));
    cfg.tls = Some(Tls {
        ca: Some(certs.pem("ca.pem")),
        identity: Some((certs.pem("client.pem"), certs.pem("client.key"))),
    });
    let rt = runtime();
    let c = Client::new(&cfg, TIMEOUT).unwrap();
    rt.block_on(async {
        c.put("secure", "yes", 0).await.unwrap();
        assert_eq!(
            c.range(Range::key("secure")).await.unwrap().kvs[0].value,
            b"yes"
        );
    });
    // Without a client certificate etcd refuses the handshake.
    cfg.tls = Some(Tls {
        ca: Some(certs.pem("ca.pem")),
        identity: None,
    });
    let e = rt
        .block_on(Client::new(&cfg, TIMEOUT).unwrap().put("secure", "no", 0))
        .unwrap_err();
    assert!(
        matches!(&e, Error::Transport { endpoint, .. } if endpoint == &cfg.endpoints[0]),
        "{e:?}"
    );
    // Without the CA, etcd's certificate is not trusted.
    cfg.tls = Some(Tls {
        ca: None,
        identity: Some((certs.pem("client.pem"), certs.pem("client.key"))),
    });
    let e = rt
        .block_on(Client::new(&cfg, TIMEOUT).unwrap().put("secure", "no", 0))
        .unwrap_err();
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
}

/// POST `body` to the gateway as an administrator would, with `token`.
fn admin(url: &str, path: &str, body: serde_json::Value, token: Option<&str>) -> serde_json::Value {
    let agent = util::http::agent(TIMEOUT);
    let mut req = agent.post(format!("{url}{path}"));
    if let Some(t) = token {
        req = req.header("Authorization", t);
    }
    let reply = util::http::read_reply(req.send(body.to_string())).unwrap();
    assert_eq!(reply.status, 200, "{path}: {}", reply.body);
    serde_json::from_str(&reply.body).unwrap()
}

#[test]
#[ignore = "needs etcd"]
fn a_user_authenticates_and_again_when_its_token_is_refused() {
    let dir = Dir::new();
    let etcd = Etcd::start(dir.path(), 1);
    let url = urls(&etcd).remove(0);
    for (path, body) in [
        (
            "/v3/auth/user/add",
            serde_json::json!({"name": "root", "password": "pw"}),
        ),
        ("/v3/auth/role/add", serde_json::json!({"name": "root"})),
        (
            "/v3/auth/user/grant",
            serde_json::json!({"user": "root", "role": "root"}),
        ),
        ("/v3/auth/enable", serde_json::json!({})),
    ] {
        admin(&url, path, body, None);
    }
    let mut cfg = config(vec![url.clone()]);
    cfg.user = Some(("root".into(), "pw".into()));
    let c = Client::new(&cfg, TIMEOUT).unwrap();
    let rt = runtime();
    rt.block_on(c.put("k", "1", 0)).unwrap();

    // Turning auth off and on again drops every token, the client's too.
    let token = admin(
        &url,
        "/v3/auth/authenticate",
        serde_json::json!({"name": "root", "password": "pw"}),
        None,
    );
    let token = token["token"].as_str().unwrap().to_string();
    admin(
        &url,
        "/v3/auth/disable",
        serde_json::json!({}),
        Some(&token),
    );
    admin(&url, "/v3/auth/enable", serde_json::json!({}), None);
    rt.block_on(c.put("k", "2", 0))
        .expect("the client authenticates again");
    assert_eq!(
        rt.block_on(c.range(Range::key("k"))).unwrap().kvs[0].value,
        b"2"
    );

    // A wrong password: the error names the endpoint and the user.
    cfg.user = Some(("root".into(), "wrong".into()));
    let e = rt
        .block_on(Client::new(&cfg, TIMEOUT).unwrap().put("k", "3", 0))
        .unwrap_err();
    assert!(
        matches!(&e, Error::Auth { user, .. } if user == "root"),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .starts_with(&format!("etcd {url}: authenticating as \"root\": ")),
        "{e}"
    );
}
