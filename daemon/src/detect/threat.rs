//! The attacks a security signal is evidence for, named as a SOC names them:
//! MITRE ATLAS technique ids and OWASP ML / LLM Top 10 ids (the table in
//! ../shared/docs/formats.md). A detector tags its score; the tag travels
//! with the alert into every receiver.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Threat {
    /// Inputs crafted to be misclassified, seen as requests unlike the
    /// reference.
    Evasion,
    /// The serving model's outputs changed with no new version behind them.
    Tampering,
    /// The outputs changed with a new version: what it was trained on or
    /// shipped with (a backdoor) is suspect.
    Poisoning,
    /// Queries that sweep the input space, as a copy of the model is
    /// trained from its answers.
    Extraction,
    /// Prompts written to make an LLM ignore its instructions or its
    /// guardrails, seen as one client's refusals and guardrail denials.
    Jailbreak,
    /// One client running up an LLM's bill or tying up its capacity, seen
    /// as its calls' token usage.
    CostHarvesting,
}

impl Threat {
    pub const ALL: [Threat; 6] = [
        Threat::Evasion,
        Threat::Tampering,
        Threat::Poisoning,
        Threat::Extraction,
        Threat::Jailbreak,
        Threat::CostHarvesting,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Threat::Evasion => "evasion",
            Threat::Tampering => "tampering",
            Threat::Poisoning => "poisoning",
            Threat::Extraction => "extraction",
            Threat::Jailbreak => "jailbreak",
            Threat::CostHarvesting => "cost_harvesting",
        }
    }

    /// MITRE ATLAS techniques (names as of ATLAS v5).
    pub fn techniques(self) -> &'static [Technique] {
        match self {
            Threat::Evasion => &[EVADE, BLACK_BOX_OPTIMIZATION, VERIFY_ATTACK],
            Threat::Tampering => &[MANIPULATE_MODEL, SUPPLY_CHAIN],
            Threat::Poisoning => &[POISON_TRAINING_DATA, POISON_MODEL, BACKDOOR_TRIGGER],
            Threat::Extraction => &[EXTRACT_MODEL, PROXY_VIA_REPLICATION],
            Threat::Jailbreak => &[PROMPT_INJECTION, JAILBREAK],
            Threat::CostHarvesting => &[COST_HARVESTING, DENIAL_OF_SERVICE],
        }
    }

    /// The MITRE ATLAS technique ids.
    pub fn atlas(self) -> Vec<&'static str> {
        self.techniques().iter().map(|t| t.id).collect()
    }

    /// OWASP Machine Learning Security Top 10 (ML..) and LLM Top 10 (LLM..) ids.
    pub fn owasp(self) -> &'static [&'static str] {
        match self {
            Threat::Evasion => &["ML01"],
            Threat::Tampering => &["ML06", "ML09"],
            Threat::Poisoning => &["ML02", "ML10", "LLM04"],
            Threat::Extraction => &["ML05", "LLM10"],
            Threat::Jailbreak => &["LLM01"],
            Threat::CostHarvesting => &["LLM10"],
        }
    }

    /// One line for an analyst: what the signal suggests.
    pub fn description(self) -> &'static str {
        match self {
            Threat::Evasion => {
                "inputs unlike anything in the reference: adversarial or evasion probing of the model"
            }
            Threat::Tampering => {
                "the model's outputs changed with no new version deployed: the serving model or its pipeline may have been altered"
            }
            Threat::Poisoning => {
                "the outputs changed with a new model version: its training data or artefact may be poisoned or backdoored"
            }
            Threat::Extraction => {
                "one client's queries sweep the input space far more evenly than real traffic: the model may be being copied through its API"
            }
            Threat::Jailbreak => {
                "one client's calls are refused or denied by the guardrails far more often than others': prompt injection or jailbreak attempts"
            }
            Threat::CostHarvesting => {
                "one client's calls use far more tokens than real traffic: the service's cost or capacity is being harvested"
            }
        }
    }
}

/// A MITRE ATLAS technique, or a sub-technique with its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Technique {
    pub id: &'static str,
    pub name: &'static str,
    pub parent: Option<(&'static str, &'static str)>,
}

const fn technique(id: &'static str, name: &'static str) -> Technique {
    Technique {
        id,
        name,
        parent: None,
    }
}

const EVADE: Technique = technique("AML.T0015", "Evade AI Model");
const VERIFY_ATTACK: Technique = technique("AML.T0042", "Verify Attack");
const CRAFT: (&str, &str) = ("AML.T0043", "Craft Adversarial Data");
const BLACK_BOX_OPTIMIZATION: Technique = Technique {
    id: "AML.T0043.001",
    name: "Black-Box Optimization",
    parent: Some(CRAFT),
};
const BACKDOOR_TRIGGER: Technique = Technique {
    id: "AML.T0043.004",
    name: "Insert Backdoor Trigger",
    parent: Some(CRAFT),
};
const MANIPULATE_MODEL: Technique = technique("AML.T0018", "Manipulate AI Model");
const POISON_MODEL: Technique = Technique {
    id: "AML.T0018.000",
    name: "Poison AI Model",
    parent: Some(("AML.T0018", "Manipulate AI Model")),
};
const SUPPLY_CHAIN: Technique = technique("AML.T0010", "AI Supply Chain Compromise");
const POISON_TRAINING_DATA: Technique = technique("AML.T0020", "Poison Training Data");
const EXTRACT_MODEL: Technique = Technique {
    id: "AML.T0024.002",
    name: "Extract AI Model",
    parent: Some(("AML.T0024", "Exfiltration via AI Inference API")),
};
const PROXY_VIA_REPLICATION: Technique = Technique {
    id: "AML.T0005.001",
    name: "Train Proxy via Replication",
    parent: Some(("AML.T0005", "Create Proxy AI Model")),
};

const PROMPT_INJECTION: Technique = technique("AML.T0051", "LLM Prompt Injection");
const JAILBREAK: Technique = technique("AML.T0054", "LLM Jailbreak");
const COST_HARVESTING: Technique = technique("AML.T0034", "Cost Harvesting");
const DENIAL_OF_SERVICE: Technique = technique("AML.T0029", "Denial of AI Service");

#[cfg(test)]
mod tests {
    use super::*;

    /// Every id is spelt as ATLAS and OWASP spell them.
    #[test]
    fn ids_are_well_formed() {
        for t in Threat::ALL {
            assert!(!t.atlas().is_empty() && !t.owasp().is_empty());
            for tech in t.techniques() {
                if let Some((parent, _)) = tech.parent {
                    assert!(tech.id.starts_with(&format!("{parent}.")), "{tech:?}");
                }
            }
            for id in t.atlas() {
                let rest = id.strip_prefix("AML.T").unwrap();
                let (num, sub) = rest.split_once('.').unwrap_or((rest, "000"));
                assert!(
                    num.len() == 4 && num.chars().all(|c| c.is_ascii_digit()),
                    "{id}"
                );
                assert!(
                    sub.len() == 3 && sub.chars().all(|c| c.is_ascii_digit()),
                    "{id}"
                );
            }
            for id in t.owasp() {
                let num = id
                    .strip_prefix("ML")
                    .or_else(|| id.strip_prefix("LLM"))
                    .unwrap();
                assert!(
                    num.len() == 2 && num.chars().all(|c| c.is_ascii_digit()),
                    "{id}"
                );
            }
            let back: Threat = serde_json::from_str(&format!("\"{}\"", t.as_str())).unwrap();
            assert_eq!(back, t);
        }
    }
}
