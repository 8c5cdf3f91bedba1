//! The echo server over real sockets: HTTP/1.1, h2c (prior knowledge), gRPC, raw TCP.

use std::net::SocketAddr;
use std::sync::Arc;

use meshctl::echo::{serve_http, serve_tcp, Identity};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn start() -> (SocketAddr, SocketAddr) {
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addrs = (http.local_addr().unwrap(), tcp.local_addr().unwrap());
    let id = Arc::new(Identity {
        pod: "cart-1".into(),
        namespace: "shop".into(),
        version: String::new(),
        fail_status: None,
    });
    tokio::spawn(serve_http(http, id));
    tokio::spawn(serve_tcp(tcp));
    addrs
}

#[tokio::test]
async fn http1_answers_with_what_it_saw() {
    let (http, _) = start().await;
    let mut s = TcpStream::connect(http).await.unwrap();
    let local = s.local_addr().unwrap();
    s.write_all(
        b"GET /hello?x=1 HTTP/1.1\r\nHost: cart.shop\r\nX-Test: yes\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    for want in [
        "Hostname=cart-1",
        "Namespace=shop",
        &format!("ServicePort={}", http.port()),
        "Method=GET",
        "URL=/hello?x=1",
        "Proto=HTTP/1.1",
        &format!("RemoteAddr={local}"),
        "RequestHeader=host:cart.shop",
        "RequestHeader=x-test:yes",
    ] {
        assert!(out.contains(want), "missing {want}: {out}");
    }
}

#[tokio::test]
async fn h2c_and_grpc_are_answered_on_the_same_port() {
    let (http, _) = start().await;
    let tcp = TcpStream::connect(http).await.unwrap();
    let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);

    let req = http::Request::get(format!("http://{http}/h2"))
        .body(())
        .unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut text = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        text.extend_from_slice(&chunk);
    }
    let text = String::from_utf8(text).unwrap();
    assert!(
        text.contains("Proto=HTTP/2.0") && text.contains("URL=/h2"),
        "{text}"
    );

    // gRPC: any method, one EchoResponse message back, then grpc-status 0.
    let req = http::Request::post(format!("http://{http}/proto.EchoTestService/Echo"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (resp, mut send) = client.send_request(req, false).unwrap();
    // EchoRequest{message: "hi"} behind the 5-byte gRPC prefix.
    send.send_data(
        bytes::Bytes::from_static(&[0, 0, 0, 0, 4, 0x0a, 2, b'h', b'i']),
        true,
    )
    .unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    let mut body = resp.into_body();
    let mut frame = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        frame.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.unwrap().unwrap();
    assert_eq!(trailers["grpc-status"], "0");
    let len = u32::from_be_bytes(frame[1..5].try_into().unwrap()) as usize;
    assert_eq!(frame.len(), 5 + len);
    assert_eq!(frame[5], 0x0a, "field 1, length-delimited");
    let text = String::from_utf8_lossy(&frame[5..]);
    assert!(
        text.contains("URL=/proto.EchoTestService/Echo")
            && text.contains("content-type:application/grpc"),
        "{text}"
    );
}

#[tokio::test]
async fn tcp_echoes_bytes_and_honours_half_close() {
    let (_, tcp) = start().await;
    let mut s = TcpStream::connect(tcp).await.unwrap();
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    s.write_all(&payload).await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, payload);
}

/// An empty MESHCTL_STATE_DIR means unset, as for every setting of the mesh's programs: the
/// default state directory is used instead of the current directory.
#[test]
fn an_empty_state_dir_variable_means_the_default() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .env("MESHCTL_STATE_DIR", "")
        .arg("status")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() || text.contains(meshctl::cluster::DEFAULT_STATE_DIR),
        "{text}"
    );
}
