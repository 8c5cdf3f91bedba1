//! Response classes: which answers a route's metrics count as failures, in Linkerd's
//! ServiceProfile shape (`responseClasses: [{condition: {status: {min, max}}, isFailure}]`,
//! conditions combined with `all`, `any`, `not`). The first class whose condition holds decides;
//! an answer no class covers is a failure when it is a 5xx (Linkerd's default, and this
//! waypoint's without classes).
//!
//! They reach a VirtualService's rules through the annotation [`ANNOTATION`]: a JSON object
//! from rule name to its classes. istiod-lite writes it when it turns a ServiceProfile into a
//! VirtualService; a user may set it on their own VirtualService too (an extension of Istio's).

use serde::Deserialize;
use serde_json::Value;

pub const ANNOTATION: &str = meshcore::l7::networking::RESPONSE_CLASSES_ANNOTATION;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Class {
    condition: Condition,
    #[serde(default)]
    is_failure: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Condition {
    #[serde(default)]
    status: Option<StatusRange>,
    #[serde(default)]
    all: Vec<Condition>,
    #[serde(default)]
    any: Vec<Condition>,
    #[serde(default)]
    not: Option<Box<Condition>>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusRange {
    #[serde(default)]
    min: Option<u16>,
    #[serde(default)]
    max: Option<u16>,
}

impl Condition {
    /// Every part given must hold (Linkerd's conditions name one part each; a bare `{}` holds
    /// for every answer).
    fn holds(&self, status: u16) -> bool {
        self.status
            .as_ref()
            .is_none_or(|r| r.min.is_none_or(|m| status >= m) && r.max.is_none_or(|m| status <= m))
            && self.all.iter().all(|c| c.holds(status))
            && (self.any.is_empty() || self.any.iter().any(|c| c.holds(status)))
            && self.not.as_ref().is_none_or(|c| !c.holds(status))
    }
}

/// One rule's classes.
#[derive(Debug, Clone, PartialEq)]
pub struct ResponseClasses(Vec<Class>);

impl ResponseClasses {
    /// Parses Linkerd's `responseClasses` list.
    pub fn parse(v: &Value) -> Result<Self, String> {
        Vec::<Class>::deserialize(v)
            .map(ResponseClasses)
            .map_err(|e| format!("responseClasses: {e}"))
    }

    /// Whether an answer with `status` is a failure.
    pub fn is_failure(&self, status: u16) -> bool {
        self.0
            .iter()
            .find(|c| c.condition.holds(status))
            .map_or(status >= 500, |c| c.is_failure)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_matching_class_decides_and_5xx_fails_otherwise() {
        // Linkerd's documented example: 5xx failures, and 404 counted as a failure too.
        let classes = ResponseClasses::parse(&serde_json::json!([
            {"condition": {"status": {"min": 404, "max": 404}}, "isFailure": true},
            {"condition": {"status": {"min": 500, "max": 504}}, "isFailure": false},
            {"condition": {"all": [{"status": {"min": 400}}, {"not": {"status": {"max": 409}}}]}, "isFailure": true},
        ]))
        .unwrap();
        assert!(classes.is_failure(404));
        assert!(!classes.is_failure(503), "classified as success");
        assert!(classes.is_failure(410));
        assert!(!classes.is_failure(401));
        assert!(classes.is_failure(599), "no class: 5xx is a failure");
        assert!(!classes.is_failure(200));
        let any = ResponseClasses::parse(&serde_json::json!([
            {"condition": {"any": [{"status": {"min": 429, "max": 429}}, {"status": {"min": 503, "max": 503}}]}, "isFailure": false}
        ]))
        .unwrap();
        assert!(!any.is_failure(429) && !any.is_failure(503) && any.is_failure(502));
        assert!(
            ResponseClasses::parse(&serde_json::json!([{"condition": {"statuz": {}}}])).is_err()
        );
    }
}
