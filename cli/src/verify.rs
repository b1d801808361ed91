//! Receipt commands: `bizra-node verify` checks a receipt offline against
//! the genesis file (PROTOCOL.md "Receipt", steps 0 to 6), and
//! `bizra-node receipt` fetches one from a node.
//!
//! Owns: reading receipt files (size-limited), printing a verdict a script
//! can rely on (first line `OK` or the failure name; exit status 0 when
//! valid, 1 when not, 2 when the inputs cannot be read), and writing
//! receipts to files. Must not: touch the network in `verify` (a receipt
//! is worth something only because anyone can check it with the genesis
//! file alone), or re-implement any check (they are
//! `bizra_crypto::verify_receipt_json`).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use bizra_crypto::{hex, verify_receipt_json, Receipt};
use serde_json::{json, Value};

/// Largest receipt file read: a receipt is a few KiB (a 32-step audit path
/// and a handful of votes).
const MAX_RECEIPT_BYTES: u64 = 1 << 20;

/// Exit status of `verify` when the receipt fails a check.
const EXIT_INVALID: i32 = 1;
/// Exit status of `verify` when the receipt or genesis cannot be read.
const EXIT_UNUSABLE: i32 = 2;

/// Flags of `bizra-node verify`.
#[derive(clap::Args)]
pub(crate) struct VerifyArgs {
    /// The receipt file (the JSON `poi_getReceipt` returns).
    receipt: PathBuf,
    /// The cluster's genesis file: the only thing trusted.
    #[arg(long)]
    genesis: PathBuf,
    /// Print the verdict as one JSON object.
    #[arg(long)]
    json: bool,
}

/// Flags of `bizra-node receipt`.
#[derive(clap::Args)]
pub(crate) struct ReceiptArgs {
    /// The attestation id, `0x` + 64 hex digits.
    id: String,
    /// The node's JSON-RPC URL (any node).
    #[arg(long, default_value = "http://127.0.0.1:7710")]
    rpc: String,
    /// Also write the receipt to this file (pretty JSON), ready for
    /// `bizra-node verify`.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the receipt JSON instead of a summary.
    #[arg(long)]
    json: bool,
}

/// `bizra-node verify`: never returns on a verdict (the exit status is
/// the answer); returns an error only if printing fails.
pub(crate) fn verify(args: VerifyArgs) -> Result<()> {
    let inputs = read_limited(&args.receipt).and_then(|text| {
        let genesis = bizra_node::load_genesis(&args.genesis).map_err(|e| anyhow!("{e}"))?;
        Ok((text, genesis))
    });
    let (text, genesis) = match inputs {
        Ok(inputs) => inputs,
        Err(e) => {
            eprintln!("bizra-node verify: {e:#}");
            std::process::exit(EXIT_UNUSABLE);
        }
    };
    let mut out = std::io::stdout().lock();
    let status = match verify_receipt_json(&text, &genesis) {
        Ok(receipt) => {
            if args.json {
                writeln!(
                    out,
                    "{}",
                    json!({"ok": true, "id": hex::encode(&receipt.id),
                    "height": receipt.block.height, "block_hash": hex::encode(&receipt.block_hash)})
                )?;
            } else {
                writeln!(out, "OK")?;
                write_summary(&mut out, &receipt, Some(genesis.threshold()))?;
            }
            0
        }
        Err(failure) => {
            if args.json {
                writeln!(
                    out,
                    "{}",
                    json!({"ok": false, "failure": failure.name(),
                    "reason": failure.to_string()})
                )?;
            } else {
                writeln!(out, "{}", failure.name())?;
                writeln!(out, "reason: {failure}")?;
            }
            EXIT_INVALID
        }
    };
    out.flush()?;
    drop(out);
    std::process::exit(status);
}

fn write_summary(out: &mut impl Write, receipt: &Receipt, threshold: Option<usize>) -> Result<()> {
    writeln!(out, "id:          {}", hex::encode(&receipt.id))?;
    writeln!(
        out,
        "attester:    {}",
        hex::encode(&receipt.attestation.attester)
    )?;
    writeln!(
        out,
        "block:       height {} ({})",
        receipt.block.height,
        hex::encode(&receipt.block_hash)
    )?;
    writeln!(
        out,
        "index:       {} (of {} in the block)",
        receipt.index, receipt.block.attestation_count
    )?;
    match &receipt.certificate {
        Some(c) => match threshold {
            Some(t) => writeln!(
                out,
                "certificate: {} validator votes (threshold {t})",
                c.votes.len()
            )?,
            None => writeln!(out, "certificate: {} validator votes", c.votes.len())?,
        },
        None => writeln!(out, "certificate: none (not finalized)")?,
    }
    Ok(())
}

fn read_limited(path: &Path) -> Result<String> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut std::io::Read::take(file, MAX_RECEIPT_BYTES + 1),
        &mut text,
    )
    .with_context(|| format!("cannot read {} as UTF-8 text", path.display()))?;
    if text.len() as u64 > MAX_RECEIPT_BYTES {
        return Err(anyhow!(
            "{} is over {MAX_RECEIPT_BYTES} bytes; not a receipt",
            path.display()
        ));
    }
    Ok(text)
}

/// Writes a receipt as pretty JSON, the form `verify` reads.
pub(crate) fn write_receipt(path: &Path, receipt: &Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(receipt)?;
    text.push('\n');
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// `bizra-node receipt`: fetch with `poi_getReceipt`, print, optionally
/// write to a file.
pub(crate) fn receipt(args: ReceiptArgs) -> Result<()> {
    let receipt = crate::client::rpc_call(&args.rpc, "poi_getReceipt", json!([args.id]))?;
    if let Some(path) = &args.out {
        write_receipt(path, &receipt)?;
    }
    if args.json {
        println!("{receipt}");
        return Ok(());
    }
    // Summarise from the parsed receipt (no checks: that is `verify`).
    let parsed = Receipt::from_json_str(&receipt.to_string())
        .map_err(|e| anyhow!("the node answered a receipt that does not parse: {e}"))?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "status:      {}",
        if parsed.certificate.is_some() {
            "finalized"
        } else {
            "committed"
        }
    )?;
    write_summary(&mut out, &parsed, None)?;
    if let Some(path) = &args.out {
        writeln!(out, "written to:  {}", path.display())?;
    }
    Ok(())
}
