//! The committed JSON Schemas must equal what the types generate.
//! Regenerate with: `PLASMACLOUD_UPDATE_SCHEMA=1 cargo test --release -p plasmacloud-contract --test schema_drift`

use std::path::PathBuf;

use plasmacloud_contract::schema::{bundle_manifest_schema, cluster_config_schema};

fn check(file: &str, generated: String) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("schema")
        .join(file);
    if std::env::var_os("PLASMACLOUD_UPDATE_SCHEMA").is_some() {
        std::fs::write(&path, &generated).expect("write schema");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} differs from the schema generated from the types; regenerate it with \
         `PLASMACLOUD_UPDATE_SCHEMA=1 cargo test --release -p plasmacloud-contract --test schema_drift` and commit it",
        path.display()
    );
}

#[test]
fn cluster_config_schema_is_committed_and_current() {
    check("cluster-config.schema.json", cluster_config_schema());
}

#[test]
fn bundle_manifest_schema_is_committed_and_current() {
    check("bundle-manifest.schema.json", bundle_manifest_schema());
}

#[test]
fn schema_rejects_unknown_fields_and_bounds_ports() {
    let s: serde_json::Value = serde_json::from_str(&cluster_config_schema()).expect("json");
    assert_eq!(s["additionalProperties"], serde_json::json!(false));
    let ports = &s["$defs"]["Ports"]["properties"]["iam_api"];
    assert_eq!(ports["maximum"], serde_json::json!(65535), "{ports}");
}
