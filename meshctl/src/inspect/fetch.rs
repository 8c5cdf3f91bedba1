//! Reading the debug endpoints: a plain HTTP/1.0 GET, either from this process's network
//! namespace or from inside one of the local cluster's.
//!
//! istiod-lite answers `/debug/*` to loopback clients only. In the local cluster it listens on
//! the fabric's address (172.30.0.1:15014) inside the fabric namespace, so the request is made
//! from inside that namespace with its source bound to 127.0.0.1: a loopback client of the
//! same stack, as `kubectl port-forward` would be in a real cluster.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::cluster::netns;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a request is made from.
#[derive(Debug, Clone)]
pub enum From {
    /// This process's own network namespace.
    Here,
    /// Inside a named network namespace, from a loopback source address.
    Netns(String),
}

/// `GET path` from `from` to `addr`; the body of a 200 answer, else an error naming the
/// endpoint and carrying the answer's first line of text.
pub fn get(from: &From, addr: SocketAddr, path: &str) -> Result<String, String> {
    let what = format!("http://{addr}{path}");
    let raw = match from {
        From::Here => exchange(addr, path, false),
        From::Netns(ns) => {
            let path = path.to_owned();
            netns::run_in(ns, move || exchange(addr, &path, true))
        }
    }
    .map_err(|e| format!("{what}: {e}"))?;
    let (status, body) = parse(&raw).map_err(|e| format!("{what}: {e}"))?;
    if status != 200 {
        let first = body.lines().next().unwrap_or_default();
        return Err(format!("{what}: HTTP {status}: {first}"));
    }
    Ok(body)
}

/// `HOST:PORT` (a name or an address) as a socket address.
pub fn resolve(target: &str) -> Result<SocketAddr, String> {
    target
        .to_socket_addrs()
        .map_err(|e| format!("{target}: {e} (expected HOST:PORT)"))?
        .next()
        .ok_or_else(|| format!("{target}: no address"))
}

fn exchange(addr: SocketAddr, path: &str, loopback_source: bool) -> io::Result<Vec<u8>> {
    let mut s = if loopback_source && addr.is_ipv4() {
        use socket2::{Domain, Protocol, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
        socket.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())?;
        socket.connect_timeout(&addr.into(), CONNECT_TIMEOUT)?;
        TcpStream::from(socket)
    } else {
        TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?
    };
    s.set_read_timeout(Some(READ_TIMEOUT))?;
    s.set_write_timeout(Some(READ_TIMEOUT))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    Ok(raw)
}

/// An HTTP/1.x answer read whole: (status, body).
fn parse(raw: &[u8]) -> Result<(u16, String), String> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or("not an HTTP answer (no end of headers)")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .filter(|_| head.starts_with("HTTP/"))
        .ok_or("not an HTTP answer")?;
    Ok((status, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_parsed() {
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\ncontent-type: x\r\n\r\n{\"a\":1}"),
            Ok((200, "{\"a\":1}".to_owned()))
        );
        assert_eq!(
            parse(b"HTTP/1.1 403 Forbidden\r\n\r\nloopback only\n"),
            Ok((403, "loopback only\n".to_owned()))
        );
        assert!(parse(b"SSH-2.0-OpenSSH\r\n").is_err());
        assert!(parse(b"garbage\r\n\r\n").is_err());
    }

    /// A GET against a one-shot server on loopback: 200 gives the body; anything else is an
    /// error that carries the answer's first line.
    #[test]
    fn get_reads_the_body_of_a_200_only() {
        for (answer, expected) in [
            ("HTTP/1.1 200 OK\r\n\r\nhello", Ok("hello".to_owned())),
            (
                "HTTP/1.1 403 Forbidden\r\n\r\nloopback clients only\nmore",
                Err("HTTP 403: loopback clients only".to_owned()),
            ),
        ] {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let server = std::thread::spawn(move || {
                let (mut s, _) = listener.accept().unwrap();
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).unwrap();
                let request = String::from_utf8_lossy(&buf[..n]).into_owned();
                s.write_all(answer.as_bytes()).unwrap();
                request
            });
            let got = get(&From::Here, addr, "/debug/clients");
            let request = server.join().unwrap();
            assert!(
                request.starts_with("GET /debug/clients HTTP/1.0\r\n"),
                "{request}"
            );
            match (got, expected) {
                (Ok(body), Ok(want)) => assert_eq!(body, want),
                (Err(e), Err(want)) => assert!(e.ends_with(&want), "{e}"),
                (got, want) => panic!("{got:?}, expected {want:?}"),
            }
        }
        assert!(resolve("127.0.0.1:15000").is_ok());
        assert!(resolve("nonsense").is_err());
    }
}
