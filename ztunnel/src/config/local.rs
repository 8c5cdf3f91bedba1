//! Istio ztunnel's local config file (`LOCAL_XDS_PATH`): workloads, services and policies in
//! YAML. Parsing is strict: an unknown key, a bad address or a dangling reference refuses the
//! whole file with a message naming the entry and the field, and the caller keeps what it had.
//! Beyond Istio's shape: `egressPolicies` ([`EgressPolicy`], this mesh's egress rules).

use std::collections::{HashMap, HashSet};

use meshcore::identity::SpiffeId;
use meshcore::policy::egress::EgressPolicy;
use meshcore::policy::Authorization;
use serde::Deserialize;

use crate::state::{fill_workload_defaults, MeshConfig, Service, Workload};

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LocalConfig {
    #[serde(default)]
    workloads: Vec<Workload>,
    #[serde(default)]
    services: Vec<Service>,
    #[serde(default)]
    policies: Vec<Authorization>,
    /// Read as plain data, then as JSON: the same shape as the xDS resource's `policy_json`
    /// (`- workloads: [...]`, `- cidr: {...}`), not YAML tags.
    #[serde(default)]
    egress_policies: Vec<serde_yaml_ng::Value>,
}

/// Parses and checks a local config file's text. `trust_domain` fills workloads naming none.
pub fn parse(yaml: &str, trust_domain: &str) -> Result<MeshConfig, String> {
    let raw: LocalConfig = if yaml.trim().is_empty() {
        LocalConfig::default()
    } else {
        serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())?
    };
    let mut errors = Vec::new();
    let mut workloads = raw.workloads;
    for w in &mut workloads {
        fill_workload_defaults(w, trust_domain);
    }
    check_policies(&raw.policies, &mut errors);
    check_services(&raw.services, &mut errors);
    check_workloads(&workloads, &raw.services, &raw.policies, &mut errors);
    let egress_policies = egress_policies(raw.egress_policies, &mut errors);
    check_egress(&egress_policies, &workloads, &mut errors);
    if errors.is_empty() {
        Ok(MeshConfig {
            workloads,
            services: raw.services,
            policies: raw.policies,
            egress_policies,
        })
    } else {
        Err(errors.join("; "))
    }
}

fn check_workloads(
    workloads: &[Workload],
    services: &[Service],
    policies: &[Authorization],
    errors: &mut Vec<String>,
) {
    let service_keys: HashSet<String> = services.iter().map(Service::key).collect();
    let policy_keys: HashSet<String> = policies.iter().map(Authorization::key).collect();
    let mut uids = HashMap::new();
    let mut ips = HashMap::new();
    for (i, w) in workloads.iter().enumerate() {
        let at = format!("workloads[{i}] ({}/{})", w.namespace, w.name);
        if w.namespace.is_empty() {
            errors.push(format!("{at}: namespace must not be empty"));
        }
        if w.name.is_empty() {
            errors.push(format!("{at}: name must not be empty"));
        }
        if let Err(e) = SpiffeId::new(&w.trust_domain, &w.namespace, &w.service_account) {
            errors.push(format!("{at}: trustDomain/namespace/serviceAccount: {e}"));
        }
        if let Some(other) = uids.insert(w.uid.clone(), i) {
            errors.push(format!(
                "{at}: uid {:?} is also used by workloads[{other}]",
                w.uid
            ));
        }
        for ip in &w.workload_ips {
            if let Some(other) = ips.insert((w.network.clone(), *ip), i) {
                errors.push(format!(
                    "{at}: workloadIps: {ip} is also used by workloads[{other}]"
                ));
            }
        }
        for key in w.services.keys() {
            if !key.contains('/') {
                errors.push(format!(
                    "{at}: services: key {key:?} must be \"namespace/hostname\""
                ));
            } else if !service_keys.contains(key) {
                errors.push(format!(
                    "{at}: services: {key:?} names no entry of services"
                ));
            }
        }
        for p in &w.authorization_policies {
            // A dangling name would silently leave the workload unprotected: refused. Naming
            // a policy of another scope is accepted, as Istio's ztunnel does.
            if !policy_keys.contains(p) {
                errors.push(format!(
                    "{at}: authorizationPolicies: {p:?} names no policy"
                ));
            }
        }
    }
}

fn check_services(services: &[Service], errors: &mut Vec<String>) {
    let mut keys = HashMap::new();
    let mut vips = HashMap::new();
    for (i, s) in services.iter().enumerate() {
        let at = format!("services[{i}] ({}/{})", s.namespace, s.name);
        for (field, value) in [
            ("name", &s.name),
            ("namespace", &s.namespace),
            ("hostname", &s.hostname),
        ] {
            if value.is_empty() {
                errors.push(format!("{at}: {field} must not be empty"));
            }
        }
        if let Some(other) = keys.insert(s.key(), i) {
            errors.push(format!(
                "{at}: {} is also defined by services[{other}]",
                s.key()
            ));
        }
        for vip in &s.vips {
            if let Some(other) = vips.insert(vip.clone(), i) {
                errors.push(format!(
                    "{at}: vips: {vip} is also used by services[{other}]"
                ));
            }
        }
        for san in &s.subject_alt_names {
            let body = san.strip_prefix("spiffe://").unwrap_or(san);
            if let Err(e) = SpiffeId::from_principal(body) {
                errors.push(format!("{at}: subjectAltNames: {e}"));
            }
        }
    }
}

fn check_policies(policies: &[Authorization], errors: &mut Vec<String>) {
    let mut keys = HashMap::new();
    for (i, p) in policies.iter().enumerate() {
        let at = format!("policies[{i}] ({})", p.key());
        if p.name.is_empty() || p.namespace.is_empty() {
            errors.push(format!("{at}: name and namespace must not be empty"));
        }
        if let Some(other) = keys.insert(p.key(), i) {
            errors.push(format!("{at}: also defined by policies[{other}]"));
        }
    }
}

/// Each `egressPolicies` entry through JSON into the model (strict: unknown fields refused).
fn egress_policies(raw: Vec<serde_yaml_ng::Value>, errors: &mut Vec<String>) -> Vec<EgressPolicy> {
    raw.into_iter()
        .enumerate()
        .filter_map(|(i, v)| {
            let parsed = serde_json::to_value(&v)
                .map_err(|e| e.to_string())
                .and_then(|j| serde_json::from_value::<EgressPolicy>(j).map_err(|e| e.to_string()));
            parsed
                .map_err(|e| errors.push(format!("egressPolicies[{i}]: {e}")))
                .ok()
        })
        .collect()
}

/// Egress policies: valid, one per key, selecting workloads that exist (a dangling uid would
/// silently leave a workload unrestricted).
fn check_egress(policies: &[EgressPolicy], workloads: &[Workload], errors: &mut Vec<String>) {
    let uids: HashSet<&str> = workloads.iter().map(|w| w.uid.as_str()).collect();
    let mut keys = HashMap::new();
    for (i, p) in policies.iter().enumerate() {
        let at = format!("egressPolicies[{i}] ({})", p.key());
        if let Err(e) = p.validate() {
            errors.push(format!("{at}: {e}"));
        }
        if let Some(other) = keys.insert(p.key(), i) {
            errors.push(format!("{at}: also defined by egressPolicies[{other}]"));
        }
        for uid in &p.workloads {
            if !uids.contains(uid.as_str()) {
                errors.push(format!("{at}: workloads: {uid:?} is no workload's uid"));
            }
        }
    }
}

#[cfg(test)]
mod tests;
