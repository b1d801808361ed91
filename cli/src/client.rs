//! Client commands: they speak JSON-RPC over HTTP exactly as any client
//! would, so they double as a worked example of PROTOCOL.md.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bizra_crypto::{hex, keys, Attestation};
use serde_json::{json, Value};

/// Flags of `bizra-node attest`.
#[derive(clap::Args)]
pub(crate) struct AttestArgs {
    /// The node's JSON-RPC URL (any node; followers forward to the leader).
    #[arg(long, default_value = "http://127.0.0.1:7710")]
    rpc: String,
    /// File holding the attester's key (`0x` + 64 hex seed); a fresh key is
    /// generated when absent.
    #[arg(long)]
    key: Option<PathBuf>,
    /// The Proof-of-Impact data; its BLAKE3 hash is what gets signed.
    #[arg(long, conflicts_with = "poi_hash")]
    poi_data: Option<String>,
    /// The BLAKE3 hash of the PoI data, `0x` + 64 hex.
    #[arg(long)]
    poi_hash: Option<String>,
    /// Ahsan score, 0 to 100 with at most two decimals.
    #[arg(long, default_value = "97.5")]
    score: String,
    /// Optional context, at most 256 bytes of UTF-8.
    #[arg(long, default_value = "")]
    context: String,
    /// What to wait for before answering.
    #[arg(long, default_value = "committed", value_parser = ["none", "committed"])]
    wait: String,
    /// Print the JSON answer only.
    #[arg(long)]
    json: bool,
}

/// Parses "97.5" into hundredths without going through a float.
fn parse_score(text: &str) -> Result<u16> {
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) || frac.len() > 2 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        bail!("--score `{text}`: expected a number 0..=100 with at most two decimals");
    }
    let whole: u32 = whole.parse().map_err(|_| anyhow!("--score `{text}` is out of range 0..=100"))?;
    let frac: u32 = format!("{frac:0<2}").parse().unwrap_or(0);
    let centi = whole.saturating_mul(100).saturating_add(frac);
    if centi > 10_000 {
        bail!("--score `{text}` is out of range 0..=100");
    }
    Ok(centi as u16)
}

fn rpc_call(url: &str, method: &str, params: Value) -> Result<Value> {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .build();
    let response = match agent.post(url).send_json(body) {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => return Err(anyhow!("cannot reach {url}: {e}")),
    };
    let answer: Value = response
        .into_json()
        .with_context(|| format!("{url} did not answer with JSON"))?;
    if let Some(err) = answer.get("error") {
        bail!(
            "{} ({}): {}",
            err["data"]["code"].as_str().unwrap_or("ERROR"),
            err["code"],
            err["message"].as_str().unwrap_or("")
        );
    }
    Ok(answer["result"].clone())
}

pub(crate) fn attest(args: AttestArgs) -> Result<()> {
    let score = parse_score(&args.score)?;
    let key = match &args.key {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading key {}", path.display()))?;
            keys::signing_key_from_hex(text.trim())
                .map_err(|e| anyhow!("{}: not a 0x-hex Ed25519 seed: {e}", path.display()))?
        }
        None => keys::generate(),
    };
    let poi_hash: [u8; 32] = match (&args.poi_hash, &args.poi_data) {
        (Some(h), _) => hex::decode_fixed::<32>(h).map_err(|e| anyhow!("--poi-hash: {e}"))?,
        (None, Some(data)) => *blake3::hash(data.as_bytes()).as_bytes(),
        (None, None) => bail!("give --poi-data or --poi-hash"),
    };
    let status = rpc_call(&args.rpc, "node_status", json!([]))?;
    let chain_id = status["chain_id"]
        .as_str()
        .ok_or_else(|| anyhow!("node_status has no chain_id"))?;
    let chain_id = hex::decode_fixed::<32>(chain_id).map_err(|e| anyhow!("chain_id: {e}"))?;
    let attestation = Attestation::sign(
        &key,
        &chain_id,
        poi_hash,
        bizra_node::now_ms(),
        score,
        args.context.clone(),
    )
    .map_err(|e| anyhow!("{e}"))?;
    let result = rpc_call(
        &args.rpc,
        "poi_submit",
        json!([attestation.to_json(), {"wait": args.wait}]),
    )?;
    if args.json {
        println!("{result}");
    } else {
        println!("id:       {}", result["id"].as_str().unwrap_or(""));
        println!("status:   {}", result["status"].as_str().unwrap_or(""));
        if let Some(h) = result.get("height") {
            println!("height:   {h}");
            println!("index:    {}", result["index"]);
            println!("block:    {}", result["block_hash"].as_str().unwrap_or(""));
        }
        println!("duplicate: {}", result["duplicate"]);
    }
    Ok(())
}

pub(crate) fn status(rpc: &str) -> Result<()> {
    let status = rpc_call(rpc, "node_status", json!([]))?;
    println!("{}", serde_json::to_string_pretty(&status)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_score;

    #[test]
    fn score_text() {
        assert_eq!(parse_score("97.5").unwrap(), 9750);
        assert_eq!(parse_score("100").unwrap(), 10000);
        assert_eq!(parse_score("0.01").unwrap(), 1);
        assert!(parse_score("100.01").is_err());
        assert!(parse_score("97.505").is_err());
        assert!(parse_score("-1").is_err());
        assert!(parse_score("").is_err());
    }
}
