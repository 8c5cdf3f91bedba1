//! Unit tests of the ADS server: sessions fed by hand.

use super::*;
use bytes::{BufMut, Bytes, BytesMut};
use http_body::Frame;
use meshcore::api::discovery::Node;
use prost::Message;
use std::time::Duration;

type Sink = mpsc::UnboundedSender<Result<Frame<Bytes>, std::convert::Infallible>>;

/// A session fed by hand: the requests sent on the returned sink, framed as gRPC.
struct Harness {
    server: XdsServer,
    tx: Sink,
    rx: mpsc::Receiver<Outgoing>,
    _publish: watch::Sender<Arc<ResourceSet>>,
}

async fn session() -> Harness {
    let set = ResourceSet {
        generation: 1,
        ..Default::default()
    };
    let (publish, resources) = watch::channel(Arc::new(set));
    let server = XdsServer::new(resources);
    let (tx, rx) = mpsc::unbounded_channel();
    let frames =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
    let body = http_body_util::StreamBody::new(frames);
    let requests = Streaming::<DeltaDiscoveryRequest>::new_request(
        tonic_prost::ProstDecoder::new(Default::default()),
        body,
        None,
        None,
    );
    let rx = server
        .open(&http::HeaderMap::new(), requests)
        .await
        .unwrap();
    Harness {
        server,
        tx,
        rx,
        _publish: publish,
    }
}

fn send(tx: &Sink, req: DeltaDiscoveryRequest) {
    let bytes = req.encode_to_vec();
    let mut frame = BytesMut::with_capacity(bytes.len() + 5);
    frame.put_u8(0);
    frame.put_u32(bytes.len() as u32);
    frame.put_slice(&bytes);
    tx.send(Ok(Frame::data(frame.freeze()))).unwrap();
}

async fn next(rx: &mut mpsc::Receiver<Outgoing>) -> Outgoing {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("an answer")
        .expect("the session is open")
}

/// Type URLs other than those served are ignored: no response, nothing kept for the
/// client (neither a subscription nor an ACK), so a client cannot grow its state without
/// bound; the stream goes on.
#[tokio::test]
async fn unknown_type_urls_are_ignored_and_not_kept() {
    let Harness {
        server,
        tx,
        mut rx,
        _publish,
    } = session().await;
    for i in 0..1000 {
        send(
            &tx,
            DeltaDiscoveryRequest {
                node: (i == 0).then(|| Node {
                    id: "n".repeat(100_000),
                    ..Default::default()
                }),
                type_url: format!("type.googleapis.com/junk.T{i}"),
                ..Default::default()
            },
        );
        // An ACK of a response that never was.
        send(
            &tx,
            DeltaDiscoveryRequest {
                type_url: format!("type.googleapis.com/junk.A{i}"),
                response_nonce: "0-1".into(),
                ..Default::default()
            },
        );
    }
    send(
        &tx,
        DeltaDiscoveryRequest {
            type_url: type_url::ADDRESS.into(),
            ..Default::default()
        },
    );
    let first = next(&mut rx).await.expect("a response");
    assert_eq!(first.type_url, type_url::ADDRESS, "the first answer");
    let clients = server.clients.snapshot();
    assert_eq!(clients.len(), 1);
    let c = &clients[0];
    assert!(c.acked.is_empty(), "{:?}", c.acked.keys().take(3));
    assert_eq!(
        c.resources.keys().collect::<Vec<_>>(),
        vec![type_url::ADDRESS]
    );
    assert!(c.node_id.len() <= MAX_NAME_BYTES, "{}", c.node_id.len());
    assert!(server.clients.unknown_types_total.load(Ordering::Relaxed) >= 2000);
}

/// A name longer than any Kubernetes object can have ends the stream.
#[tokio::test]
async fn overlong_resource_names_are_refused() {
    let long = format!("shop/{}", "w".repeat(MAX_NAME_BYTES));
    for req in [
        DeltaDiscoveryRequest {
            type_url: type_url::WAYPOINT_CONFIG.into(),
            resource_names_subscribe: vec![long.clone()],
            ..Default::default()
        },
        DeltaDiscoveryRequest {
            type_url: type_url::ADDRESS.into(),
            initial_resource_versions: [(long.clone(), "1".to_owned())].into(),
            ..Default::default()
        },
        DeltaDiscoveryRequest {
            type_url: type_url::ADDRESS.into(),
            resource_names_subscribe: vec![long.clone()],
            ..Default::default()
        },
    ] {
        let Harness {
            server,
            tx,
            mut rx,
            _publish,
        } = session().await;
        send(&tx, req);
        let Err(status) = next(&mut rx).await else {
            panic!("not refused")
        };
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("bytes"), "{}", status.message());
        assert_eq!(server.clients.refused_total.load(Ordering::Relaxed), 1);
    }
}

/// A by-name subscription holds at most MAX_NAMES_PER_TYPE names.
#[tokio::test]
async fn a_subscription_names_a_bounded_number_of_resources() {
    let names = |from: usize, n: usize| -> Vec<String> {
        (from..from + n).map(|i| format!("shop/w{i}")).collect()
    };
    // Within the bound, in two requests: accepted.
    let Harness {
        tx,
        mut rx,
        _publish,
        ..
    } = session().await;
    send(
        &tx,
        DeltaDiscoveryRequest {
            type_url: type_url::WAYPOINT_CONFIG.into(),
            resource_names_subscribe: names(0, MAX_NAMES_PER_TYPE / 2),
            ..Default::default()
        },
    );
    next(&mut rx).await.expect("first response");
    send(
        &tx,
        DeltaDiscoveryRequest {
            type_url: type_url::WAYPOINT_CONFIG.into(),
            resource_names_subscribe: names(MAX_NAMES_PER_TYPE / 2, MAX_NAMES_PER_TYPE / 2),
            ..Default::default()
        },
    );
    // One more than the bound: the stream ends.
    send(
        &tx,
        DeltaDiscoveryRequest {
            type_url: type_url::WAYPOINT_CONFIG.into(),
            resource_names_subscribe: names(MAX_NAMES_PER_TYPE, 1),
            ..Default::default()
        },
    );
    let Err(status) = next(&mut rx).await else {
        panic!("not refused")
    };
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("at most"), "{}", status.message());

    // All at once, far above the bound.
    let Harness {
        tx,
        mut rx,
        _publish,
        ..
    } = session().await;
    send(
        &tx,
        DeltaDiscoveryRequest {
            type_url: type_url::WAYPOINT_CONFIG.into(),
            resource_names_subscribe: names(0, 100_000),
            ..Default::default()
        },
    );
    let Err(status) = next(&mut rx).await else {
        panic!("not refused")
    };
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}

/// `/debug/clients` tells what was last sent of each type and whether it was acknowledged:
/// the nonce and version sent, the ACK and its time, a NACK of a later response with its
/// message (what `meshctl proxy-status` shows as SYNCED / STALE).
#[tokio::test]
async fn what_was_sent_and_acknowledged_is_shown_per_type() {
    let Harness {
        server,
        tx,
        mut rx,
        _publish: publish,
    } = session().await;
    let status = |server: &XdsServer| server.clients.snapshot().remove(0);
    let before = unix_ms();
    send(
        &tx,
        DeltaDiscoveryRequest {
            node: Some(Node {
                id: "ztunnel~10.0.0.1~ztunnel.istio-system~istio-system.svc.cluster.local".into(),
                ..Default::default()
            }),
            type_url: type_url::ADDRESS.into(),
            ..Default::default()
        },
    );
    let first = next(&mut rx).await.expect("a response");
    let c = status(&server);
    assert!(c.connected_at_ms >= before.saturating_sub(1000), "{c:?}");
    let sent = &c.sent[type_url::ADDRESS];
    assert_eq!(sent.nonce, first.nonce);
    assert_eq!(sent.version, "1");
    assert!(sent.at_ms >= before, "{c:?}");
    assert!(c.acked.is_empty() && c.acked_at_ms.is_empty(), "{c:?}");
    assert!(!c.sent.contains_key(type_url::AUTHORIZATION), "{c:?}");

    // The ACK.
    send(
        &tx,
        DeltaDiscoveryRequest {
            type_url: type_url::ADDRESS.into(),
            response_nonce: first.nonce.clone(),
            ..Default::default()
        },
    );
    let c = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let c = status(&server);
            if !c.acked.is_empty() {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the ACK is recorded");
    assert_eq!(c.acked[type_url::ADDRESS], first.nonce);
    assert!(c.acked_at_ms[type_url::ADDRESS] >= c.sent[type_url::ADDRESS].at_ms);

    // A new set: a newer response is sent, not yet acknowledged.
    let mut set = ResourceSet {
        generation: 2,
        ..Default::default()
    };
    let r = Arc::new(Resource::new(
        "shop/a".into(),
        type_url::ADDRESS,
        b"x".to_vec(),
    ));
    set.by_type
        .entry(type_url::ADDRESS)
        .or_default()
        .insert(r.name.clone(), r);
    publish.send(Arc::new(set)).unwrap();
    let second = next(&mut rx).await.expect("an update");
    assert_ne!(second.nonce, first.nonce);
    let c = status(&server);
    assert_eq!(c.sent[type_url::ADDRESS].nonce, second.nonce);
    assert_eq!(c.sent[type_url::ADDRESS].version, "2");
    assert_eq!(c.acked[type_url::ADDRESS], first.nonce, "still the old ACK");

    // Its NACK.
    send(
        &tx,
        DeltaDiscoveryRequest {
            type_url: type_url::ADDRESS.into(),
            response_nonce: second.nonce.clone(),
            error_detail: Some(meshcore::api::discovery::Status {
                code: 3,
                message: "bad address".into(),
                details: Vec::new(),
            }),
            ..Default::default()
        },
    );
    let c = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let c = status(&server);
            if c.nacks > 0 {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the NACK is recorded");
    let nacked = &c.nacked[type_url::ADDRESS];
    assert_eq!(
        (nacked.count, nacked.nonce.as_str(), nacked.message.as_str()),
        (1, second.nonce.as_str(), "bad address")
    );
    assert!(nacked.at_ms >= before);
    assert_eq!(c.acked[type_url::ADDRESS], first.nonce);
    let json = serde_json::to_value(&c).unwrap();
    for key in [
        "sent",
        "ackedAtMs",
        "nacked",
        "connectedAtMs",
        "acked",
        "lastNack",
    ] {
        assert!(json.get(key).is_some(), "{key} in {json}");
    }
}
