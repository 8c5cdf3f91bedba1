//! Status conditions on policies (cluster mode): after each translation every
//! AuthorizationPolicy and PeerAuthentication carries a `ZtunnelAccepted` condition, the type
//! Istio uses for what ztunnel enforces:
//!
//! - `True` / `Accepted`: honoured as written;
//! - `False` / `UnsupportedValue`: honoured in part (e.g. HTTP rules ztunnel cannot see); the
//!   message says which fields and what was done instead;
//! - `False` / `InvalidValue`: refused; the previous good version stays in force.
//!
//! Writes go through the `/status` subresource from a background task, only when a condition
//! changed, so a cluster of a thousand policies is not rewritten on every pod change.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::mpsc;

use crate::cluster::{key, AuthorizationPolicy, PeerAuthentication};
use crate::crd::security::{IstioCondition, IstioStatus};
use crate::pipeline::{Object, Pipeline};
use crate::translate::Note;

pub const CONDITION: &str = "ZtunnelAccepted";

/// `Kind namespace/name`, the way notes name objects.
type ObjectName = String;

struct Write {
    kind: &'static str,
    namespace: String,
    name: String,
    status: IstioStatus,
}

pub struct StatusWriter {
    writes: mpsc::UnboundedSender<Write>,
    /// Latest generation seen per object (also of refused versions).
    generations: Mutex<HashMap<ObjectName, i64>>,
    /// What was last written per object: (status, reason, message).
    written: Mutex<HashMap<ObjectName, IstioCondition>>,
}

/// The condition for an object, from the notes and refusals about it.
pub fn condition(notes: &[&Note], refused: Option<&Note>) -> IstioCondition {
    let (status, reason, message) = match (refused, notes) {
        (Some(r), _) => ("False", "InvalidValue", r.message.clone()),
        (None, []) => ("True", "Accepted", String::new()),
        (None, notes) => (
            "False",
            "UnsupportedValue",
            notes
                .iter()
                .map(|n| n.message.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        ),
    };
    IstioCondition {
        type_: CONDITION.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        last_transition_time: None,
    }
}

impl StatusWriter {
    pub fn start(client: Client) -> Self {
        let (writes, mut rx) = mpsc::unbounded_channel::<Write>();
        tokio::spawn(async move {
            while let Some(w) = rx.recv().await {
                let patch = Patch::Merge(json!({ "status": w.status }));
                let params = PatchParams::default();
                let result = match w.kind {
                    "AuthorizationPolicy" => {
                        Api::<AuthorizationPolicy>::namespaced(client.clone(), &w.namespace)
                            .patch_status(&w.name, &params, &patch)
                            .await
                            .map(|_| ())
                    }
                    _ => Api::<PeerAuthentication>::namespaced(client.clone(), &w.namespace)
                        .patch_status(&w.name, &params, &patch)
                        .await
                        .map(|_| ()),
                };
                if let Err(e) = result {
                    tracing::warn!(
                        "writing the status of {} {}/{}: {e}",
                        w.kind,
                        w.namespace,
                        w.name
                    );
                }
            }
        });
        Self {
            writes,
            generations: Mutex::default(),
            written: Mutex::default(),
        }
    }

    /// Records the generation of a policy as it arrives (before the pipeline may refuse it).
    pub fn observe(&self, object: &Object) {
        let kind = match object {
            Object::AuthorizationPolicy(_) => "AuthorizationPolicy",
            Object::PeerAuthentication(_) => "PeerAuthentication",
            _ => return,
        };
        let meta = object.meta();
        if let Some(generation) = meta.generation {
            self.generations
                .lock()
                .expect("generations lock")
                .insert(format!("{kind} {}", key(meta)), generation);
        }
    }

    /// Writes the conditions that changed since the last report.
    pub fn report(&self, pipeline: &Pipeline, notes: &[Note], refused: &[Note]) {
        let mut by_object: BTreeMap<&str, Vec<&Note>> = BTreeMap::new();
        for n in notes {
            by_object.entry(n.object.as_str()).or_default().push(n);
        }
        let refused: BTreeMap<&str, &Note> =
            refused.iter().map(|n| (n.object.as_str(), n)).collect();
        let kept = pipeline
            .policies()
            .map(|p| ("AuthorizationPolicy", key(&p.metadata)))
            .chain(
                pipeline
                    .peer_authentications()
                    .map(|p| ("PeerAuthentication", key(&p.metadata))),
            );
        // A refused policy that never had a good version is not in the pipeline.
        let refused_only: Vec<(&'static str, String)> = refused
            .keys()
            .filter_map(|o| {
                ["AuthorizationPolicy", "PeerAuthentication"]
                    .into_iter()
                    .find_map(|kind| Some((kind, o.strip_prefix(kind)?.strip_prefix(' ')?)))
            })
            .map(|(kind, k)| (kind, k.to_owned()))
            .collect();
        let generations = self.generations.lock().expect("generations lock");
        let mut written = self.written.lock().expect("written lock");
        let mut seen = HashSet::new();
        for (kind, key) in kept.chain(refused_only) {
            let object = format!("{kind} {key}");
            if seen.contains(&object) {
                continue;
            }
            let (namespace, name) = key.split_once('/').unwrap_or_default();
            let notes = by_object
                .get(object.as_str())
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            let mut c = condition(notes, refused.get(object.as_str()).copied());
            seen.insert(object.clone());
            let previous = written.get(&object);
            let unchanged = previous.is_some_and(|p| {
                (&p.status, &p.reason, &p.message) == (&c.status, &c.reason, &c.message)
            });
            if unchanged {
                continue;
            }
            c.last_transition_time = Some(now());
            written.insert(object.clone(), c.clone());
            let _ = self.writes.send(Write {
                kind,
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                status: IstioStatus {
                    conditions: vec![c],
                    observed_generation: generations.get(&object).copied(),
                },
            });
        }
        // Forget deleted objects.
        written.retain(|k, _| seen.contains(k));
    }
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
