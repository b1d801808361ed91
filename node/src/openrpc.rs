//! The OpenRPC 1.2 document `rpc.discover` serves.
//!
//! Owns: `openrpc.json` beside this file, which describes every method the
//! client API may serve (params, results, errors), and the check that makes
//! the served document match the server. Must not: describe a method the
//! server does not accept. The document served is built from the names
//! jsonrpsee really registered: described methods that are not registered
//! are left out, and a registered method without a description stops the
//! node at start-up (so a new method cannot ship undocumented).

use std::collections::BTreeSet;

use serde_json::Value;

/// Descriptions of every client method, in OpenRPC 1.2 form.
const DOCUMENT: &str = include_str!("openrpc.json");

/// Builds the served document from `registered` (jsonrpsee's
/// `RpcModule::method_names()`): exactly those methods, in the document's
/// order, with `info.version` set to this build's version.
pub(crate) fn served_document<'a>(
    registered: impl IntoIterator<Item = &'a str>,
) -> Result<Value, String> {
    let mut doc: Value = serde_json::from_str(DOCUMENT)
        .map_err(|e| format!("node/src/openrpc.json is not JSON: {e}"))?;
    let registered: BTreeSet<&str> = registered.into_iter().collect();
    let Some(methods) = doc.get_mut("methods").and_then(Value::as_array_mut) else {
        return Err("node/src/openrpc.json has no `methods` array".into());
    };
    let described: BTreeSet<String> = methods
        .iter()
        .filter_map(|m| m.get("name").and_then(Value::as_str).map(str::to_string))
        .collect();
    let undocumented: Vec<&str> = registered
        .iter()
        .copied()
        .filter(|name| !described.contains(*name))
        .collect();
    if !undocumented.is_empty() {
        return Err(format!(
            "RPC methods {undocumented:?} are served but node/src/openrpc.json does not describe them; add them there"
        ));
    }
    methods.retain(|m| {
        m.get("name")
            .and_then(Value::as_str)
            .is_some_and(|name| registered.contains(name))
    });
    doc["info"]["version"] = Value::from(env!("CARGO_PKG_VERSION"));
    Ok(doc)
}

/// The method names of a document, in its order.
#[cfg(test)]
fn method_names(doc: &Value) -> Vec<String> {
    doc["methods"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .filter_map(|m| m["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resolves a local `$ref` such as `#/components/schemas/Hash`.
    fn resolve<'a>(doc: &'a Value, reference: &str) -> Option<&'a Value> {
        let path = reference.strip_prefix("#/")?;
        path.split('/').try_fold(doc, |v, key| v.get(key))
    }

    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(map) => {
                for (k, child) in map {
                    if k == "$ref" {
                        if let Some(r) = child.as_str() {
                            out.push(r);
                        }
                    } else {
                        refs(child, out);
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|c| refs(c, out)),
            _ => {}
        }
    }

    #[test]
    fn document_is_openrpc_1_2_with_complete_methods() {
        let doc: Value = serde_json::from_str(DOCUMENT).expect("openrpc.json parses");
        assert!(doc["openrpc"]
            .as_str()
            .is_some_and(|v| v.starts_with("1.2.")));
        assert!(doc["info"]["title"].is_string());
        let names = method_names(&doc);
        let unique: BTreeSet<&String> = names.iter().collect();
        assert_eq!(
            unique.len(),
            names.len(),
            "duplicate method names: {names:?}"
        );
        for m in doc["methods"].as_array().expect("methods") {
            let name = m["name"].as_str().expect("name");
            assert!(m["summary"].is_string(), "{name}: summary");
            assert!(m["params"].is_array(), "{name}: params");
            assert!(m["result"]["name"].is_string(), "{name}: result.name");
            assert!(m["result"]["schema"].is_object(), "{name}: result.schema");
            for p in m["params"].as_array().expect("params") {
                assert!(
                    p["name"].is_string() && p["schema"].is_object(),
                    "{name}: param {p}"
                );
            }
        }
        let mut all = Vec::new();
        refs(&doc, &mut all);
        for r in all {
            assert!(resolve(&doc, r).is_some(), "dangling $ref {r}");
        }
    }

    #[test]
    fn every_protocol_method_is_described() {
        let doc: Value = serde_json::from_str(DOCUMENT).expect("openrpc.json parses");
        let names = method_names(&doc);
        // PROTOCOL.md's method table, plus the unsubscribe halves.
        for m in [
            "poi_validate",
            "poi_validateBatch",
            "poi_submit",
            "poi_submitBatch",
            "poi_getAttestation",
            "poi_getReceipt",
            "poi_listByAttester",
            "poi_getImpact",
            "chain_head",
            "chain_getBlock",
            "node_status",
            "node_peers",
            "chain_subscribeBlocks",
            "chain_unsubscribeBlocks",
            "poi_subscribe",
            "poi_unsubscribe",
            "rpc.discover",
        ] {
            assert!(names.iter().any(|n| n == m), "{m} is not described");
        }
    }

    #[test]
    fn served_document_lists_exactly_the_registered_methods() {
        let mut module = jsonrpsee::RpcModule::new(());
        for name in ["chain_head", "rpc.discover", "poi_validate"] {
            module
                .register_method(name, |_, _, _| "ok")
                .expect("register");
        }
        let doc = served_document(module.method_names()).expect("all described");
        let mut served = method_names(&doc);
        served.sort();
        let mut registered: Vec<String> = module.method_names().map(str::to_string).collect();
        registered.sort();
        assert_eq!(served, registered);
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn an_undocumented_method_is_refused() {
        let err = served_document(["chain_head", "poi_secretMethod"]).unwrap_err();
        assert!(err.contains("poi_secretMethod"), "{err}");
    }
}
