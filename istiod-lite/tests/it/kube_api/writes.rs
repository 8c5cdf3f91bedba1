//! The stand-in's writes beyond create: server-side apply, replace of `/status`, and the
//! cluster IPs the API server allocates to new Services.

use std::collections::BTreeMap;

use http::{Response, StatusCode};
use serde_json::{json, Value};

use super::{reply, semantics, status_error, Body, FakeApi, Target};

impl FakeApi {
    /// Gives a Service without a cluster IP one, as the API server does on create.
    pub(super) fn allocate_cluster_ip(&self, obj: &mut Value) {
        let spec = &obj["spec"];
        if obj["kind"] != "Service"
            || !spec["clusterIP"].is_null()
            || spec["type"] == "ExternalName"
        {
            return;
        }
        let n = {
            let mut s = self.state.lock().unwrap();
            s.allocated_ips += 1;
            s.allocated_ips
        };
        let ip = format!("10.96.{}.{}", 100 + n / 250, n % 250 + 1);
        obj["spec"]["clusterIP"] = json!(ip);
        obj["spec"]["clusterIPs"] = json!([ip]);
    }

    pub(super) fn server_side_apply(
        &self,
        target: &Target,
        name: &str,
        query: &BTreeMap<String, String>,
        body: &[u8],
    ) -> Response<Body> {
        let bad = |message: &str| {
            reply(
                StatusCode::BAD_REQUEST,
                &status_error(400, "BadRequest", message),
            )
        };
        let Some(manager) = query.get("fieldManager") else {
            return bad("PATCH with application/apply-patch+yaml requires fieldManager");
        };
        // JSON is YAML: kube-rs sends JSON.
        let Ok(mut applied) = serde_json::from_slice::<Value>(body) else {
            return bad("the applied configuration does not parse");
        };
        if applied["metadata"]["name"] != name
            || applied["apiVersion"].as_str().is_none()
            || applied["kind"].as_str().is_none()
        {
            return bad("the applied configuration needs apiVersion, kind and the path's name");
        }
        let ns = target.namespace.clone().unwrap_or_default();
        applied["metadata"]["namespace"] = json!(ns);
        if let Some(m) = applied.as_object_mut() {
            m.remove("status"); // the main resource ignores status
        }
        let key = (
            target.collection.clone(),
            ns.clone(),
            name.to_owned(),
            manager.clone(),
        );
        let (existing, previous) = {
            let mut s = self.state.lock().unwrap();
            let existing = s
                .collections
                .get(&target.collection)
                .and_then(|c| c.objects.get(&(ns.clone(), name.to_owned())))
                .cloned();
            let previous = s.applied.insert(key, applied.clone());
            (existing, previous)
        };
        let (object, created) = match &existing {
            None => {
                let mut obj = applied.clone();
                self.allocate_cluster_ip(&mut obj);
                (obj, true)
            }
            Some(current) => {
                let mut obj = current.clone();
                semantics::apply_merge(&mut obj, previous.as_ref(), &applied);
                (obj, false)
            }
        };
        if existing.as_ref() == Some(&object) {
            return reply(StatusCode::OK, &object); // nothing to write
        }
        let new_generation = existing
            .as_ref()
            .is_none_or(|e| semantics::spec_of(e) != semantics::spec_of(&object));
        self.write(object, new_generation);
        let stored = self
            .state
            .lock()
            .unwrap()
            .collections
            .get(&target.collection)
            .and_then(|c| c.objects.get(&(ns, name.to_owned())))
            .cloned()
            .expect("just written");
        let code = if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        reply(code, &stored)
    }

    pub(super) fn replace_status(
        &self,
        target: &Target,
        name: &str,
        body: &[u8],
    ) -> Response<Body> {
        let Ok(update) = serde_json::from_slice::<Value>(body) else {
            return reply(
                StatusCode::BAD_REQUEST,
                &status_error(400, "BadRequest", "the object does not parse"),
            );
        };
        let ns = target.namespace.clone().unwrap_or_default();
        let current = self
            .state
            .lock()
            .unwrap()
            .collections
            .get(&target.collection)
            .and_then(|c| c.objects.get(&(ns.clone(), name.to_owned())))
            .cloned();
        let Some(current) = current else {
            return reply(
                StatusCode::NOT_FOUND,
                &status_error(404, "NotFound", &format!("{name} not found")),
            );
        };
        let asked = &update["metadata"]["resourceVersion"];
        if !asked.is_null() && *asked != current["metadata"]["resourceVersion"] {
            return reply(
                StatusCode::CONFLICT,
                &status_error(
                    409,
                    "Conflict",
                    "the object has been modified; please apply your changes to the latest version and try again",
                ),
            );
        }
        let mut next = current.clone();
        match update.get("status") {
            Some(status) if !status.is_null() => next["status"] = status.clone(),
            _ => {
                next.as_object_mut().expect("object").remove("status");
            }
        }
        if next == current {
            return reply(StatusCode::OK, &current);
        }
        self.write(next, false);
        let stored = self
            .get_in(&target.collection, &ns, name)
            .expect("just written");
        reply(StatusCode::OK, &stored)
    }

    fn get_in(&self, collection: &str, ns: &str, name: &str) -> Option<Value> {
        let s = self.state.lock().unwrap();
        s.collections
            .get(collection)?
            .objects
            .get(&(ns.to_owned(), name.to_owned()))
            .cloned()
    }
}
