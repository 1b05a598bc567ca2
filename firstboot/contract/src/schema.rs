//! JSON Schemas generated from the types. The committed copies (`schema/*.json` in this crate)
//! are checked against these by a test, so they never drift.

use crate::manifest::BundleManifest;
use crate::wire::ClusterConfig;

/// JSON Schema of `cluster-config.json`, pretty-printed with a trailing newline.
pub fn cluster_config_schema() -> String {
    render(schemars::schema_for!(ClusterConfig))
}

/// JSON Schema of the bundle's `manifest.json`, pretty-printed with a trailing newline.
pub fn bundle_manifest_schema() -> String {
    render(schemars::schema_for!(BundleManifest))
}

fn render(schema: schemars::Schema) -> String {
    // A schema is plain JSON data; serialising it cannot fail.
    serde_json::to_string_pretty(&schema).unwrap_or_default() + "\n"
}
