//! One access log line per request on stdout: who (both identities), what (method, path,
//! protocol), where (route, upstream), the policy decision, the status with Envoy's response
//! flag, sizes and duration. `text` for people, `json` for collectors.

use std::net::SocketAddr;
use std::time::SystemTime;

use serde::Serialize;

use crate::proxy::Client;
use crate::settings::AccessLogFormat;

#[derive(Debug, Default, Serialize)]
pub struct AccessEntry {
    pub start_time: String,
    pub method: String,
    pub path: String,
    pub protocol: &'static str,
    pub authority: String,
    pub status: u16,
    pub grpc_status: Option<u32>,
    /// Envoy's response flag: `-`, `NR` (no route), `UH` (no healthy upstream), `UF` (connect
    /// failure), `UC` (connection reset), `UT` (timeout), `DENY` (policy).
    pub flag: &'static str,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub duration_ms: f64,
    pub attempts: u32,
    pub source_principal: String,
    pub source_address: String,
    pub destination: String,
    /// The route (`namespace/name`) that matched, if any.
    pub route: String,
    pub upstream: String,
    /// The authorization decision, naming the deciding policy and rule.
    pub policy: String,
    pub request_id: String,
}

impl AccessEntry {
    pub fn start(
        client: &Client,
        destination: SocketAddr,
        parts: &http::request::Parts,
        grpc: bool,
    ) -> Self {
        Self {
            start_time: meshcore::certs::rfc3339(SystemTime::now()),
            method: parts.method.to_string(),
            path: parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default(),
            protocol: match (grpc, parts.version) {
                (true, _) => "gRPC",
                (false, http::Version::HTTP_2) => "HTTP/2",
                _ => "HTTP/1.1",
            },
            authority: parts
                .uri
                .authority()
                .map(|a| a.to_string())
                .or_else(|| {
                    parts
                        .headers
                        .get(http::header::HOST)
                        .and_then(|h| h.to_str().ok())
                        .map(str::to_owned)
                })
                .unwrap_or_default(),
            flag: "-",
            source_principal: client
                .identity
                .as_deref()
                .map_or_else(|| "-".to_owned(), |i| i.to_string()),
            source_address: client.addr.map(|a| a.to_string()).unwrap_or_default(),
            destination: destination.to_string(),
            ..Default::default()
        }
    }
}

pub fn write(format: AccessLogFormat, e: &AccessEntry) {
    match format {
        AccessLogFormat::Off => {}
        AccessLogFormat::Json => {
            if let Ok(line) = serde_json::to_string(e) {
                println!("{line}");
            }
        }
        AccessLogFormat::Text => println!(
            "[{}] \"{} {} {}\" {} {} {} {} {:.2}ms \"{}\" \"{}\" \"{}\" route={} policy=\"{}\" id={}",
            e.start_time,
            e.method,
            e.path,
            e.protocol,
            e.status,
            e.flag,
            e.request_bytes,
            e.response_bytes,
            e.duration_ms,
            e.authority,
            e.source_principal,
            e.upstream,
            if e.route.is_empty() { "-" } else { &e.route },
            e.policy,
            e.request_id,
        ),
    }
}
