//! Admission: the checks a node makes before an attestation may be ordered,
//! in PROTOCOL.md's order (shape → signature → freshness → score); the dedup
//! step needs state and lives with the submission path.
//!
//! Pure functions of their inputs: "now" is passed in, so the same checks
//! run identically in tests, on the node that was asked and on the leader a
//! submission was forwarded to.

use std::sync::Arc;

use bizra_crypto::{Attestation, Hash, Policy, Verifier};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use crate::api::ApiError;

/// Most attestations verified in one batch.
const MAX_VERIFY_BATCH: usize = 1024;

/// Client submissions that arrive fewer than this many together are
/// verified strictly, one at a time, and remembered for apply; larger
/// groups go through `verify_batch`. Batch-verified attestations are
/// verified again, strictly, when applied, so a batch only pays while its
/// share is well below a strict check (criterion, `cargo bench -p
/// bizra-benches --bench crypto -- verify/`: a batch of 1 costs 1.11
/// strict checks, of 4 0.65 per item, of 16 0.52). Below 8 the strict
/// check is cheaper overall and, for a client waiting for the commit,
/// faster too; a lone sequential client saves one verification per
/// submission.
const STRICT_BELOW: usize = 8;

/// Shape check: parse the client's JSON text strictly.
pub fn parse(json_text: &str) -> Result<Attestation, ApiError> {
    Ok(Attestation::from_json_str(json_text)?)
}

/// Steps 1–4 of the admission policy for an already-parsed attestation.
/// Returns the attestation id on success.
pub fn check(
    att: &Attestation,
    chain_id: &Hash,
    policy: &Policy,
    now_ms: u64,
) -> Result<Hash, ApiError> {
    att.check_shape()?;
    att.verify_strict(chain_id)?;
    check_freshness(att.timestamp_ms, policy, now_ms)?;
    check_score(att.ahsan_score, policy)?;
    Ok(att.id(chain_id))
}

/// One item of a validation batch: the attestation when it parsed, and the
/// admission verdict.
pub(crate) struct BatchItem {
    pub(crate) attestation: Option<Attestation>,
    pub(crate) result: Result<(), ApiError>,
}

/// Steps 1–4 for a batch of raw JSON texts, in the protocol's order per
/// item: shape first (a malformed item never reaches the signature batch),
/// then one `verify_batch` over the well-formed items, then freshness and
/// score. Shared by `poi_validateBatch` and `POST /v1/validate/batch`.
pub(crate) fn check_batch<'a>(
    raws: impl IntoIterator<Item = &'a str>,
    chain_id: &Hash,
    policy: &Policy,
    now_ms: u64,
) -> Vec<BatchItem> {
    let mut out = Vec::new();
    let mut positions = Vec::new();
    let mut shaped = Vec::new();
    for (i, raw) in raws.into_iter().enumerate() {
        match parse(raw) {
            Ok(att) => {
                let result = att.check_shape().map_err(ApiError::from);
                if result.is_ok() {
                    positions.push(i);
                    shaped.push(att.clone());
                }
                out.push(BatchItem {
                    attestation: Some(att),
                    result,
                });
            }
            Err(e) => out.push(BatchItem {
                attestation: None,
                result: Err(e),
            }),
        }
    }
    let signatures = bizra_crypto::verify_batch(chain_id, &shaped);
    for ((i, att), signature_ok) in positions.into_iter().zip(&shaped).zip(signatures) {
        let checked = if signature_ok {
            check_freshness(att.timestamp_ms, policy, now_ms)
                .and_then(|()| check_score(att.ahsan_score, policy))
        } else {
            Err(ApiError::InvalidSignature)
        };
        if let Some(item) = out.get_mut(i) {
            item.result = checked;
        }
    }
    out
}

/// Step 3: `now - max_age <= timestamp <= now + max_future_skew`.
pub(crate) fn check_freshness(
    timestamp_ms: u64,
    policy: &Policy,
    now_ms: u64,
) -> Result<(), ApiError> {
    let oldest = now_ms.saturating_sub(policy.max_age_s.saturating_mul(1000));
    let newest = now_ms.saturating_add(policy.max_future_skew_s.saturating_mul(1000));
    if timestamp_ms < oldest {
        return Err(ApiError::ExpiredTimestamp(format!(
            "timestamp is {} ms older than the node's clock; at most {} s old is accepted",
            now_ms - timestamp_ms,
            policy.max_age_s
        )));
    }
    if timestamp_ms > newest {
        return Err(ApiError::ExpiredTimestamp(format!(
            "timestamp is {} ms ahead of the node's clock; at most {} s ahead is accepted",
            timestamp_ms - now_ms,
            policy.max_future_skew_s
        )));
    }
    Ok(())
}

/// Step 4: `ahsan_score >= min_ahsan_score` (both in hundredths).
pub(crate) fn check_score(score_centi: u16, policy: &Policy) -> Result<(), ApiError> {
    if score_centi < policy.min_ahsan_score {
        return Err(ApiError::AhsanScoreTooLow(format!(
            "ahsan_score {} is below the cluster minimum {}",
            centi_text(score_centi),
            centi_text(policy.min_ahsan_score)
        )));
    }
    Ok(())
}

/// Which checks a queued attestation gets besides shape and signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checks {
    /// A client's submission: all of PROTOCOL.md's admission policy.
    Client,
    /// Received by gossip from a validator that already admitted it:
    /// freshness was that validator's decision at admission time (it is
    /// checked at admission only), so only shape, signature and score.
    Gossip,
}

struct Job {
    attestation: Attestation,
    checks: Checks,
    reply: oneshot::Sender<Result<Hash, ApiError>>,
}

/// Admission with batched signature verification: requests that arrive
/// together (at least [`STRICT_BELOW`] of them) are checked together with
/// `verify_batch` (falling back to single strict checks to find a bad
/// one), an admission decision only: apply re-verifies them with
/// `verify_strict`. Smaller groups and gossip are checked strictly and
/// remembered, so apply does not verify them again. The queue in front is
/// bounded; a full queue answers OVERLOADED at once.
#[derive(Clone)]
pub struct Admitter {
    tx: mpsc::Sender<Job>,
    capacity: usize,
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl Admitter {
    /// Starts the verifier: `parallel` batches may be verified at once (one
    /// per core is right; verification is CPU-bound).
    pub fn start(
        chain_id: Hash,
        policy: Policy,
        capacity: usize,
        parallel: usize,
        verifier: Arc<Verifier>,
        shutdown: watch::Receiver<bool>,
    ) -> (Admitter, impl std::future::Future<Output = ()>) {
        let (tx, rx) = mpsc::channel(capacity);
        let task = run_verifier(rx, chain_id, policy, parallel.max(1), verifier, shutdown);
        (
            Admitter {
                tx,
                capacity,
                metrics: None,
            },
            task,
        )
    }

    /// Counts every decision in `bizra_admissions_total` from now on.
    pub(crate) fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Attestations waiting for verification (`bizra_admission_queue_depth`).
    pub fn queue_depth(&self) -> usize {
        self.tx.max_capacity().saturating_sub(self.tx.capacity())
    }

    /// Runs the admission checks (shape → signature → freshness → score)
    /// and returns the attestation id.
    pub async fn check(&self, attestation: Attestation, checks: Checks) -> Result<Hash, ApiError> {
        let result = self.check_uncounted(attestation, checks).await;
        if let Some(m) = &self.metrics {
            m.admission(checks.into(), &result);
        }
        result
    }

    async fn check_uncounted(
        &self,
        attestation: Attestation,
        checks: Checks,
    ) -> Result<Hash, ApiError> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            attestation,
            checks,
            reply,
        };
        match self.tx.try_send(job) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                return Err(ApiError::Overloaded {
                    capacity: self.capacity,
                    retry_after_ms: crate::api::RETRY_OVERLOADED_MS,
                })
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(shutting_down()),
        }
        rx.await.unwrap_or_else(|_| Err(shutting_down()))
    }
}

fn shutting_down() -> ApiError {
    ApiError::Unavailable {
        message: "node is shutting down".into(),
        retry_after_ms: crate::api::RETRY_NO_LEADER_MS,
    }
}

async fn run_verifier(
    mut rx: mpsc::Receiver<Job>,
    chain_id: Hash,
    policy: Policy,
    parallel: usize,
    verifier: Arc<Verifier>,
    mut shutdown: watch::Receiver<bool>,
) {
    let cores = Arc::new(Semaphore::new(parallel));
    loop {
        let Ok(permit) = cores.clone().acquire_owned().await else {
            return;
        };
        let first = tokio::select! {
            job = rx.recv() => match job { Some(j) => j, None => return },
            _ = shutdown.changed() => return,
        };
        // What was queued when this loop woke arrived together; what the
        // gather adds came in the next scheduler passes (at saturation,
        // other connections' submissions). Both go to one blocking thread,
        // one hand-off instead of one per submission.
        let together = rx.len() + 1;
        crate::tasks::gather(&rx, MAX_VERIFY_BATCH).await;
        let mut jobs = Vec::with_capacity((rx.len() + 1).min(MAX_VERIFY_BATCH));
        jobs.push(first);
        while jobs.len() < MAX_VERIFY_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let policy = policy.clone();
        let verifier = verifier.clone();
        tokio::task::spawn_blocking(move || {
            verify_jobs(jobs, together, &chain_id, &policy, &verifier);
            drop(permit);
        });
    }
}

/// Checks a batch in the protocol's order: shape first (a malformed item
/// never reaches a signature check), then the signature, then the clock and
/// score policy per item. Signatures: a strict, remembered check per
/// gossiped item and per client submission of a small group (see
/// [`STRICT_BELOW`]); one batch check for a larger group of client
/// submissions among the first `together` jobs, those that were queued
/// together. The jobs gathered after them are checked strictly: a batch
/// check is verified again at apply, on the one thread that applies
/// blocks, so at saturation it would cost more than it saves.
fn verify_jobs(
    jobs: Vec<Job>,
    together: usize,
    chain_id: &Hash,
    policy: &Policy,
    verifier: &Verifier,
) {
    let now = crate::now_ms();
    let mut clients = Vec::with_capacity(together.min(jobs.len()));
    let mut strict = Vec::with_capacity(jobs.len());
    for (i, job) in jobs.into_iter().enumerate() {
        if let Err(e) = job.attestation.check_shape() {
            let _ = job.reply.send(Err(e.into()));
            continue;
        }
        match job.checks {
            Checks::Client if i < together => clients.push(job),
            Checks::Client => strict.push(job),
            // Gossip: strict, one at a time, and remembered. The node will
            // apply these attestations, and apply needs the strict answer
            // anyway; so verifying strictly here (and not again at apply)
            // costs one verification per node instead of a batch share plus
            // one. Large groups of client submissions keep the batch: their
            // answer is the latency a client sees, and the batch is up to
            // 2.6x faster.
            Checks::Gossip => strict.push(job),
        }
    }
    if clients.len() < STRICT_BELOW {
        strict.append(&mut clients);
    }
    for job in strict {
        let result = match verifier.verify_strict(&job.attestation, chain_id) {
            Ok(()) => finish(&job, chain_id, policy, now),
            Err(_) => Err(ApiError::InvalidSignature),
        };
        let _ = job.reply.send(result);
    }
    if clients.is_empty() {
        return;
    }
    let atts: Vec<Attestation> = clients.iter().map(|j| j.attestation.clone()).collect();
    let valid = verifier.verify_batch(chain_id, &atts);
    for (job, sig_ok) in clients.into_iter().zip(valid) {
        let result = if sig_ok {
            finish(&job, chain_id, policy, now)
        } else {
            Err(ApiError::InvalidSignature)
        };
        let _ = job.reply.send(result);
    }
}

/// The checks after the signature: freshness (client submissions only;
/// gossip may carry attestations that were fresh when first admitted), the
/// cluster's minimum score, then the id.
fn finish(job: &Job, chain_id: &Hash, policy: &Policy, now: u64) -> Result<Hash, ApiError> {
    match job.checks {
        Checks::Client => check_freshness(job.attestation.timestamp_ms, policy, now)?,
        Checks::Gossip => {}
    }
    check_score(job.attestation.ahsan_score, policy)?;
    Ok(job.attestation.id(chain_id))
}

fn centi_text(centi: u16) -> String {
    format!("{}.{:02}", centi / 100, centi % 100)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bizra_crypto::FinalityPolicy;

    fn policy() -> Policy {
        Policy {
            min_ahsan_score: 9500,
            max_age_s: 300,
            max_future_skew_s: 30,
            finality: FinalityPolicy::Majority,
        }
    }

    #[test]
    fn freshness_window_edges() {
        let now = 1_800_000_000_000;
        let p = policy();
        assert!(check_freshness(now - 300_000, &p, now).is_ok());
        assert!(check_freshness(now - 300_001, &p, now).is_err());
        assert!(check_freshness(now + 30_000, &p, now).is_ok());
        assert!(check_freshness(now + 30_001, &p, now).is_err());
        assert_eq!(
            check_freshness(0, &p, now).unwrap_err().name(),
            "EXPIRED_TIMESTAMP"
        );
    }

    #[test]
    fn score_threshold_is_inclusive() {
        let p = policy();
        assert!(check_score(9500, &p).is_ok());
        let e = check_score(9499, &p).unwrap_err();
        assert_eq!(e.name(), "AHSAN_SCORE_TOO_LOW");
        assert!(e.to_string().contains("94.99"), "{e}");
    }

    type Reply = oneshot::Receiver<Result<Hash, ApiError>>;

    /// Signed, fresh attestations; `bad` ones have a flipped signature bit.
    fn jobs(n: usize, bad: &[usize]) -> (Hash, Vec<Job>, Vec<Reply>) {
        let chain = [7u8; 32];
        let key = bizra_crypto::keys::generate();
        let now = crate::now_ms();
        let mut jobs = Vec::new();
        let mut replies = Vec::new();
        for i in 0..n {
            let poi = *blake3::hash(&(i as u64).to_be_bytes()).as_bytes();
            let mut attestation =
                Attestation::sign(&key, &chain, poi, now, 9_900, String::new()).expect("sign");
            if bad.contains(&i) {
                attestation.signature[3] ^= 1;
            }
            let (reply, rx) = oneshot::channel();
            jobs.push(Job {
                attestation,
                checks: Checks::Client,
                reply,
            });
            replies.push(rx);
        }
        (chain, jobs, replies)
    }

    #[test]
    fn small_client_groups_are_verified_strictly_and_remembered_large_ones_batched() {
        // (jobs, how many of them were queued together, strict successes
        // remembered). Job n / 2 has a bad signature; only strict successes
        // are remembered.
        for (n, together, remembered) in [
            (1, 1, 0),
            (STRICT_BELOW - 1, STRICT_BELOW - 1, STRICT_BELOW - 2),
            (STRICT_BELOW, STRICT_BELOW, 0),
            (40, 40, 0),
            // Gathered one scheduler pass after another: each strictly.
            (40, 1, 39),
            (40, STRICT_BELOW - 1, 39),
            // A batch of those queued together (the bad one among them),
            // the gathered rest strictly.
            (40, 30, 10),
        ] {
            let bad = [n / 2];
            let (chain, jobs, replies) = jobs(n, &bad);
            let verifier = Verifier::default();
            verify_jobs(jobs, together, &chain, &policy(), &verifier);
            assert_eq!(verifier.remembered(), remembered, "{together} of {n}");
            for (i, mut rx) in replies.into_iter().enumerate() {
                let answer = rx.try_recv().expect("answered");
                if bad.contains(&i) {
                    assert_eq!(
                        answer.unwrap_err().name(),
                        "INVALID_SIGNATURE",
                        "{together} of {n}, item {i}"
                    );
                } else {
                    assert!(answer.is_ok(), "{together} of {n}, item {i}: {answer:?}");
                }
            }
        }
    }
}
