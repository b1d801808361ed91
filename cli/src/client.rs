//! Client commands: they speak JSON-RPC over HTTP exactly as any client
//! would, so they double as a worked example of PROTOCOL.md.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use bizra_client::{Client, Policy, Wait};
use bizra_crypto::{hex, keys, Attestation};
use serde_json::{json, Value};

/// Flags of `bizra-node attest`.
#[derive(clap::Args)]
pub(crate) struct AttestArgs {
    /// A node's JSON-RPC URL (any node accepts submissions); repeat it to
    /// fail over to the next node when one is down.
    #[arg(long, default_value = "http://127.0.0.1:7710")]
    rpc: Vec<String>,
    /// Most attempts per request (retries on UNAVAILABLE, OVERLOADED and
    /// connection errors; resubmitting is safe, see docs/CLIENT.md).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    max_attempts: u32,
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
    #[arg(long, default_value = "committed", value_parser = ["none", "committed", "finalized"])]
    wait: String,
    /// Write the attestation's receipt (`poi_getReceipt`) to this file once
    /// answered, for `bizra-node verify`; with `--wait finalized` it
    /// carries the finality certificate.
    #[arg(long)]
    receipt_out: Option<PathBuf>,
    /// Print the JSON answer only.
    #[arg(long)]
    json: bool,
}

/// Parses "97.5" into hundredths without going through a float.
fn parse_score(text: &str) -> Result<u16> {
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > 2
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        bail!("--score `{text}`: expected a number 0..=100 with at most two decimals");
    }
    let whole: u32 = whole
        .parse()
        .map_err(|_| anyhow!("--score `{text}` is out of range 0..=100"))?;
    let frac: u32 = format!("{frac:0<2}").parse().unwrap_or(0);
    let centi = whole.saturating_mul(100).saturating_add(frac);
    if centi > 10_000 {
        bail!("--score `{text}` is out of range 0..=100");
    }
    Ok(centi as u16)
}

/// A client over `urls` with the default retry policy and `max_attempts`.
pub(crate) fn connect(urls: &[String], max_attempts: u32) -> Result<Client> {
    Client::new(
        urls.iter().cloned(),
        Policy {
            max_attempts,
            ..Policy::default()
        },
    )
    .map_err(|e| anyhow!("--rpc/--max-attempts: {e}"))
}

/// One call through the resilient client (retries, failover); the error
/// names the node's error code, or why no node answered.
pub(crate) fn rpc_call(url: &str, method: &str, params: Value) -> Result<Value> {
    let client = connect(&[url.to_string()], Policy::default().max_attempts)?;
    Ok(client.call(method, params)?.value)
}

pub(crate) fn attest(args: AttestArgs) -> Result<()> {
    let score = parse_score(&args.score)?;
    if args.receipt_out.is_some() && args.wait == "none" {
        bail!("--receipt-out needs --wait committed or finalized: there is no receipt before the block");
    }
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
    let wait: Wait = args.wait.parse()?;
    let client = connect(&args.rpc, args.max_attempts)?;
    let status = client.node_status()?.value;
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
    let submitted = client.submit(&attestation, wait)?;
    let result = submitted.value.raw;
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
        let stats = &submitted.stats;
        println!(
            "attempts: {} ({} retries, answered by {})",
            stats.attempts,
            stats.retries(),
            stats.endpoint.as_deref().unwrap_or("-")
        );
    }
    if let Some(path) = &args.receipt_out {
        let id = result["id"].as_str().unwrap_or_default();
        let receipt = client.get_receipt(id)?.value;
        crate::verify::write_receipt(path, &receipt)?;
        if !args.json {
            println!("receipt:  {}", path.display());
        }
    }
    Ok(())
}

pub(crate) fn status(rpc: &str) -> Result<()> {
    let status = rpc_call(rpc, "node_status", json!([]))?;
    println!("{}", serde_json::to_string_pretty(&status)?);
    Ok(())
}

/// Flags shared by the read-only client commands.
#[derive(clap::Args)]
pub(crate) struct QueryFlags {
    /// The node's JSON-RPC URL (any node).
    #[arg(long, default_value = "http://127.0.0.1:7710")]
    rpc: String,
    /// Print the node's JSON answer instead of text.
    #[arg(long)]
    json: bool,
}

/// Flags of `bizra-node get`.
#[derive(clap::Args)]
pub(crate) struct GetArgs {
    /// The attestation id, `0x` + 64 hex digits.
    id: String,
    #[command(flatten)]
    flags: QueryFlags,
}

/// Flags of `bizra-node blocks`.
#[derive(clap::Args)]
pub(crate) struct BlocksArgs {
    /// First height to show (default: the latest `--limit` blocks).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    from: Option<u64>,
    /// Most blocks to show.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1000))]
    limit: u64,
    #[command(flatten)]
    flags: QueryFlags,
}

/// Flags of `bizra-node impact`.
#[derive(clap::Args)]
pub(crate) struct ImpactArgs {
    /// The Proof-of-Impact hash, `0x` + 64 hex digits.
    poi_hash: String,
    #[command(flatten)]
    flags: QueryFlags,
}

fn print_json(value: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    }
}

/// `bizra-node get ID`: `poi_getAttestation`.
pub(crate) fn get(args: GetArgs) -> Result<()> {
    hex::decode_fixed::<32>(&args.id).map_err(|e| anyhow!("ID `{}`: {e}", args.id))?;
    let result = rpc_call(&args.flags.rpc, "poi_getAttestation", json!([args.id]))?;
    if args.flags.json {
        return print_json(&result);
    }
    let att = &result["attestation"];
    for (label, value) in [
        ("id", &result["id"]),
        ("status", &result["status"]),
        ("height", &result["height"]),
        ("index", &result["index"]),
        ("block", &result["block_hash"]),
        ("attester", &att["attester"]),
        ("poi_hash", &att["poi_hash"]),
        ("timestamp", &att["timestamp"]),
        ("ahsan_score", &att["ahsan_score"]),
        ("context", &att["context"]),
        ("signature", &att["signature"]),
    ] {
        println!("{:<12} {}", format!("{label}:"), text(value));
    }
    Ok(())
}

/// `bizra-node blocks`: `chain_head`, then `chain_getBlock` per height in
/// one JSON-RPC batch.
pub(crate) fn blocks(args: BlocksArgs) -> Result<()> {
    let client = connect(std::slice::from_ref(&args.flags.rpc), 5)?;
    let head = client.chain_head()?.value;
    let head_height = head["committed"]["height"].as_u64().unwrap_or(0);
    let from = args
        .from
        .unwrap_or_else(|| head_height.saturating_sub(args.limit - 1).max(1));
    let to = head_height.min(from.saturating_add(args.limit - 1));
    let calls: Vec<(&str, Value)> = (from..=to)
        .map(|h| ("chain_getBlock", json!([h])))
        .collect();
    let answers = if calls.is_empty() {
        Vec::new()
    } else {
        client.call_batch(&calls)?.value
    };
    let mut blocks = Vec::with_capacity(answers.len());
    for (height, answer) in (from..=to).zip(answers) {
        match answer {
            Ok(block) => blocks.push(block),
            Err(err) => bail!("block {height}: {err}"),
        }
    }
    if args.flags.json {
        return print_json(&Value::Array(blocks));
    }
    if blocks.is_empty() {
        println!("no blocks from height {from} (the head is at height {head_height})");
        return Ok(());
    }
    println!(
        "{:>8}  {:<66}  {:>12}  {:<24}  finalized",
        "height", "block_hash", "attestations", "proposed_at"
    );
    for b in &blocks {
        let proposed = b["proposed_at_ms"]
            .as_u64()
            .map(bizra_crypto::time::format_rfc3339_ms)
            .unwrap_or_else(|| "-".into());
        println!(
            "{:>8}  {:<66}  {:>12}  {:<24}  {}",
            text(&b["height"]),
            text(&b["block_hash"]),
            text(&b["attestation_count"]),
            proposed,
            if b["certificate"].is_null() {
                "no"
            } else {
                "yes"
            }
        );
    }
    Ok(())
}

/// `bizra-node impact POI_HASH`: `poi_getImpact`.
pub(crate) fn impact(args: ImpactArgs) -> Result<()> {
    hex::decode_fixed::<32>(&args.poi_hash)
        .map_err(|e| anyhow!("POI_HASH `{}`: {e}", args.poi_hash))?;
    let result = rpc_call(&args.flags.rpc, "poi_getImpact", json!([args.poi_hash]))?;
    if args.flags.json {
        return print_json(&result);
    }
    println!("poi_hash:           {}", text(&result["poi_hash"]));
    println!("attestations:       {}", text(&result["attestations"]));
    println!(
        "distinct attesters: {}",
        text(&result["distinct_attesters"])
    );
    println!("mean score:         {}", text(&result["mean_score"]));
    println!("min score:          {}", text(&result["min_score"]));
    println!(
        "heights:            {}..={}",
        text(&result["first_height"]),
        text(&result["last_height"])
    );
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
