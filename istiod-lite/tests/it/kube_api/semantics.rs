//! The parts of the API server's semantics the stand-in models beyond storage: query decoding,
//! label and field selectors, and server-side apply's merge.

use std::collections::BTreeMap;

use serde_json::Value;

/// Decodes an `application/x-www-form-urlencoded` query component (`+` is a space, `%XX` a byte).
pub fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The query of a request, decoded.
pub fn query(q: Option<&str>) -> BTreeMap<String, String> {
    q.map(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (decode(k), decode(v)))
            .collect()
    })
    .unwrap_or_default()
}

/// A `labelSelector` or `fieldSelector`: terms ANDed, each `key`, `!key`, `key=value`,
/// `key==value` or `key!=value` (set-based terms are not modelled: the stand-in panics so a
/// test notices).
#[derive(Debug, Clone, Default)]
pub struct Selector {
    labels: Vec<Term>,
    fields: Vec<Term>,
}

#[derive(Debug, Clone)]
enum Term {
    Exists(String),
    Absent(String),
    Equals(String, String),
    Differs(String, String),
}

fn terms(s: &str) -> Vec<Term> {
    s.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            assert!(
                !t.contains(" in ") && !t.contains(" notin "),
                "set-based selector {t:?} not modelled by the stand-in"
            );
            if let Some((k, v)) = t.split_once("!=") {
                Term::Differs(k.into(), v.into())
            } else if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
                Term::Equals(k.into(), v.into())
            } else if let Some(k) = t.strip_prefix('!') {
                Term::Absent(k.into())
            } else {
                Term::Exists(t.into())
            }
        })
        .collect()
}

fn holds(term: &Term, value: impl Fn(&str) -> Option<String>) -> bool {
    match term {
        Term::Exists(k) => value(k).is_some(),
        Term::Absent(k) => value(k).is_none(),
        Term::Equals(k, v) => value(k).as_deref() == Some(v),
        Term::Differs(k, v) => value(k).as_deref() != Some(v),
    }
}

impl Selector {
    pub fn from_query(query: &BTreeMap<String, String>) -> Self {
        Self {
            labels: query
                .get("labelSelector")
                .map(|s| terms(s))
                .unwrap_or_default(),
            fields: query
                .get("fieldSelector")
                .map(|s| terms(s))
                .unwrap_or_default(),
        }
    }

    pub fn matches(&self, obj: &Value) -> bool {
        let labels = &obj["metadata"]["labels"];
        let label = |k: &str| labels[k].as_str().map(str::to_owned);
        // The fields every kind supports, metadata.name and metadata.namespace, and a
        // Secret's `type`.
        let field = |k: &str| match k {
            "metadata.name" | "metadata.namespace" => {
                let f = k.trim_start_matches("metadata.");
                Some(obj["metadata"][f].as_str().unwrap_or_default().to_owned())
            }
            "type" => Some(obj["type"].as_str().unwrap_or("Opaque").to_owned()),
            other => panic!("field selector on {other:?} not modelled by the stand-in"),
        };
        self.labels.iter().all(|t| holds(t, label)) && self.fields.iter().all(|t| holds(t, field))
    }
}

/// Server-side apply of `applied` by a manager whose previous applied configuration was
/// `previous`: fields it applied before and no longer applies are removed, then what it applies
/// is merged in (maps field by field; lists, which the real server merges by key where the
/// schema says so, are replaced whole, which is the same when one manager owns them).
pub fn apply_merge(object: &mut Value, previous: Option<&Value>, applied: &Value) {
    if let Some(previous) = previous {
        remove_unapplied(object, previous, applied);
    }
    merge(object, applied);
}

fn remove_unapplied(object: &mut Value, previous: &Value, applied: &Value) {
    let (Value::Object(o), Value::Object(p)) = (object, previous) else {
        return;
    };
    for (k, pv) in p {
        match applied.get(k) {
            None => {
                o.remove(k);
            }
            Some(av) => {
                if let Some(ov) = o.get_mut(k) {
                    remove_unapplied(ov, pv, av);
                }
            }
        }
    }
}

fn merge(object: &mut Value, applied: &Value) {
    match (object, applied) {
        (Value::Object(o), Value::Object(a)) => {
            for (k, av) in a {
                match o.get_mut(k) {
                    Some(ov) if ov.is_object() && av.is_object() => merge(ov, av),
                    _ => {
                        o.insert(k.clone(), av.clone());
                    }
                }
            }
        }
        (object, applied) => *object = applied.clone(),
    }
}

/// The object without `metadata` and `status`: what a change of bumps `generation`.
pub fn spec_of(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn selectors_and_decoding() {
        let q = query(Some(
            "labelSelector=gateway.networking.k8s.io%2Fgateway-name&fieldSelector=metadata.name%3Dx",
        ));
        let s = Selector::from_query(&q);
        let obj = |name: &str, labels: Value| json!({"metadata": {"name": name, "labels": labels}});
        assert!(s.matches(&obj(
            "x",
            json!({"gateway.networking.k8s.io/gateway-name": "wp"})
        )));
        assert!(!s.matches(&obj(
            "y",
            json!({"gateway.networking.k8s.io/gateway-name": "wp"})
        )));
        assert!(!s.matches(&obj("x", json!({}))));
        assert_eq!(decode("a+b%2Cc"), "a b,c");
    }

    #[test]
    fn apply_removes_what_the_manager_stopped_applying() {
        let mut obj = json!({"metadata": {"name": "a", "labels": {"x": "1", "other": "kept"}},
                             "spec": {"ports": [1, 2]}});
        let previous =
            json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "spec": {"ports": [1, 2]}});
        let applied =
            json!({"metadata": {"name": "a", "labels": {"y": "2"}}, "spec": {"ports": [3]}});
        apply_merge(&mut obj, Some(&previous), &applied);
        assert_eq!(
            obj,
            json!({"metadata": {"name": "a", "labels": {"other": "kept", "y": "2"}}, "spec": {"ports": [3]}})
        );
    }
}
