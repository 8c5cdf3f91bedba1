//! Istio's resources as users write them (`security.istio.io/v1`), as serde types. Spec fields
//! keep Istio's camelCase names; unknown fields are refused so a misspelt key is reported
//! instead of silently ignored.

pub mod security;
