//! Harnesses for hostile input (issue 6), shared by the property suite
//! below (run by `cargo test`) and the cargo-afl targets in `fuzz/`
//! (docs/FUZZING.md): the JSON-RPC envelope and every method's params, the
//! peer messages, attestation and receipt JSON, and config text, values
//! and flags.
//!
//! Each harness parses one input the way the node does and returns `Err`
//! naming a broken invariant: a refusal of the wrong kind, an error that
//! names nothing, or a parse that does not round-trip. A panic anywhere is
//! a failure too (the fuzzer's crash, proptest's failed case). None of the
//! parsers here can change node state: they run before any handler touches
//! the pool, storage or Raft, which is why no node is needed to test them
//! (the live-node abuse test checks that nothing is admitted end to end).
//!
//! Not part of the node's API: public only so the out-of-workspace fuzz
//! crate can reach the crate-private parsers.

use std::ffi::OsString;

use bizra_crypto::{codec, Attestation};

use crate::config::{self, Config};
use crate::net::{NetRequest, NetResponse};

/// JSON-RPC codes a client's bad params may be answered with:
/// INVALID_REQUEST (-32602) and, for an over-long batch, TOO_LARGE
/// (-32007).
const PARAM_CODES: [i32; 2] = [-32602, -32007];

/// A JSON-RPC request text (single or batch) as a client sends it: the
/// envelope is parsed like jsonrpsee does, then each call's params by
/// [`rpc_params_text`]. Bytes that are not UTF-8 never reach a parser (the
/// server answers them with a parse error), so they pass.
pub fn rpc_request(data: &[u8]) -> Result<(), String> {
    let Ok(text) = std::str::from_utf8(data) else {
        return Ok(());
    };
    let calls: Vec<&serde_json::value::RawValue> = if text.trim_start().starts_with('[') {
        match serde_json::from_str(text) {
            Ok(calls) => calls,
            Err(_) => return Ok(()),
        }
    } else {
        match serde_json::from_str(text) {
            Ok(call) => vec![call],
            Err(_) => return Ok(()),
        }
    };
    for call in calls {
        let Ok(request) = serde_json::from_str::<jsonrpsee::types::Request<'_>>(call.get()) else {
            continue;
        };
        let params = request.params.as_ref().map(|p| p.get());
        rpc_params_text(&request.method, params)?;
    }
    Ok(())
}

/// One method's params: the first byte picks the method, the rest is the
/// params text.
pub fn rpc_params(data: &[u8]) -> Result<(), String> {
    let Some((&pick, rest)) = data.split_first() else {
        return Ok(());
    };
    let method = crate::rpc::PARSED_METHODS[usize::from(pick) % crate::rpc::PARSED_METHODS.len()];
    let Ok(text) = std::str::from_utf8(rest) else {
        return Ok(());
    };
    rpc_params_text(method, Some(text))
}

/// Parses `params` of `method` as its handler does; a refusal must be
/// INVALID_REQUEST (or TOO_LARGE for a batch) with a message.
pub fn rpc_params_text(method: &str, params: Option<&str>) -> Result<(), String> {
    match crate::rpc::parse_params(method, params) {
        Ok(()) => Ok(()),
        Err(e) if !PARAM_CODES.contains(&e.code()) => Err(format!(
            "{method} params {params:?}: refused with code {} ({}), not INVALID_REQUEST",
            e.code(),
            e.message()
        )),
        Err(e) if e.code() == -32007 && !method.ends_with("Batch") => {
            Err(format!("{method}: TOO_LARGE from a method without a batch"))
        }
        Err(e) if e.message().is_empty() => Err(format!("{method}: error without a message")),
        Err(_) => Ok(()),
    }
}

/// A peer's request or response payload: decoded with the workspace codec
/// (as `net.rs` does), and anything that decodes encodes and decodes again.
pub fn net_message(data: &[u8]) -> Result<(), String> {
    if let Ok(request) = codec::decode::<NetRequest>(data) {
        let bytes = codec::encode(&request).map_err(|e| format!("re-encoding a request: {e}"))?;
        codec::decode::<NetRequest>(&bytes)
            .map_err(|e| format!("a re-encoded request does not decode: {e}"))?;
    }
    if let Ok(response) = codec::decode::<NetResponse>(data) {
        let bytes = codec::encode(&response).map_err(|e| format!("re-encoding a response: {e}"))?;
        codec::decode::<NetResponse>(&bytes)
            .map_err(|e| format!("a re-encoded response does not decode: {e}"))?;
    }
    Ok(())
}

/// An attestation's JSON: parsed or refused as INVALID_REQUEST naming
/// something; a parsed one has a valid shape and round-trips.
pub fn attestation_json(data: &[u8]) -> Result<(), String> {
    let Ok(text) = std::str::from_utf8(data) else {
        return Ok(());
    };
    match crate::admission::parse(text) {
        Ok(att) => {
            att.check_shape()
                .map_err(|e| format!("parsed an attestation of a bad shape: {e}"))?;
            let again = Attestation::from_json_str(&att.to_json().to_string())
                .map_err(|e| format!("a parsed attestation does not re-parse: {e}"))?;
            if again != att {
                return Err("an attestation changed on a JSON round trip".into());
            }
            Ok(())
        }
        Err(crate::api::ApiError::InvalidRequest(m)) if !m.is_empty() => Ok(()),
        Err(e) => Err(format!(
            "attestation refused as {} ({e}), not INVALID_REQUEST",
            e.name()
        )),
    }
}

/// A receipt's JSON, checked against a fixed genesis: verified, or a named
/// failure with a message.
pub fn receipt_json(data: &[u8]) -> Result<(), String> {
    let Ok(text) = std::str::from_utf8(data) else {
        return Ok(());
    };
    match bizra_crypto::verify_receipt_json(text, receipt_genesis()) {
        Ok(_) => Ok(()),
        Err(e) if e.name().is_empty() || e.to_string().is_empty() => {
            Err("a receipt failure without a name or message".into())
        }
        Err(_) => Ok(()),
    }
}

/// The genesis receipts are checked against: three fixed validators.
fn receipt_genesis() -> &'static bizra_crypto::Genesis {
    static GENESIS: std::sync::OnceLock<bizra_crypto::Genesis> = std::sync::OnceLock::new();
    GENESIS.get_or_init(|| bizra_crypto::Genesis {
        format: 1,
        chain_name: "bizra-fuzz-1".into(),
        validators: (1u8..=3)
            .map(|i| bizra_crypto::Validator {
                public_key: bizra_crypto::SigningKey::from_bytes(&[i; 32])
                    .verifying_key()
                    .to_bytes(),
                name: format!("v{i}"),
                region: "r".into(),
            })
            .collect(),
        policy: bizra_crypto::Policy {
            min_ahsan_score: 9500,
            max_age_s: 300,
            max_future_skew_s: 30,
            finality: bizra_crypto::FinalityPolicy::Majority,
        },
    })
}

/// A config file's text: parsed and validated, or refused with a message;
/// an accepted config prints as TOML that parses back to itself.
pub fn config_toml(data: &[u8]) -> Result<(), String> {
    let Ok(text) = std::str::from_utf8(data) else {
        return Ok(());
    };
    match Config::from_toml(text).and_then(Config::validate) {
        Ok(c) => {
            let again = Config::from_toml(&c.to_toml())
                .map_err(|e| format!("a valid config does not re-parse: {e}"))?;
            if again != c {
                return Err("a config changed on a TOML round trip".into());
            }
            Ok(())
        }
        Err(e) if e.to_string().is_empty() => Err("a config error without a message".into()),
        Err(_) => Ok(()),
    }
}

/// The layers above the file: `BIZRA_*` variables (name, value) and
/// `--set KEY=VALUE` flags, through [`config::load_layered`] without a
/// file. A refusal must name the key or variable it is about.
pub fn config_layers(env: &[(String, String)], flags: &[String]) -> Result<(), String> {
    let mut settings = Vec::new();
    for flag in flags {
        match config::parse_setting(flag) {
            Ok((key, value)) => settings.push(config::Setting {
                key,
                value,
                flag: format!("--set {flag}"),
            }),
            Err(e) if e.is_empty() => return Err(format!("--set {flag:?}: empty error")),
            Err(_) => {}
        }
    }
    let vars: Vec<(OsString, OsString)> = env
        .iter()
        .map(|(k, v)| (OsString::from(k), OsString::from(v)))
        .collect();
    match config::load_layered(None, vars, &settings) {
        Ok(effective) => effective
            .config
            .validate()
            .map(drop)
            .map_err(|e| format!("an accepted config does not validate: {e}")),
        Err(e) => {
            let message = e.to_string();
            let named = env.iter().any(|(k, _)| message.contains(k.as_str()))
                || settings.iter().any(|s| message.contains(&s.key))
                || message.contains('`');
            if named {
                Ok(())
            } else {
                Err(format!("config error names no key or variable: {message}"))
            }
        }
    }
}

/// Raw bytes for [`config_layers`]: lines `NAME=VALUE` become variables
/// when the name starts with `BIZRA_`, flags otherwise.
pub fn config_layers_bytes(data: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(data);
    let mut env = Vec::new();
    let mut flags = Vec::new();
    for line in text.lines() {
        match line.split_once('=') {
            Some((k, v)) if k.starts_with("BIZRA_") => env.push((k.to_string(), v.to_string())),
            _ => flags.push(line.to_string()),
        }
    }
    config_layers(&env, &flags)
}

#[cfg(test)]
mod tests {
    //! The property suite. Case counts (generated inputs per `cargo test`):
    //! see [`CASES`] (105 000); `crypto/tests/adversarial.rs` adds 30 000
    //! more. Both run in about 20 s together in a debug build.

    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// Generated inputs per property: 105 000 here, about 6 s in a debug
    /// build on two cores.
    const CASES: [(&str, u32); 8] = [
        ("rpc_request_text", 20_000),
        ("rpc_request_shaped", 20_000),
        ("rpc_params_shaped", 20_000),
        ("net_message_bytes", 15_000),
        ("net_message_edited", 10_000),
        ("config_toml_text", 8_000),
        ("config_layers_values", 8_000),
        ("attestation_bytes", 4_000),
    ];

    fn cases(name: &str) -> ProptestConfig {
        let n = CASES
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(256, |(_, c)| *c);
        ProptestConfig {
            cases: n,
            // Shrinking hostile inputs is slow and the regressions file
            // keeps the failing seed anyway.
            max_shrink_iters: 256,
            ..ProptestConfig::default()
        }
    }

    fn sample_attestation() -> Value {
        let key = bizra_crypto::SigningKey::from_bytes(&[5; 32]);
        let cid = bizra_crypto::chain_id("bizra-fuzz-1").expect("a valid name");
        Attestation::sign(&key, &cid, [1; 32], 1_795_000_000_000, 9_900, "c".into())
            .expect("valid shape")
            .to_json()
    }

    use serde_json::Value;

    /// JSON values a client might send where something else is expected.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<u64>().prop_map(|n| json!(n)),
            any::<f64>().prop_map(|f| json!(f)),
            ".{0,24}".prop_map(Value::String),
            "0x[0-9a-fA-F]{0,70}".prop_map(Value::String),
            "[0-9a-f]{24}".prop_map(Value::String),
            prop_oneof![
                Just("none"),
                Just("committed"),
                Just("finalized"),
                Just("bogus")
            ]
            .prop_map(|s| Value::String(s.into())),
            Just(sample_attestation()),
        ];
        leaf.prop_recursive(4, 24, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("wait".to_string()),
                        Just("after".to_string()),
                        Just("limit".to_string()),
                        Just("ahsan_score".to_string()),
                        "[a-z_]{0,8}",
                    ],
                    inner,
                    0..4
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn method() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => prop::sample::select(crate::rpc::PARSED_METHODS).prop_map(str::to_string),
            1 => ".{0,16}",
        ]
    }

    /// Params: an array (positional), an object, a scalar, nothing, or a
    /// batch of far too many attestations.
    fn params() -> impl Strategy<Value = Option<String>> {
        prop_oneof![
            6 => proptest::collection::vec(json_value(), 0..4)
                .prop_map(|v| Some(Value::Array(v).to_string())),
            1 => json_value().prop_map(|v| Some(v.to_string())),
            1 => Just(None),
            1 => (990usize..1_010).prop_map(|n| Some(format!("[[{}]]", vec!["1"; n].join(",")))),
            1 => (1usize..3_000).prop_map(|n| Some(format!("[{}1{}]", "[".repeat(n), "]".repeat(n)))),
        ]
    }

    /// Applies up to four byte edits (replace, insert, delete).
    fn edit(mut bytes: Vec<u8>, edits: &[(prop::sample::Index, u8, u8)]) -> Vec<u8> {
        for (at, b, op) in edits {
            if bytes.is_empty() {
                bytes.push(*b);
                continue;
            }
            let i = at.index(bytes.len());
            match op % 3 {
                0 => bytes[i] = *b,
                1 => bytes.insert(i, *b),
                _ => {
                    bytes.remove(i);
                }
            }
        }
        bytes
    }

    fn byte_edits() -> impl Strategy<Value = Vec<(prop::sample::Index, u8, u8)>> {
        proptest::collection::vec(
            (any::<prop::sample::Index>(), any::<u8>(), any::<u8>()),
            1..5,
        )
    }

    /// Valid peer messages to edit: every request kind and response kind.
    fn net_samples() -> Vec<Vec<u8>> {
        let mut out = vec![
            codec::encode(&NetRequest::HoldElections { millis: 5_000 }).expect("encodes"),
            codec::encode(&NetRequest::StandForElection { millis: u64::MAX }).expect("encodes"),
            codec::encode(&NetResponse::Ok).expect("encodes"),
            codec::encode(&NetResponse::Refused("no".into())).expect("encodes"),
        ];
        out.retain(|b| !b.is_empty());
        out
    }

    proptest! {
        #![proptest_config(cases("rpc_request_text"))]
        /// Arbitrary text and bytes as a request body.
        #[test]
        fn rpc_request_text(data in prop_oneof![
            any::<String>().prop_map(String::into_bytes),
            proptest::collection::vec(any::<u8>(), 0..256),
        ]) {
            rpc_request(&data).map_err(TestCaseError::fail)?;
        }
    }

    proptest! {
        #![proptest_config(cases("rpc_request_shaped"))]
        /// Well-formed envelopes (single and batch) around hostile params,
        /// with ids and versions of every type.
        #[test]
        fn rpc_request_shaped(
            calls in proptest::collection::vec((method(), params(), json_value(), any::<bool>()), 1..4),
            batch in any::<bool>(),
        ) {
            let envelopes: Vec<String> = calls
                .iter()
                .map(|(m, p, id, v2)| {
                    let version = if *v2 { "\"2.0\"" } else { "\"1.0\"" };
                    let params = p.as_deref().map(|p| format!(",\"params\":{p}")).unwrap_or_default();
                    format!("{{\"jsonrpc\":{version},\"id\":{id},\"method\":{}{params}}}", json!(m))
                })
                .collect();
            let text = if batch {
                format!("[{}]", envelopes.join(","))
            } else {
                envelopes[0].clone()
            };
            rpc_request(text.as_bytes()).map_err(TestCaseError::fail)?;
        }
    }

    proptest! {
        #![proptest_config(cases("rpc_params_shaped"))]
        /// Every method's params parser, with the error kind checked and
        /// the ones that must fail failing.
        #[test]
        fn rpc_params_shaped(method in prop::sample::select(crate::rpc::PARSED_METHODS), p in params()) {
            rpc_params_text(method, p.as_deref()).map_err(TestCaseError::fail)?;
            // Params that are not an array are refused by every method
            // that reads params.
            if let Some(p) = &p {
                let reads = !matches!(method, "chain_head" | "node_status" | "node_peers");
                if reads && !p.trim_start().starts_with('[') {
                    prop_assert!(crate::rpc::parse_params(method, Some(p)).is_err(), "{} {}", method, p);
                }
            }
        }
    }

    proptest! {
        #![proptest_config(cases("net_message_bytes"))]
        /// Arbitrary bytes from a peer.
        #[test]
        fn net_message_bytes(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            net_message(&data).map_err(TestCaseError::fail)?;
        }
    }

    proptest! {
        #![proptest_config(cases("net_message_edited"))]
        /// Valid peer messages with a few bytes changed, inserted or cut.
        #[test]
        fn net_message_edited(which in any::<prop::sample::Index>(), edits in byte_edits()) {
            let samples = net_samples();
            let sample = samples[which.index(samples.len())].clone();
            net_message(&edit(sample, &edits)).map_err(TestCaseError::fail)?;
        }
    }

    /// TOML-ish config text: known keys with values of every type, unknown
    /// keys, broken syntax.
    fn config_text() -> impl Strategy<Value = String> {
        let key = prop_oneof![
            4 => prop::sample::select(config::KEYS.iter().map(|k| k.key).collect::<Vec<_>>())
                .prop_map(str::to_string),
            1 => "[a-z_.]{1,20}",
        ];
        let value = prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            "[0-9]{1,25}",
            Just("true".to_string()),
            Just("\"127.0.0.1:0\"".to_string()),
            ".{0,20}".prop_map(|s| toml::Value::String(s).to_string()),
            Just("[\"/ip4/1.2.3.4/tcp/1\"]".to_string()),
            Just("{ a = 1 }".to_string()),
            ".{0,12}",
        ];
        prop_oneof![
            4 => proptest::collection::vec((key, value), 0..6).prop_map(|kvs| {
                kvs.into_iter().map(|(k, v)| format!("{k} = {v}\n")).collect()
            }),
            1 => any::<String>(),
        ]
    }

    proptest! {
        #![proptest_config(cases("config_toml_text"))]
        /// A config file's text.
        #[test]
        fn config_toml_text(text in config_text()) {
            config_toml(text.as_bytes()).map_err(TestCaseError::fail)?;
        }
    }

    proptest! {
        #![proptest_config(cases("config_layers_values"))]
        /// Variables and `--set` flags with arbitrary values: accepted and
        /// valid, or refused naming the key.
        #[test]
        fn config_layers_values(
            vars in proptest::collection::vec(
                (prop::sample::select(config::KEYS.iter().map(|k| k.key).collect::<Vec<_>>()), ".{0,16}"),
                0..3,
            ),
            unknown in proptest::option::of("BIZRA_[A-Z_]{1,12}"),
            flags in proptest::collection::vec(
                (prop::sample::select(config::KEYS.iter().map(|k| k.key).collect::<Vec<_>>()), ".{0,16}")
                    .prop_map(|(k, v)| format!("{k}={v}")),
                0..3,
            ),
            junk_flag in proptest::option::of(".{0,20}"),
        ) {
            let mut env: Vec<(String, String)> = vars
                .into_iter()
                .map(|(k, v)| (config::env_name(k), v))
                .collect();
            if let Some(u) = unknown {
                env.push((u, "1".into()));
            }
            let mut flags = flags;
            flags.extend(junk_flag);
            config_layers(&env, &flags).map_err(TestCaseError::fail)?;
        }
    }

    proptest! {
        #![proptest_config(cases("attestation_bytes"))]
        /// Attestation and receipt JSON through the node's harnesses (the
        /// crypto crate's own suite mutates valid documents).
        #[test]
        fn attestation_bytes(data in any::<String>()) {
            attestation_json(data.as_bytes()).map_err(TestCaseError::fail)?;
            receipt_json(data.as_bytes()).map_err(TestCaseError::fail)?;
        }
    }

    /// The counts above add up to what the module doc promises.
    #[test]
    fn case_budget() {
        let total: u32 = CASES.iter().map(|(_, c)| c).sum();
        assert!(total >= 100_000, "{total}");
    }

    /// The harnesses catch what they are for: a wrong-kind refusal is not
    /// silently accepted.
    #[test]
    fn harnesses_accept_good_and_refuse_nothing_valid() {
        let att = sample_attestation().to_string();
        assert_eq!(attestation_json(att.as_bytes()), Ok(()));
        assert_eq!(
            rpc_params_text("poi_validate", Some(&format!("[{att}]"))),
            Ok(())
        );
        assert!(crate::rpc::parse_params("poi_validate", Some(&format!("[{att}]"))).is_ok());
        let too_many = format!("[[{}]]", vec!["1"; 1_001].join(","));
        let e = crate::rpc::parse_params("poi_validateBatch", Some(&too_many)).unwrap_err();
        assert_eq!(e.code(), -32007);
        assert_eq!(config_layers_bytes(b"BIZRA_RPC_RATE_BURST=7"), Ok(()));
        assert_eq!(config_layers_bytes(b"rpc.rate_per_ip_per_s=-1"), Ok(()));
    }
}
