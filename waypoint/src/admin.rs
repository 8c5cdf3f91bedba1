//! The waypoint's side doors, plain HTTP/1.1: admin on 15000 (localhost: `/config_dump`,
//! `/flows` (request records, `crate::flows`), `/authz` (the L7 policy decision for a described
//! request, explained), `/logging`, `/quitquitquit`), metrics on 15020 (`/metrics`,
//! `/stats/prometheus`) and readiness on 15021 (`/healthz/ready`).

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use meshcore::certs::CertManager;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

use crate::config::file::FileStatus;
use crate::config::xds::XdsStatus;
use crate::proxy::Proxy;

/// Changes the log filter at run time (the process owns the subscriber).
pub trait LogControl: Send + Sync {
    fn current(&self) -> String;
    fn set(&self, filter: &str) -> Result<(), String>;
}

pub struct AdminContext {
    pub proxy: Arc<Proxy>,
    /// Gateway mode's listener sockets (none bound without an ingress configuration).
    pub gateway: Arc<crate::gateway::listeners::GatewayListeners>,
    pub certs: Arc<CertManager>,
    pub file: Option<Arc<Mutex<FileStatus>>>,
    /// The xDS source's state, when the configuration comes from the control plane.
    pub xds: Option<Arc<Mutex<XdsStatus>>>,
    pub log: Option<Arc<dyn LogControl>>,
    pub quit: Arc<Notify>,
    pub ready: watch::Receiver<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoints {
    Admin,
    Stats,
    Readiness,
}

/// Serves `which` on `listener` until `shutdown` flips to true.
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<AdminContext>,
    which: Endpoints,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let tcp = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(_) => continue,
            },
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let ctx = ctx.clone();
                async move {
                    Ok::<_, Infallible>(
                        if which == Endpoints::Admin && req.uri().path() == "/flows" {
                            flows(&ctx, req.uri().query())
                        } else {
                            route(&ctx, which, req).map(Either::Left)
                        },
                    )
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .expect("static response")
}

fn route(ctx: &AdminContext, which: Endpoints, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let text = "text/plain; charset=utf-8";
    match (which, req.method(), req.uri().path()) {
        (Endpoints::Readiness, _, "/healthz/ready") => {
            // Ready: a configuration in force, not draining, every gateway port bound.
            if *ctx.ready.borrow() && ctx.gateway.ready() {
                reply(StatusCode::OK, text, "ready\n")
            } else {
                reply(StatusCode::SERVICE_UNAVAILABLE, text, "not ready\n")
            }
        }
        (Endpoints::Stats, _, "/metrics" | "/stats/prometheus") => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            ctx.proxy.metrics.render()
                + &format!(
                    "# HELP waypoint_flow_events_dropped_total Request records a slow /flows reader lost.\n# TYPE waypoint_flow_events_dropped_total counter\nwaypoint_flow_events_dropped_total {}\n",
                    ctx.proxy.flows.dropped()
                )
                + &meshcore::process_metrics::render(),
        ),
        (Endpoints::Admin, _, "/config_dump") => {
            reply(StatusCode::OK, "application/json", config_dump(ctx))
        }
        (Endpoints::Admin, &Method::POST, "/quitquitquit") => {
            ctx.quit.notify_one();
            reply(StatusCode::OK, text, "OK\n")
        }
        (Endpoints::Admin, method, "/logging") => logging(ctx, method, req.uri().query()),
        (Endpoints::Admin, _, "/authz") => authz(ctx, req.uri().query()),
        _ => reply(StatusCode::NOT_FOUND, text, "not found\n"),
    }
}

type AdminBody = Either<Full<Bytes>, meshcore::flow_ring::FlowBody>;

/// `GET /flows[?follow=true&limit=N&namespace=&workload=&from=&to=&verdict=]`: the recent
/// request records that match as newline-delimited JSON (the last `limit`, default all kept),
/// then, with `follow`, every new one. `to=` and `workload=` also match the addressed Service
/// (`namespace/name` or `name`). A reader that falls behind gets `{"dropped":N}` (also counted
/// in `waypoint_flow_events_dropped_total`).
fn flows(ctx: &Arc<AdminContext>, query: Option<&str>) -> Response<AdminBody> {
    let query = query.unwrap_or("");
    let parsed = crate::flows::Filter::from_query(query)
        .and_then(|f| Ok((f, meshcore::flow_ring::StreamRequest::from_query(query)?)));
    let (filter, request) = match parsed {
        Ok(p) => p,
        Err(e) => {
            return reply(
                StatusCode::BAD_REQUEST,
                "text/plain; charset=utf-8",
                format!("{e}\n"),
            )
            .map(Either::Left)
        }
    };
    let proxy = ctx.proxy.clone();
    let body = ctx.proxy.flows.serve(
        request,
        move |r| filter.matches(r),
        move |n| proxy.flows.lost(n),
    );
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(Either::Right(body))
        .expect("static response")
}

/// `GET /authz?destination=IP:PORT&source=IP&principal=TD/ns/NS/sa/SA&method=GET&path=/p`
/// `[&host=H][&header=NAME:VALUE...]`: the decision this waypoint's L7 policies would take for
/// such a request (`L7Policies::decide`), traced policy by policy and rule by rule
/// (`authz::explain`). `destination` is the address the client dialled (a Service VIP:port or a
/// pod's); the request is as it arrives here, before routing, as the data path decides it.
fn authz(ctx: &AdminContext, query: Option<&str>) -> Response<Full<Bytes>> {
    use meshcore::flow_ring::{query_param, query_params};
    let text = "text/plain; charset=utf-8";
    let query = query.unwrap_or("");
    let param = |key: &str| query_param(query, key);
    let bad = |what: String| reply(StatusCode::BAD_REQUEST, text, format!("{what}\n"));
    let Some(destination) = param("destination").and_then(|d| d.parse::<SocketAddr>().ok()) else {
        return bad("destination=IP:PORT is required".into());
    };
    let source_ip = match param("source").map(|s| s.parse::<IpAddr>()) {
        None => None,
        Some(Ok(ip)) => Some(ip),
        Some(Err(_)) => return bad("source: want an IP address".into()),
    };
    let identity = match param("principal") {
        None => None,
        Some(p) => match meshcore::identity::SpiffeId::from_principal(&p) {
            Ok(id) => Some(id),
            Err(e) => return bad(format!("principal={p}: {e}")),
        },
    };
    let method = match param("method")
        .unwrap_or_else(|| "GET".into())
        .parse::<Method>()
    {
        Ok(m) => m,
        Err(_) => return bad("method: not an HTTP method".into()),
    };
    let path = param("path").unwrap_or_else(|| "/".into());
    let mut headers = http::HeaderMap::new();
    for h in query_params(query, "header") {
        let parsed = h.split_once(':').and_then(|(k, v)| {
            Some((
                http::HeaderName::from_bytes(k.trim().as_bytes()).ok()?,
                http::HeaderValue::from_str(v.trim()).ok()?,
            ))
        });
        match parsed {
            Some((k, v)) => {
                headers.append(k, v);
            }
            None => return bad(format!("header={h}: want NAME:VALUE")),
        }
    }
    let snapshot = ctx.proxy.store.load();
    let Some(target) = snapshot.resolve(destination) else {
        return reply(
            StatusCode::NOT_FOUND,
            text,
            format!("no Service or pod at {destination} in this waypoint's view\n"),
        );
    };
    let service = match &target {
        crate::config::Target::Service { service, .. }
        | crate::config::Target::Workload { service, .. } => *service,
    };
    let host = param("host").unwrap_or_else(|| match destination.port() {
        80 => service.hostname.clone(),
        port => format!("{}:{port}", service.hostname),
    });
    let attrs = crate::authz::RequestAttrs {
        service: Some((&service.key.namespace, &service.key.name)),
        source: identity.as_ref(),
        source_ip,
        destination_ip: destination.ip(),
        destination_port: destination.port(),
        sni: None,
        http: Some(crate::authz::HttpAttrs {
            method: &method,
            path: &path,
            host: &host,
            headers: &headers,
            auth: None,
        }),
    };
    let explanation = snapshot.policies.explain(&attrs);
    let body = serde_json::json!({
        "waypoint": format!("{}/{}", ctx.proxy.store.me.namespace, ctx.proxy.store.me.name),
        "identity": ctx.proxy.identity.to_string(),
        "service": format!("{}/{}", service.key.namespace, service.key.name),
        "request": {
            "method": method.as_str(),
            "path": path,
            "host": host,
            "headers": headers.iter().map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("?"))).collect::<Vec<_>>(),
        },
        "explanation": explanation,
        "text": crate::authz::explain::text(&explanation),
    });
    reply(
        StatusCode::OK,
        "application/json",
        serde_json::to_vec_pretty(&body).expect("json"),
    )
}

/// `GET /logging` shows the filter; `POST /logging?level=debug` (or `?filter=...`) sets it.
fn logging(ctx: &AdminContext, method: &Method, query: Option<&str>) -> Response<Full<Bytes>> {
    let text = "text/plain; charset=utf-8";
    let Some(log) = &ctx.log else {
        return reply(
            StatusCode::NOT_IMPLEMENTED,
            text,
            "log level is not adjustable here\n",
        );
    };
    if method == Method::POST {
        let wanted = query.into_iter().flat_map(|q| q.split('&')).find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            matches!(k, "level" | "filter").then(|| v.to_owned())
        });
        let Some(filter) = wanted else {
            return reply(
                StatusCode::BAD_REQUEST,
                text,
                "use ?level=<level> or ?filter=<RUST_LOG filter>\n",
            );
        };
        if let Err(e) = log.set(&filter) {
            return reply(StatusCode::BAD_REQUEST, text, format!("{e}\n"));
        }
    }
    reply(
        StatusCode::OK,
        text,
        format!("current log filter: {}\n", log.current()),
    )
}

/// What the waypoint applies: its identity and certificate, services with endpoints, the route
/// table as compiled, route statuses, policies, notes, recent denials and the config source.
fn config_dump(ctx: &AdminContext) -> String {
    let snapshot = ctx.proxy.store.load();
    let services: Vec<_> = snapshot
        .services
        .iter()
        .map(|s| {
            serde_json::json!({
                "namespace": s.key.namespace,
                "name": s.key.name,
                "hostname": s.hostname,
                "ports": s.ports,
                "endpoints": s.endpoints,
            })
        })
        .collect();
    let routes: Vec<_> = snapshot
        .route_status
        .iter()
        .map(|r| {
            serde_json::json!({
                "route": r.route,
                "parent": r.parent,
                "accepted": r.accepted,
                "resolvedRefs": r.resolved_refs,
                "reason": r.reason,
                "message": r.message,
            })
        })
        .collect();
    let notes: Vec<_> = snapshot
        .policy_notes
        .iter()
        .map(|n| serde_json::json!({"policy": n.policy, "message": n.message}))
        .collect();
    let dump = serde_json::json!({
        "waypoint": {
            "namespace": ctx.proxy.store.me.namespace,
            "name": ctx.proxy.store.me.name,
            "identity": ctx.proxy.identity.to_string(),
        },
        "certificates": ctx.certs.status(),
        "configSource": match (&ctx.file, &ctx.xds) {
            (Some(f), _) => serde_json::json!(f.lock().expect("status lock").clone()),
            (None, Some(x)) => serde_json::json!(x.lock().expect("status lock").clone()),
            (None, None) => serde_json::Value::Null,
        },
        "loadedAt": meshcore::certs::rfc3339(snapshot.loaded_at),
        "services": services,
        "gateway": snapshot.ingress.as_ref().map(|i| {
            let mut dump = i.dump();
            dump["sockets"] = ctx.gateway.dump();
            dump
        }),
        "routeTable": snapshot.routes.dump(),
        "routeStatus": routes,
        "policies": snapshot.policies.dump(),
        "policyNotes": notes,
        "requestAuthentication": snapshot.authn.dump(),
        "requestAuthenticationNotes": snapshot.authn_notes.iter().map(|n| serde_json::json!({"policy": n.policy, "message": n.message})).collect::<Vec<_>>(),
        "recentDenials": ctx.proxy.recent_denials(),
        "upstreamConnectionsPooled": ctx.proxy.upstream.pooled(),
    });
    serde_json::to_string_pretty(&dump).unwrap_or_default()
}
