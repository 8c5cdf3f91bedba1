//! A stand-in for the Kubernetes API server over real HTTP (hyper), faithful in what kube-rs'
//! watchers and istiod-lite's cluster mode use:
//!
//! - collections at their real paths (`/api/v1/pods`, `/api/v1/namespaces/NS/secrets/NAME`,
//!   `/apis/security.istio.io/v1/authorizationpolicies`, ...), cluster-wide or per namespace;
//! - a global resourceVersion bumped on every write, set on each object;
//! - list with `limit` / `continue` pages and the list's resourceVersion;
//! - watch (`?watch=true&resourceVersion=N`): every change after N as newline-delimited
//!   `{"type","object"}` events, then live ones; `BOOKMARK`s on request when the client allowed
//!   them; a resourceVersion older than the compaction point gets the `410 Expired` ERROR event
//!   that forces a relist;
//! - get, create (409 when it exists), merge-patch of `/status`, and TokenReview answering from
//!   a table of tokens;
//! - `labelSelector` (`k`, `!k`, `k=v`, `k!=v`) and `fieldSelector` (`metadata.name`,
//!   `metadata.namespace`, and a Secret's `type`) on list and watch (a watch filters each event by the object it
//!   carries; the real server also turns "stopped matching" into DELETED);
//! - server-side apply (`PATCH` with `application/apply-patch+yaml`, `fieldManager` required):
//!   creates, or removes what that manager applied before and no longer applies and merges what
//!   it applies (see [`semantics::apply_merge`]); `status` in the body is ignored; a no-op apply
//!   writes nothing (same resourceVersion, no event); `generation` moves only with the spec.
//!   Conflicts with other managers are not modelled (as if every apply were forced);
//! - replace of `/status` (`PUT`), refused with 409 when `metadata.resourceVersion` is not the
//!   current one, writing nothing when nothing changes;
//! - a Service created by a client without `clusterIP` gets one allocated;
//! - garbage collection: deleting an object deletes the objects whose `ownerReferences` name
//!   its uid (at once; the real collector does it in the background).
//!
//! Tests drive it directly: `apply`, `set_status`, `delete`, `close_watches`, `bookmark`,
//! `compact`, and read what clients did with `get` and `calls`.

mod semantics;
mod writes;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};

use semantics::Selector;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

#[derive(Clone, Debug)]
enum Signal {
    /// A change in collection `.0` at resourceVersion `.1`.
    Changed(String, u64),
    Bookmark,
    CloseWatches,
}

#[derive(Default)]
struct Collection {
    objects: BTreeMap<(String, String), Value>,
    /// (resourceVersion, event type, object), oldest first.
    log: Vec<(u64, &'static str, Value)>,
}

#[derive(Default)]
struct State {
    rv: u64,
    /// Watches from before this resourceVersion get 410 Gone.
    compacted: u64,
    collections: BTreeMap<String, Collection>,
    /// TokenReview: token → `status` to answer.
    tokens: BTreeMap<String, Value>,
    /// Watch requests seen: (collection, resourceVersion asked).
    pub watches: Vec<(String, String)>,
    lists: Vec<String>,
    /// Path prefixes (an API group's `apis/<group>/`, or one collection) answered 404, as when
    /// their CRDs are not installed.
    unserved: Vec<String>,
    /// Server-side apply: the last configuration each manager applied, per object
    /// (collection, namespace, name, manager).
    applied: BTreeMap<(String, String, String, String), Value>,
    /// Cluster IPs handed out so far.
    allocated_ips: u32,
    /// Requests seen: (method, path).
    /// (method, path, query) of every request.
    requests: Vec<(String, String, String)>,
}

#[derive(Clone)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
    signals: broadcast::Sender<Signal>,
    pub url: String,
}

/// The collection path (`api/v1/pods`) of an object, from its apiVersion and kind.
pub fn collection_of(api_version: &str, kind: &str) -> String {
    let plural = KINDS
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, p)| *p)
        .unwrap_or_else(|| panic!("the stand-in does not know kind {kind}"));
    if api_version.contains('/') {
        format!("apis/{api_version}/{plural}")
    } else {
        format!("api/{api_version}/{plural}")
    }
}

/// The apiVersion and kind of a collection's objects (the inverse of [`collection_of`]).
fn type_of(collection: &str) -> (String, String) {
    let (group_version, plural) = collection.rsplit_once('/').expect("collection path");
    let api_version = group_version
        .trim_start_matches("apis/")
        .trim_start_matches("api/");
    let kind = KINDS
        .iter()
        .find(|(_, p)| *p == plural)
        .map_or("Unknown", |(k, _)| k);
    (api_version.to_owned(), kind.to_owned())
}

const KINDS: [(&str, &str); 26] = [
    ("Namespace", "namespaces"),
    ("Pod", "pods"),
    ("Service", "services"),
    ("Secret", "secrets"),
    ("ServiceAccount", "serviceaccounts"),
    ("EndpointSlice", "endpointslices"),
    ("AuthorizationPolicy", "authorizationpolicies"),
    ("PeerAuthentication", "peerauthentications"),
    ("RequestAuthentication", "requestauthentications"),
    ("Gateway", "gateways"),
    ("HTTPRoute", "httproutes"),
    ("GRPCRoute", "grpcroutes"),
    ("ReferenceGrant", "referencegrants"),
    // policy.linkerd.io (its AuthorizationPolicy shares the plural above, in its own group).
    ("Server", "servers"),
    ("ServerAuthorization", "serverauthorizations"),
    ("MeshTLSAuthentication", "meshtlsauthentications"),
    ("NetworkAuthentication", "networkauthentications"),
    ("Deployment", "deployments"),
    ("ConfigMap", "configmaps"),
    // Stored and served as written (what a Helm chart installs); no semantics.
    ("ClusterRole", "clusterroles"),
    ("ClusterRoleBinding", "clusterrolebindings"),
    ("Role", "roles"),
    ("RoleBinding", "rolebindings"),
    ("CustomResourceDefinition", "customresourcedefinitions"),
    ("PodDisruptionBudget", "poddisruptionbudgets"),
    ("ServiceMonitor", "servicemonitors"),
];

/// A parsed request path.
struct Target {
    collection: String,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn parse_path(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (base, rest) = match *parts.first()? {
        "api" if parts.len() >= 2 => (parts[..2].join("/"), &parts[2..]),
        "apis" if parts.len() >= 3 => (parts[..3].join("/"), &parts[3..]),
        _ => return None,
    };
    let t = |plural: &str, ns: Option<&str>, name: Option<&str>, status| Target {
        collection: format!("{base}/{plural}"),
        namespace: ns.map(str::to_owned),
        name: name.map(str::to_owned),
        status,
    };
    Some(match rest {
        [plural] => t(plural, None, None, false),
        ["namespaces", name] => t("namespaces", None, Some(name), false),
        ["namespaces", ns, plural] => t(plural, Some(ns), None, false),
        ["namespaces", ns, plural, name] => t(plural, Some(ns), Some(name), false),
        ["namespaces", ns, plural, name, "status"] => t(plural, Some(ns), Some(name), true),
        _ => return None,
    })
}

fn status_error(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn reply(code: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .expect("response")
}

fn key_of(obj: &Value) -> (String, String) {
    let m = &obj["metadata"];
    (
        m["namespace"].as_str().unwrap_or_default().to_owned(),
        m["name"].as_str().unwrap_or_default().to_owned(),
    )
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

impl FakeApi {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (signals, _) = broadcast::channel(4096);
        let api = Self {
            state: Arc::default(),
            signals,
            url,
        };
        let server = api.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let api = server.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let api = api.clone();
                        async move { Ok::<_, Infallible>(api.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        api
    }

    /// A kube client for this server.
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url.parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    /// Creates or replaces an object (with `apiVersion`, `kind`, `metadata.name`, and for
    /// namespaced kinds `metadata.namespace`).
    pub fn apply(&self, obj: Value) -> u64 {
        self.write(obj, true)
    }

    /// Stores a write; `new_generation`: a spec change (status writes keep the generation).
    fn write(&self, mut obj: Value, new_generation: bool) -> u64 {
        let collection = collection_of(
            obj["apiVersion"].as_str().unwrap(),
            obj["kind"].as_str().unwrap(),
        );
        let mut s = self.state.lock().unwrap();
        s.rv += 1;
        let rv = s.rv;
        let key = key_of(&obj);
        let c = s.collections.entry(collection.clone()).or_default();
        let existed = c.objects.get(&key).cloned();
        let meta = obj["metadata"].as_object_mut().unwrap();
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        let generation = existed
            .as_ref()
            .and_then(|e| e["metadata"]["generation"].as_i64())
            .unwrap_or(0)
            + i64::from(new_generation);
        meta.insert("generation".into(), json!(generation));
        // An update keeps the object's identity.
        match existed.as_ref().map(|e| e["metadata"]["uid"].clone()) {
            Some(uid) if !uid.is_null() => {
                meta.insert("uid".into(), uid);
            }
            _ => {
                meta.entry("uid")
                    .or_insert_with(|| json!(format!("uid-{}-{}-{rv}", key.0, key.1)));
            }
        }
        let event = if existed.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        c.objects.insert(key, obj.clone());
        c.log.push((rv, event, obj));
        drop(s);
        let _ = self.signals.send(Signal::Changed(collection, rv));
        rv
    }

    pub fn delete(&self, api_version: &str, kind: &str, namespace: &str, name: &str) {
        let collection = collection_of(api_version, kind);
        let mut s = self.state.lock().unwrap();
        s.rv += 1;
        let rv = s.rv;
        let c = s.collections.entry(collection.clone()).or_default();
        let ns = if kind == "Namespace" { "" } else { namespace };
        let Some(mut obj) = c.objects.remove(&(ns.to_owned(), name.to_owned())) else {
            return;
        };
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let uid = obj["metadata"]["uid"].clone();
        c.log.push((rv, "DELETED", obj));
        // The garbage collector: objects owned by this one go too.
        let dependents: Vec<(String, String, String, String)> = s
            .collections
            .iter()
            .flat_map(|(collection, c)| c.objects.values().map(move |o| (collection, o)))
            .filter(|(_, o)| {
                !uid.is_null()
                    && o["metadata"]["ownerReferences"]
                        .as_array()
                        .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid))
            })
            .map(|(collection, o)| {
                let (api_version, kind) = type_of(collection);
                let (ns, name) = key_of(o);
                (api_version, kind, ns, name)
            })
            .collect();
        drop(s);
        let _ = self.signals.send(Signal::Changed(collection, rv));
        for (api_version, kind, ns, name) in dependents {
            self.delete(&api_version, &kind, &ns, &name);
        }
    }

    /// Sets an object's `status` (as its controller would, e.g. a Deployment's ready replicas).
    pub fn set_status(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
        status: Value,
    ) {
        let mut obj = self
            .get(api_version, kind, namespace, name)
            .unwrap_or_else(|| panic!("no {kind} {namespace}/{name}"));
        obj["status"] = status;
        self.write(obj, false);
    }

    /// How many requests with `method` went to a path containing `part`.
    pub fn calls(&self, method: &str, part: &str) -> usize {
        let s = self.state.lock().unwrap();
        s.requests
            .iter()
            .filter(|(m, p, _)| m == method && p.contains(part))
            .count()
    }

    /// Every request so far: (method, path, query).
    pub fn requests(&self) -> Vec<(String, String, String)> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Deletes an object as if its event had been lost (no watch sees it; with [`Self::compact`]
    /// only a relist can notice).
    pub fn delete_unseen(&self, api_version: &str, kind: &str, namespace: &str, name: &str) {
        let mut s = self.state.lock().unwrap();
        s.rv += 1;
        if let Some(c) = s.collections.get_mut(&collection_of(api_version, kind)) {
            c.objects.remove(&(namespace.to_owned(), name.to_owned()));
        }
    }

    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let s = self.state.lock().unwrap();
        let ns = if kind == "Namespace" { "" } else { namespace };
        s.collections
            .get(&collection_of(api_version, kind))?
            .objects
            .get(&(ns.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Forgets history: watches resuming from before now get 410 Gone.
    pub fn compact(&self) {
        let mut s = self.state.lock().unwrap();
        s.compacted = s.rv + 1;
        for c in s.collections.values_mut() {
            c.log.clear();
        }
    }

    /// Ends every open watch, as the API server does at its timeout; clients resume.
    pub fn close_watches(&self) {
        let _ = self.signals.send(Signal::CloseWatches);
    }

    /// Sends a BOOKMARK with the current resourceVersion on watches that allow them.
    pub fn bookmark(&self) {
        let _ = self.signals.send(Signal::Bookmark);
    }

    /// TokenReview answers `status` for `token`.
    pub fn add_token(&self, token: &str, status: Value) {
        self.state
            .lock()
            .unwrap()
            .tokens
            .insert(token.to_owned(), status);
    }

    /// Watch requests so far: (collection, resourceVersion).
    pub fn watches(&self) -> Vec<(String, String)> {
        self.state.lock().unwrap().watches.clone()
    }

    /// Answers 404 for the API group `group` (its CRDs "not installed"), or serves it again.
    pub fn serve_group(&self, group: &str, served: bool) {
        self.serve_path(&format!("/apis/{group}/"), served);
    }

    /// Answers 404 for every path starting with `prefix` (one kind's collection: its CRD "not
    /// installed"), or serves it again.
    pub fn serve_path(&self, prefix: &str, served: bool) {
        let prefix = prefix.to_owned();
        let mut s = self.state.lock().unwrap();
        s.unserved.retain(|g| *g != prefix);
        if !served {
            s.unserved.push(prefix);
        }
    }

    /// How many times `collection` was listed.
    pub fn lists(&self, collection: &str) -> usize {
        let s = self.state.lock().unwrap();
        s.lists.iter().filter(|c| *c == collection).count()
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let query = semantics::query(req.uri().query());
        let content_type = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let unserved = {
            let mut s = self.state.lock().unwrap();
            s.requests.push((
                req.method().to_string(),
                req.uri().path().to_owned(),
                req.uri().query().unwrap_or_default().to_owned(),
            ));
            s.unserved.iter().any(|g| req.uri().path().starts_with(g))
        };
        if unserved {
            return reply(
                StatusCode::NOT_FOUND,
                &status_error(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                ),
            );
        }
        let Some(target) = parse_path(req.uri().path()) else {
            return reply(
                StatusCode::NOT_FOUND,
                &status_error(404, "NotFound", "no such path"),
            );
        };
        let method = req.method().clone();
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        match (method, &target.name) {
            (Method::GET, None) if query.get("watch").is_some_and(|w| w == "true" || w == "1") => {
                self.watch(&target, &query)
            }
            (Method::GET, None) => self.list(&target, &query),
            (Method::GET, Some(name)) => {
                let s = self.state.lock().unwrap();
                let ns = target.namespace.clone().unwrap_or_default();
                match s
                    .collections
                    .get(&target.collection)
                    .and_then(|c| c.objects.get(&(ns, name.clone())))
                {
                    Some(obj) => reply(StatusCode::OK, obj),
                    None => reply(
                        StatusCode::NOT_FOUND,
                        &status_error(404, "NotFound", &format!("{name} not found")),
                    ),
                }
            }
            (Method::POST, None) => {
                let obj: Value = serde_json::from_slice(&body).unwrap_or_default();
                if target.collection == "apis/authentication.k8s.io/v1/tokenreviews" {
                    return self.token_review(obj);
                }
                let mut obj = obj;
                if let Some(ns) = &target.namespace {
                    obj["metadata"]["namespace"] = json!(ns);
                }
                if self
                    .get(
                        obj["apiVersion"].as_str().unwrap_or("v1"),
                        obj["kind"].as_str().unwrap_or("Secret"),
                        target.namespace.as_deref().unwrap_or_default(),
                        obj["metadata"]["name"].as_str().unwrap_or_default(),
                    )
                    .is_some()
                {
                    return reply(
                        StatusCode::CONFLICT,
                        &status_error(409, "AlreadyExists", "already exists"),
                    );
                }
                self.allocate_cluster_ip(&mut obj);
                self.apply(obj.clone());
                let key = key_of(&obj);
                let s = self.state.lock().unwrap();
                reply(
                    StatusCode::CREATED,
                    &s.collections[&target.collection].objects[&key],
                )
            }
            (Method::PATCH, Some(name)) if target.status => {
                let patch: Value = serde_json::from_slice(&body).unwrap_or_default();
                let ns = target.namespace.clone().unwrap_or_default();
                let current = {
                    let s = self.state.lock().unwrap();
                    s.collections
                        .get(&target.collection)
                        .and_then(|c| c.objects.get(&(ns, name.clone())))
                        .cloned()
                };
                let Some(mut obj) = current else {
                    return reply(
                        StatusCode::NOT_FOUND,
                        &status_error(404, "NotFound", &format!("{name} not found")),
                    );
                };
                if let Some(status) = patch.get("status") {
                    let target = obj
                        .as_object_mut()
                        .unwrap()
                        .entry("status")
                        .or_insert(json!({}));
                    merge_patch(target, status);
                }
                let key = key_of(&obj);
                self.write(obj, false);
                let s = self.state.lock().unwrap();
                reply(
                    StatusCode::OK,
                    &s.collections[&target.collection].objects[&key],
                )
            }
            (Method::PATCH, Some(name)) if content_type == "application/apply-patch+yaml" => {
                self.server_side_apply(&target, name, &query, &body)
            }
            (Method::PUT, Some(name)) if target.status => self.replace_status(&target, name, &body),
            _ => reply(
                StatusCode::METHOD_NOT_ALLOWED,
                &status_error(405, "MethodNotAllowed", "not supported by the stand-in"),
            ),
        }
    }

    fn token_review(&self, review: Value) -> Response<Body> {
        let token = review["spec"]["token"].as_str().unwrap_or_default();
        let status = self
            .state
            .lock()
            .unwrap()
            .tokens
            .get(token)
            .cloned()
            .unwrap_or_else(|| json!({"authenticated": false, "error": "invalid bearer token"}));
        reply(
            StatusCode::CREATED,
            &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                    "metadata": {}, "spec": review["spec"], "status": status}),
        )
    }

    fn list(&self, target: &Target, query: &BTreeMap<String, String>) -> Response<Body> {
        let selector = Selector::from_query(query);
        let mut s = self.state.lock().unwrap();
        s.lists.push(target.collection.clone());
        let rv = s.rv;
        let items: Vec<Value> = s
            .collections
            .get(&target.collection)
            .map(|c| {
                c.objects
                    .values()
                    .filter(|o| {
                        target
                            .namespace
                            .as_ref()
                            .is_none_or(|ns| o["metadata"]["namespace"] == json!(ns))
                            && selector.matches(o)
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let start: usize = query
            .get("continue")
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let limit: usize = query
            .get("limit")
            .and_then(|l| l.parse().ok())
            .filter(|l| *l > 0)
            .unwrap_or(usize::MAX);
        let page: Vec<Value> = items.iter().skip(start).take(limit).cloned().collect();
        let next = start + page.len();
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if next < items.len() {
            metadata["continue"] = json!(next.to_string());
        }
        reply(
            StatusCode::OK,
            &json!({"apiVersion": "v1", "kind": "List", "metadata": metadata, "items": page}),
        )
    }

    fn watch(&self, target: &Target, query: &BTreeMap<String, String>) -> Response<Body> {
        let asked = query.get("resourceVersion").cloned().unwrap_or_default();
        let bookmarks = query
            .get("allowWatchBookmarks")
            .is_some_and(|b| b == "true");
        let mut signals = self.signals.subscribe();
        let (tx, rx) = mpsc::unbounded_channel::<Value>();
        let collection = target.collection.clone();
        let namespace = target.namespace.clone();
        let selector = Selector::from_query(query);
        let in_scope = move |o: &Value| {
            namespace
                .as_ref()
                .is_none_or(|ns| o["metadata"]["namespace"] == json!(ns))
                && selector.matches(o)
        };
        let mut sent_rv;
        {
            let mut s = self.state.lock().unwrap();
            s.watches.push((collection.clone(), asked.clone()));
            let from: u64 = asked.parse().unwrap_or(0);
            sent_rv = s.rv;
            if from != 0 && from + 1 < s.compacted {
                let _ = tx.send(json!({"type": "ERROR", "object":
                    status_error(410, "Expired", &format!("too old resource version: {from} ({})", s.compacted))}));
                drop(tx);
                return stream_reply(rx);
            }
            let c = s.collections.entry(collection.clone()).or_default();
            if from == 0 {
                // "Any" semantics: the current state as ADDED events.
                for o in c.objects.values().filter(|o| in_scope(o)) {
                    let _ = tx.send(json!({"type": "ADDED", "object": o}));
                }
            } else {
                for (_, event, o) in c.log.iter().filter(|(rv, _, o)| *rv > from && in_scope(o)) {
                    let _ = tx.send(json!({"type": event, "object": o}));
                }
            }
        }
        let state = self.state.clone();
        tokio::spawn(async move {
            loop {
                let signal = match signals.recv().await {
                    Ok(s) => s,
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => return,
                };
                match signal {
                    Signal::CloseWatches => return,
                    Signal::Bookmark if bookmarks => {
                        let rv = state.lock().unwrap().rv;
                        let (api_version, kind) = type_of(&collection);
                        let _ = tx.send(json!({"type": "BOOKMARK", "object": {
                            "apiVersion": api_version, "kind": kind,
                            "metadata": {"resourceVersion": rv.to_string()}}}));
                    }
                    Signal::Bookmark => {}
                    Signal::Changed(c, rv) if c == collection && rv > sent_rv => {
                        let s = state.lock().unwrap();
                        let events: Vec<Value> = s
                            .collections
                            .get(&collection)
                            .into_iter()
                            .flat_map(|c| c.log.iter())
                            .filter(|(r, _, o)| *r > sent_rv && *r <= rv && in_scope(o))
                            .map(|(_, event, o)| json!({"type": event, "object": o}))
                            .collect();
                        sent_rv = rv;
                        drop(s);
                        for e in events {
                            if tx.send(e).is_err() {
                                return;
                            }
                        }
                    }
                    Signal::Changed(..) => {}
                }
            }
        });
        stream_reply(rx)
    }
}

fn stream_reply(rx: mpsc::UnboundedReceiver<Value>) -> Response<Body> {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let event = rx.recv().await?;
        let line = Bytes::from(format!("{event}\n"));
        Some((Ok::<_, Infallible>(Frame::data(line)), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(StreamBody::new(stream).boxed())
        .expect("response")
}
