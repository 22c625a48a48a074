//! One client's LLM calls against the rest: a jailbreak or prompt-injection
//! campaign shows as one user's calls refused (`content_filter`) or denied
//! by a guardrail far more often than anyone's; cost harvesting as one
//! user's calls using far more tokens than real traffic. The window's mix
//! of answers and its token counts are the output and drift detectors'
//! to judge; here each client is tested alone (`clients::worst`), so that a
//! campaign a few percent of a busy model's traffic is still named.
//!
//! - `refusals_per_client` (threat *jailbreak*): the share of a client's
//!   calls answered with one of `refusal_labels` (the output label: a
//!   finish reason, or a guardrail's decision).
//! - `tokens_per_client` (threat *cost_harvesting*): the share of its calls
//!   whose token usage (the event's `*_tokens` features summed) is beyond
//!   the reference's `token_quantile`.
//!
//! The reference's rates are counted from its frame at each window: LLM
//! references are small, and this keeps the detector in one file.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::clients;
use super::frame::Sender;
use super::threat::Threat;
use super::{DetectError, Detector, Engine, Frame, Reference, Score, stats};

/// How many of the client's calls a score names.
const EXAMPLES: usize = 5;

pub struct LlmClients {
    pub config: LlmClientsConfig,
}

impl Detector for LlmClients {
    fn name(&self) -> &'static str {
        "llm_clients"
    }

    fn score(
        &self,
        _engine: &Engine,
        reference: &Reference,
        window: &Frame,
    ) -> Result<Vec<Score>, DetectError> {
        if !is_llm(reference) {
            return Ok(Vec::new());
        }
        let mut scores = Vec::new();
        scores.extend(self.refusals(&reference.frame, window));
        scores.extend(self.tokens(&reference.frame, window));
        Ok(scores)
    }
}

/// Whether the model is an LLM's or a guardrail's (as `otlp-genai` names
/// them): a tabular model's class may be spelt `deny` without being a
/// refusal.
fn is_llm(reference: &Reference) -> bool {
    let m = &reference.model;
    reference.frame.tokens.iter().any(Option::is_some)
        || m.ends_with("/guardrail")
        || m == "apply_guardrail"
}

impl LlmClients {
    fn refused(&self, s: &Sender) -> bool {
        s.predicted.as_deref().is_some_and(|l| {
            self.config
                .refusal_labels
                .iter()
                .any(|r| r.eq_ignore_ascii_case(l))
        })
    }

    /// Per client, its share of refused calls among its answered ones.
    fn refusals(&self, reference: &Frame, window: &Frame) -> Option<Score> {
        fn answered(f: &Frame) -> impl Iterator<Item = &Sender> {
            f.senders.iter().filter(|s| s.predicted.is_some())
        }
        let n_ref = answered(reference).count() as u64;
        let k_ref = answered(reference).filter(|s| self.refused(s)).count() as u64;
        if n_ref == 0 {
            return None;
        }
        let calls: Vec<&Sender> = answered(window).collect();
        let w = clients::worst_of(calls.iter().map(|s| (*s, self.refused(s))), (k_ref, n_ref))?;
        let examples = calls
            .iter()
            .filter(|s| self.refused(s) && w.sent(s.client_id.as_deref()))
            .take(EXAMPLES)
            .map(|s| {
                format!(
                    "{} answer={}",
                    s.label(),
                    s.predicted.as_deref().unwrap_or("")
                )
            })
            .collect();
        let signal = clients::Signal {
            detector: self.name(),
            feature: "refusals_per_client".into(),
            test: "refusal_client_fisher",
            marks: format!("refused ({})", self.config.refusal_labels.join("|")),
            reference: (k_ref, n_ref),
            threat: Threat::Jailbreak,
        };
        Some(w.score(signal, examples))
    }

    /// Per client, its share of calls beyond the reference's token quantile.
    fn tokens(&self, reference: &Frame, window: &Frame) -> Option<Score> {
        let mut used: Vec<f64> = reference.tokens.iter().flatten().copied().collect();
        if (used.len() as f64) * (1.0 - self.config.token_quantile) < 5.0 {
            return None;
        }
        used.sort_by(f64::total_cmp);
        let line = stats::quantile_sorted(&used, self.config.token_quantile);
        let k_ref = used.iter().filter(|u| **u > line).count() as u64;
        let calls: Vec<(f64, &Sender)> = window
            .tokens
            .iter()
            .zip(&window.senders)
            .filter_map(|(t, s)| Some(((*t)?, s)))
            .collect();
        let requests = calls.iter().map(|(t, s)| (*s, *t > line));
        let w = clients::worst_of(requests, (k_ref, used.len() as u64))?;
        let mut heavy: Vec<&(f64, &Sender)> = calls
            .iter()
            .filter(|(t, s)| *t > line && w.sent(s.client_id.as_deref()))
            .collect();
        heavy.sort_by(|a, b| b.0.total_cmp(&a.0));
        let examples = heavy
            .iter()
            .take(EXAMPLES)
            .map(|(t, s)| format!("{} tokens={t}", s.label()))
            .collect();
        let signal = clients::Signal {
            detector: self.name(),
            feature: "tokens_per_client".into(),
            test: "token_usage_client_fisher",
            marks: format!(
                "over {line} tokens (reference q{})",
                self.config.token_quantile
            ),
            reference: (k_ref, used.len() as u64),
            threat: Threat::CostHarvesting,
        };
        Some(w.score(signal, examples))
    }
}

/// Clients whose LLM calls are refused, or use tokens, far more than
/// others'.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct LlmClientsConfig {
    /// Score each client's refusals and token usage.
    pub enabled: bool,
    /// Output labels that mean the call was refused: finish reasons as
    /// providers spell them (`content_filter`, `refusal`, `safety`,
    /// `guardrail_intervened`, `content_filtered`; compared without case)
    /// and guardrail decisions (`deny`).
    pub refusal_labels: Vec<String>,
    /// A call uses many tokens beyond this quantile of the reference's.
    pub token_quantile: f64,
}

impl Default for LlmClientsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            refusal_labels: [
                "content_filter",
                "refusal",
                "safety",
                "guardrail_intervened",
                "content_filtered",
                "deny",
            ]
            .map(String::from)
            .to_vec(),
            token_quantile: 0.99,
        }
    }
}

impl LlmClientsConfig {
    pub fn validate(&self) -> Result<(), String> {
        let q = self.token_quantile;
        if !(q > 0.5 && q < 1.0) {
            return Err(format!(
                "detect.llm_clients.token_quantile must lie in (0.5, 1), got {q}"
            ));
        }
        Ok(())
    }
}
