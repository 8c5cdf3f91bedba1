//! What the ingress suite expects of the status istiod-lite reports (its `/debug/config`, the
//! same conditions it writes to the objects in cluster mode): the Gateway `infra/gw` accepted,
//! its listeners with their attached route counts, `secure`'s certificate reference refused
//! without a ReferenceGrant, and the route from `apps` on the Same-namespace listener refused
//! with `NotAllowedByListeners`.

use serde_json::Value;

/// Every object in `v`, depth first.
fn objects(v: &Value) -> Vec<&serde_json::Map<String, Value>> {
    let mut out = Vec::new();
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        match v {
            Value::Object(m) => {
                out.push(m);
                stack.extend(m.values());
            }
            Value::Array(a) => stack.extend(a),
            _ => {}
        }
    }
    out
}

/// A condition of `type` in `conditions`, as `(status, reason)`.
fn condition<'a>(o: &'a serde_json::Map<String, Value>, kind: &str) -> Option<(&'a str, &'a str)> {
    o.get("conditions")?.as_array()?.iter().find_map(|c| {
        (c.get("type")?.as_str()? == kind)
            .then(|| Some((c.get("status")?.as_str()?, c.get("reason")?.as_str()?)))?
    })
}

pub fn check(config: &Value) -> Result<(), String> {
    let all = objects(config);
    // The Gateway's listener statuses: `name`, `attachedRoutes`, `conditions`.
    let listener = |name: &str| {
        all.iter()
            .find(|o| {
                o.get("name").and_then(Value::as_str) == Some(name)
                    && o.contains_key("attachedRoutes")
            })
            .copied()
    };
    let https = listener("https").ok_or("no status for listener https in /debug/config")?;
    let attached = |o: &serde_json::Map<String, Value>| {
        o.get("attachedRoutes").and_then(Value::as_u64).unwrap_or(0)
    };
    if attached(https) < 1 {
        return Err(format!(
            "listener https: attachedRoutes {:?}",
            https.get("attachedRoutes")
        ));
    }
    if condition(https, "Accepted").map(|c| c.0) != Some("True") {
        return Err(format!("listener https not accepted: {https:?}"));
    }
    let same = listener("same").ok_or("no status for listener same")?;
    if attached(same) != 0 {
        return Err(format!(
            "listener same counts {} routes; the only one naming it is refused",
            attached(same)
        ));
    }
    let secure = listener("secure").ok_or("no status for listener secure")?;
    match condition(secure, "ResolvedRefs") {
        Some(("False", "RefNotPermitted")) => {}
        other => {
            return Err(format!(
                "listener secure without a ReferenceGrant for its Secret: ResolvedRefs {other:?}"
            ))
        }
    }
    // The route refused by the listener.
    let refused = all.iter().any(|o| {
        condition(o, "Accepted") == Some(("False", "NotAllowedByListeners"))
            && o.values()
                .any(|v| v.to_string().contains("infra") || v.to_string().contains("gw"))
    });
    if !refused {
        return Err("no route status says NotAllowedByListeners for apps/refused".into());
    }
    Ok(())
}
