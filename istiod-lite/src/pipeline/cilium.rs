//! What Cilium's policies read across namespaces: the slices to translate again when a pod's
//! identity or a Service's labels change anywhere.

use super::Pipeline;
use crate::translate::cilium::uses_service_selectors;

impl Pipeline {
    /// A pod's namespace, labels, service account, addresses or named ports changed: Cilium's
    /// `fromEndpoints`, `toEndpoints` (and its named ports) and `world` read every namespace's
    /// pods, so the slices holding a CiliumNetworkPolicy (all of them while a cluster-wide one
    /// exists) are translated again.
    pub(super) fn mark_cilium_selectors(&mut self) {
        let clusterwide = self
            .slices
            .get("")
            .is_some_and(|s| !s.cilium_clusterwide.is_empty());
        for s in self.slices.values_mut() {
            if clusterwide || !s.cilium_policies.is_empty() {
                s.dirty = true;
            }
        }
    }

    /// A Service appeared, went or was relabelled: the slices whose Cilium policies resolve
    /// `toServices[].k8sServiceSelector` (all of them when a cluster-wide one does) are
    /// translated again.
    pub(super) fn mark_cilium_services(&mut self) {
        let clusterwide = self.slices.get("").is_some_and(|s| {
            s.cilium_clusterwide
                .values()
                .any(|p| uses_service_selectors(&p.spec, &p.specs))
        });
        for s in self.slices.values_mut() {
            if clusterwide
                || s.cilium_policies
                    .values()
                    .any(|p| uses_service_selectors(&p.spec, &p.specs))
            {
                s.dirty = true;
            }
        }
    }
}
