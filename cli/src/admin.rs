//! `bizra-node admin …`: the operator's commands, over the node's admin
//! listener (JSON-RPC with the admin token as a Bearer token).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

/// Where the admin API is and how to authenticate.
#[derive(Args)]
pub(crate) struct AdminArgs {
    /// The node's admin URL (its `admin.listen`).
    #[arg(long, default_value = "http://127.0.0.1:7711")]
    admin: String,
    /// The node's data directory; the token is read from DATA_DIR/admin.token.
    #[arg(long, default_value = "data", conflicts_with = "token_file")]
    data_dir: PathBuf,
    /// The admin token file (instead of --data-dir).
    #[arg(long)]
    token_file: Option<PathBuf>,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Raft status: role, term, leader, indexes, membership, replication.
    Status,
    /// Add a node (not yet a member) as a learner; waits until it caught up.
    AddLearner {
        /// The new node's public key (64 hex digits; `bizra-node init` prints it).
        #[arg(long)]
        public_key: String,
        /// Its p2p multiaddr ending in /p2p/<PeerId>, so members dial it.
        #[arg(long)]
        addr: Option<String>,
        /// Return at once instead of waiting for it to catch up.
        #[arg(long)]
        no_wait: bool,
    },
    /// Make a caught-up learner a voter.
    Promote {
        /// Its node id.
        node_id: u64,
    },
    /// Remove a voter or learner from the membership.
    Remove {
        /// Its node id.
        node_id: u64,
    },
    /// Hand leadership to another voter (default: the most caught-up one).
    TransferLeader {
        /// The voter to lead next.
        node_id: Option<u64>,
    },
    /// Build a snapshot now (the log behind it is purged per
    /// raft.logs_kept_after_snapshot).
    Snapshot,
}

fn read_token(args: &AdminArgs) -> Result<String> {
    let path = args
        .token_file
        .clone()
        .unwrap_or_else(|| args.data_dir.join(bizra_node::admin::ADMIN_TOKEN_FILE));
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read the admin token {}; pass --data-dir of the node or --token-file",
            path.display()
        )
    })?;
    Ok(text.trim().to_string())
}

/// Calls one admin method and returns its result.
pub(crate) fn call(url: &str, token: &str, method: &str, params: Value) -> Result<Value> {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(180))
        .build();
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let response = match agent
        .post(url)
        .set("Authorization", &format!("Bearer {token}"))
        .send_json(body)
    {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => return Err(anyhow!("cannot reach the admin API at {url}: {e}")),
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

pub(crate) fn run(args: AdminArgs) -> Result<()> {
    let token = read_token(&args)?;
    let (method, params) = match &args.command {
        AdminCommand::Status => ("admin_status", json!({})),
        AdminCommand::AddLearner {
            public_key,
            addr,
            no_wait,
        } => (
            "admin_addLearner",
            json!({"public_key": public_key, "addr": addr, "wait": !no_wait}),
        ),
        AdminCommand::Promote { node_id } => ("admin_promote", json!({"node_id": node_id})),
        AdminCommand::Remove { node_id } => ("admin_remove", json!({"node_id": node_id})),
        AdminCommand::TransferLeader { node_id } => {
            ("admin_transferLeader", json!({"node_id": node_id}))
        }
        AdminCommand::Snapshot => ("admin_snapshot", json!({})),
    };
    let result = call(&args.admin, &token, method, params)?;
    println!("{}", serde_json::to_string_pretty(&result)?);
    Ok(())
}
