//! The waypoint's side doors, plain HTTP/1.1: admin on 15000 (localhost: `/config_dump`,
//! `/logging`, `/quitquitquit`), metrics on 15020 (`/metrics`, `/stats/prometheus`) and readiness
//! on 15021 (`/healthz/ready`).

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
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
                async move { Ok::<_, Infallible>(route(&ctx, which, req)) }
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
            if *ctx.ready.borrow() {
                reply(StatusCode::OK, text, "ready\n")
            } else {
                reply(StatusCode::SERVICE_UNAVAILABLE, text, "not ready\n")
            }
        }
        (Endpoints::Stats, _, "/metrics" | "/stats/prometheus") => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            ctx.proxy.metrics.render() + &meshcore::process_metrics::render(),
        ),
        (Endpoints::Admin, _, "/config_dump") => {
            reply(StatusCode::OK, "application/json", config_dump(ctx))
        }
        (Endpoints::Admin, &Method::POST, "/quitquitquit") => {
            ctx.quit.notify_one();
            reply(StatusCode::OK, text, "OK\n")
        }
        (Endpoints::Admin, method, "/logging") => logging(ctx, method, req.uri().query()),
        _ => reply(StatusCode::NOT_FOUND, text, "not found\n"),
    }
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
