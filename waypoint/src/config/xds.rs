//! The delta xDS client: subscribes, by name, to this waypoint's configuration
//! (`mesh.waypoint.v1.WaypointConfig`, resource `<namespace>/<gateway name>`) on istiod-lite and
//! applies each version through [`ConfigStore::apply`]. The resource carries the configuration
//! as JSON in the local file's schema ([`WaypointConfig`]).
//!
//! - A version that does not decode, does not parse, or that the store refuses is NACKed with
//!   the reason; the last good configuration stays in force.
//! - The stream authenticates with the same token as the certificate client
//!   (`authorization: Bearer`, re-read per connection); istiod-lite serves a waypoint's
//!   configuration only to that waypoint's own service account.
//! - A lost or refused stream is retried with backoff (1 s doubling to 30 s, back to 1 s once a
//!   stream delivered something), resubscribing with the version held, so an unchanged
//!   configuration is not sent again.
//! - Readiness: [`XdsClient::ready`] turns true once a first configuration is in force.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshcore::api::discovery::{
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DeltaDiscoveryRequest,
    DeltaDiscoveryResponse, Node, Status as WireStatus,
};
use meshcore::api::{type_url, waypoint as wire};
use meshcore::control::ControlPlane;
use meshcore::l7::WaypointConfig;
use prost::Message;
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use super::ConfigStore;

/// Where and how to reach the control plane, and what to ask for.
#[derive(Clone)]
pub struct XdsConfig {
    pub control: ControlPlane,
    /// `waypoint~<pod ip>~<pod name>.<namespace>~<namespace>.svc.cluster.local`.
    pub node_id: String,
    /// The token presented as `authorization: Bearer` (the certificate client's); re-read on
    /// every connection.
    pub token_file: Option<PathBuf>,
    /// `<namespace>/<gateway name>`.
    pub resource: String,
}

/// What `/config_dump` shows about the source.
#[derive(Debug, Default, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct XdsStatus {
    pub xds_address: String,
    pub resource: String,
    pub connected: bool,
    /// Version of the configuration in force.
    pub version: Option<String>,
    pub loads: u64,
    pub rejected: u64,
    /// Why the latest version (or connection) was refused, if it was.
    pub last_error: Option<String>,
}

/// What one response means for this waypoint.
#[derive(Debug, PartialEq)]
pub enum Update {
    /// A new version of the configuration.
    Config {
        version: String,
        /// Boxed: a configuration is much larger than the other variants.
        config: Box<WaypointConfig>,
    },
    /// The control plane no longer has it (the Gateway is gone).
    Removed,
    /// Nothing for this waypoint (the first response of a resubscription, unchanged).
    Nothing,
}

/// Decodes a response: the resource named `resource` and what it holds. Pure.
pub fn decode(response: &DeltaDiscoveryResponse, resource: &str) -> Result<Update, String> {
    if response.type_url != type_url::WAYPOINT_CONFIG {
        return Err(format!("unexpected type {}", response.type_url));
    }
    let mut update = Update::Nothing;
    if response.removed_resources.iter().any(|n| n == resource) {
        update = Update::Removed;
    }
    for r in &response.resources {
        if r.name != resource {
            return Err(format!("resource {} was not subscribed to", r.name));
        }
        let any = r
            .resource
            .as_ref()
            .ok_or_else(|| format!("resource {} has no body", r.name))?;
        if any.type_url != type_url::WAYPOINT_CONFIG {
            return Err(format!(
                "resource {}: body of type {}",
                r.name, any.type_url
            ));
        }
        let body = wire::WaypointConfig::decode(any.value.as_slice())
            .map_err(|e| format!("resource {}: {e}", r.name))?;
        let named = format!("{}/{}", body.namespace, body.name);
        if named != resource {
            return Err(format!(
                "resource {} holds the configuration of {named}",
                r.name
            ));
        }
        let config: WaypointConfig = serde_json::from_str(&body.config_json)
            .map_err(|e| format!("resource {}: config_json: {e}", r.name))?;
        update = Update::Config {
            version: r.version.clone(),
            config: Box::new(config),
        };
    }
    Ok(update)
}

pub struct XdsClient {
    config: XdsConfig,
    store: Arc<ConfigStore>,
    status: Arc<Mutex<XdsStatus>>,
    ready: watch::Sender<bool>,
    /// Version of the configuration in force.
    version: Option<String>,
}

impl XdsClient {
    pub fn new(config: XdsConfig, store: Arc<ConfigStore>) -> Self {
        let status = XdsStatus {
            xds_address: config.control.address.clone(),
            resource: config.resource.clone(),
            ..Default::default()
        };
        Self {
            config,
            store,
            status: Arc::new(Mutex::new(status)),
            ready: watch::Sender::new(false),
            version: None,
        }
    }

    pub fn status(&self) -> Arc<Mutex<XdsStatus>> {
        self.status.clone()
    }

    /// True once a first configuration from the control plane is in force.
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// Runs until `shutdown` completes, reconnecting with backoff.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut backoff = Duration::from_secs(1);
        let mut unanswered_before = false;
        loop {
            let started = std::time::Instant::now();
            let mut delivered = false;
            // Only a call tonic reports as Unavailable (nothing answered) clears it.
            let mut answered = true;
            let result = tokio::select! {
                result = self.session(&mut delivered, &mut answered) => result,
                _ = &mut shutdown => return,
            };
            self.status.lock().expect("status lock").connected = false;
            if delivered {
                backoff = Duration::from_secs(1);
            }
            let (wait, next) =
                meshcore::control::next_backoff(backoff, started.elapsed(), answered);
            let address = &self.config.control.address;
            match result {
                Ok(()) => tracing::info!(%address, "xDS stream closed by the server; reconnecting"),
                Err(e) => {
                    // While nothing answers, retries come every 0.5 s: say so once.
                    if !answered && unanswered_before {
                        tracing::debug!(%address, retry_in = ?wait, "xDS: {e}");
                    } else {
                        tracing::warn!(%address, retry_in = ?wait, "xDS: {e}");
                    }
                    self.status.lock().expect("status lock").last_error = Some(e);
                }
            }
            unanswered_before = !answered;
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = &mut shutdown => return,
            }
            backoff = next;
        }
    }

    /// One stream; `delivered` is set by a response, `answered` once the control plane answered
    /// anything (the stream opened, or a status of its own).
    async fn session(&mut self, delivered: &mut bool, answered: &mut bool) -> Result<(), String> {
        let mut client = AggregatedDiscoveryServiceClient::new(self.config.control.channel()?)
            .max_decoding_message_size(meshcore::control::MAX_XDS_MESSAGE_BYTES)
            .max_encoding_message_size(meshcore::control::MAX_XDS_MESSAGE_BYTES);
        let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(4);
        let subscribe = DeltaDiscoveryRequest {
            node: Some(Node {
                id: self.config.node_id.clone(),
                ..Default::default()
            }),
            type_url: type_url::WAYPOINT_CONFIG.to_owned(),
            resource_names_subscribe: vec![self.config.resource.clone()],
            initial_resource_versions: self
                .version
                .iter()
                .map(|v| (self.config.resource.clone(), v.clone()))
                .collect(),
            ..Default::default()
        };
        tx.send(subscribe)
            .await
            .map_err(|_| "request queue closed".to_owned())?;
        let request = meshcore::control::ads_request(rx, self.config.token_file.as_deref())?;
        let mut responses = client
            .delta_aggregated_resources(request)
            .await
            .map_err(|e| {
                *answered = meshcore::control::answered(&e);
                format!("opening the xDS stream: {}", describe(&e))
            })?
            .into_inner();
        *answered = true;
        tracing::info!(address = %self.config.control.address, resource = %self.config.resource, "xDS connected");
        self.status.lock().expect("status lock").connected = true;
        while let Some(response) = responses
            .message()
            .await
            .map_err(|e| format!("xDS stream: {}", describe(&e)))?
        {
            *delivered = true;
            let outcome = self.apply(&response).await;
            let error_detail = outcome.err().map(|message| {
                tracing::error!(resource = %self.config.resource, "configuration refused, keeping the last good one: {message}");
                WireStatus {
                    code: tonic::Code::InvalidArgument as i32,
                    message,
                    details: Vec::new(),
                }
            });
            let reply = DeltaDiscoveryRequest {
                type_url: response.type_url.clone(),
                response_nonce: response.nonce.clone(),
                error_detail,
                ..Default::default()
            };
            if tx.send(reply).await.is_err() {
                break;
            }
        }
        Ok(())
    }

    /// Applies a response; `Err` (the NACK's message) leaves the configuration in force as it
    /// was.
    async fn apply(&mut self, response: &DeltaDiscoveryResponse) -> Result<(), String> {
        let outcome = match decode(response, &self.config.resource) {
            Ok(Update::Nothing) => return Ok(()),
            Ok(Update::Removed) => {
                tracing::warn!(resource = %self.config.resource, "the control plane removed this waypoint's configuration; serving none");
                self.install(WaypointConfig::default(), None).await
            }
            Ok(Update::Config { version, config }) => self.install(*config, Some(version)).await,
            Err(e) => Err(e),
        };
        let mut status = self.status.lock().expect("status lock");
        match &outcome {
            Ok(()) => {
                status.loads += 1;
                status.version = self.version.clone();
                status.last_error = None;
            }
            Err(e) => {
                status.rejected += 1;
                status.last_error = Some(e.clone());
            }
        }
        outcome
    }

    /// Compiles and installs a configuration (on the blocking pool: a large one takes a while).
    async fn install(
        &mut self,
        config: WaypointConfig,
        version: Option<String>,
    ) -> Result<(), String> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.apply(config))
            .await
            .map_err(|e| format!("applying: {e}"))??;
        tracing::info!(resource = %self.config.resource, version = version.as_deref().unwrap_or("-"), "configuration applied");
        self.version = version;
        self.ready.send_replace(true);
        Ok(())
    }
}

/// A gRPC status as `Code: message`.
fn describe(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshcore::api::discovery::Resource;

    fn response(resources: Vec<Resource>, removed: Vec<String>) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse {
            type_url: type_url::WAYPOINT_CONFIG.into(),
            nonce: "1-1".into(),
            resources,
            removed_resources: removed,
            ..Default::default()
        }
    }

    fn resource(name: &str, namespace: &str, gateway: &str, json: &str) -> Resource {
        Resource {
            name: name.into(),
            version: "v1".into(),
            resource: Some(prost_types::Any {
                type_url: type_url::WAYPOINT_CONFIG.into(),
                value: wire::WaypointConfig {
                    namespace: namespace.into(),
                    name: gateway.into(),
                    config_json: json.into(),
                }
                .encode_to_vec(),
            }),
            ..Default::default()
        }
    }

    const JSON: &str = r#"{"services":[{"name":"cart","namespace":"shop","vips":["10.96.0.1"],
        "ports":[{"port":80,"targetPort":8080,"name":"http"}],
        "endpoints":[{"address":"10.1.0.1","name":"cart-1","serviceAccount":"cart"}]}],
        "httpRoutes":[{"metadata":{"name":"r","namespace":"shop"},
        "spec":{"parentRefs":[{"group":"","kind":"Service","name":"cart"}]}}]}"#;

    #[test]
    fn decodes_the_named_configuration() {
        let r = response(vec![resource("shop/wp", "shop", "wp", JSON)], vec![]);
        let Update::Config { version, config } = decode(&r, "shop/wp").unwrap() else {
            panic!("a configuration")
        };
        assert_eq!(version, "v1");
        assert_eq!(config.services[0].endpoints[0].service_account, "cart");
        assert_eq!(config.http_routes[0].metadata.key(), "shop/r");
        assert_eq!(
            decode(&response(vec![], vec![]), "shop/wp"),
            Ok(Update::Nothing)
        );
        assert_eq!(
            decode(&response(vec![], vec!["shop/wp".into()]), "shop/wp"),
            Ok(Update::Removed)
        );
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        let err = |r: DeltaDiscoveryResponse| decode(&r, "shop/wp").unwrap_err();
        assert!(err(response(
            vec![resource(
                "shop/wp",
                "shop",
                "wp",
                r#"{"services":[],"routez":[]}"#
            )],
            vec![]
        ))
        .starts_with("resource shop/wp: config_json: unknown field `routez`"));
        assert_eq!(
            err(response(
                vec![resource("shop/wp", "shop", "other", JSON)],
                vec![]
            )),
            "resource shop/wp holds the configuration of shop/other"
        );
        assert_eq!(
            err(response(
                vec![resource("shop/x", "shop", "x", JSON)],
                vec![]
            )),
            "resource shop/x was not subscribed to"
        );
        let mut wrong_type = response(vec![], vec![]);
        wrong_type.type_url = type_url::ADDRESS.into();
        assert_eq!(
            err(wrong_type),
            format!("unexpected type {}", type_url::ADDRESS)
        );
    }
}
