//! Errors that stop the node (start-up and fatal runtime failures), kept
//! apart from per-request errors ([`crate::api::ApiError`]), which a client
//! gets back while the node keeps running.

use std::path::PathBuf;

/// A config file that cannot be used. Every variant names the key or file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// TOML syntax error or an unknown key (the message names it).
    #[error("config: {0}")]
    Parse(String),
    /// A number outside its allowed range.
    #[error("config key `{key}` = {value} is out of range; allowed {range}")]
    OutOfRange {
        /// Dotted key, e.g. `block.max_attestations`.
        key: &'static str,
        /// The value given.
        value: String,
        /// The allowed range.
        range: String,
    },
    /// A key that is not a setting (in the file or a flag).
    #[error("unknown config key `{key}` in {origin}; the keys are listed in docs/CONFIG.md (`bizra-node config show` prints them all)")]
    UnknownKey {
        /// The dotted key as given.
        key: String,
        /// Where it was given.
        origin: String,
    },
    /// A `BIZRA_` environment variable that names no setting.
    #[error("unknown environment variable {name}: BIZRA_* variables set config keys (BIZRA_ + the dotted key upper-cased with `.` as `_`, e.g. BIZRA_RPC_LISTEN for rpc.listen) and this one names none; unset it or fix its name (docs/CONFIG.md lists them)")]
    UnknownEnv {
        /// The variable.
        name: String,
    },
    /// A value of the wrong type.
    #[error("config key `{key}`: {reason}")]
    BadValue {
        /// Dotted key.
        key: &'static str,
        /// What was expected and what was given.
        reason: String,
    },
    /// Another error, with where the offending value came from.
    #[error("{error} (set by {origin})")]
    Sourced {
        /// `config file PATH`, `environment variable NAME` or `flag FLAG`.
        origin: String,
        /// The error.
        error: Box<ConfigError>,
    },
    /// A value of the right type that is not acceptable.
    #[error("config key `{key}`: {reason}")]
    Invalid {
        /// Dotted key.
        key: &'static str,
        /// What is wrong and what would be right.
        reason: String,
    },
}

impl ConfigError {
    /// The dotted key a value error is about.
    pub fn key(&self) -> Option<&'static str> {
        match self {
            ConfigError::OutOfRange { key, .. }
            | ConfigError::Invalid { key, .. }
            | ConfigError::BadValue { key, .. } => Some(key),
            ConfigError::Sourced { error, .. } => error.key(),
            _ => None,
        }
    }
}

/// Why the node could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The genesis file is missing or invalid.
    #[error("genesis file {path}: {reason}")]
    Genesis {
        /// The genesis file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The admin token file is unreadable, malformed or readable by others.
    #[error("admin token {path}: {reason}")]
    AdminToken {
        /// The token file.
        path: PathBuf,
        /// What is wrong, and what to do.
        reason: String,
    },
    /// The node key is missing, unreadable or malformed.
    #[error("node key {path}: {reason}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong, and what to do.
        reason: String,
    },
    /// Another process holds the data directory's lock.
    #[error("data directory {dir} is in use: another bizra-node process holds its lock {lock}; stop that process first, or give this node its own data_dir")]
    DataDirLocked {
        /// The data directory.
        dir: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },
    /// The data directory cannot be used (format version, I/O).
    #[error("data directory {dir}: {reason}")]
    DataDir {
        /// The data directory.
        dir: PathBuf,
        /// What is wrong, and what to do.
        reason: String,
    },
    /// This node's key is not one of the genesis validators.
    #[error("this node's public key {0} is not a validator in the genesis file; a v1 node must be a genesis validator")]
    NotAValidator(String),
    /// Storage or consensus failed to open or failed at run time.
    #[error("consensus: {0}")]
    Consensus(String),
    /// Client auth is enabled but cannot be set up: the tokens file is
    /// unreadable, malformed, too large or too open, or the JWT issuer key
    /// is invalid. The reason names the file or key and the entry.
    #[error("client auth: {0}")]
    Auth(String),
    /// The p2p service failed to start.
    #[error("p2p: {0}")]
    P2p(String),
    /// The RPC listener could not be bound or served.
    #[error("rpc listener {addr}: {reason}")]
    Rpc {
        /// The address.
        addr: String,
        /// Why it failed, and what to do.
        reason: String,
    },
    /// A critical task ended unexpectedly.
    #[error("critical task `{0}` stopped: {1}")]
    TaskFailed(&'static str, String),
}
