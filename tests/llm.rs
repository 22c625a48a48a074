//! LLM traffic as OpenTelemetry GenAI spans, serialised by the OpenTelemetry
//! project's own generated types as the Collector's Kafka exporter writes
//! them, decoded by `otlp-genai` and scored: one model's refusal rate and
//! token usage moving, and single users running a jailbreak campaign or
//! harvesting tokens among many.

mod common;

use common::{daemon_binary, succeeded};
use modelwatch::decode::{Decoder, OtlpGenaiConfig, OtlpGenaiDecoder};
use modelwatch::detect::threat::Threat;
use modelwatch::detect::{DeviceChoice, Scorer, engine::Engine};
use modelwatch::event::TelemetryEvent;
use modelwatch::judge::{JudgeConfig, Judged, judge};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..KeyValue::default()
    }
}

/// One chat call: its user, finish reason and token counts; trace ids
/// count up from `n`.
fn chat(n: u64, user: &str, finish: &str, tokens: (i64, i64)) -> Span {
    let start = 1_764_000_000_000_000_000 + n * 100_000_000;
    let mut trace_id = vec![0xab; 8];
    trace_id.extend(n.to_be_bytes());
    Span {
        span_id: n.to_be_bytes().to_vec(),
        trace_id,
        name: "chat support-bot".into(),
        start_time_unix_nano: start,
        end_time_unix_nano: start + 400_000_000 + 2_000_000 * tokens.1 as u64,
        attributes: vec![
            kv("gen_ai.operation.name", Value::StringValue("chat".into())),
            kv("gen_ai.provider.name", Value::StringValue("openai".into())),
            kv(
                "gen_ai.request.model",
                Value::StringValue("support-bot".into()),
            ),
            kv("gen_ai.usage.input_tokens", Value::IntValue(tokens.0)),
            kv("gen_ai.usage.output_tokens", Value::IntValue(tokens.1)),
            kv(
                "gen_ai.response.finish_reasons",
                Value::ArrayValue(ArrayValue {
                    values: vec![AnyValue {
                        value: Some(Value::StringValue(finish.into())),
                    }],
                }),
            ),
            kv("user.id", Value::StringValue(user.into())),
        ],
        ..Span::default()
    }
}

/// The Collector's batch of `spans`, as its `otlp_proto` encoding writes
/// it, from the service `support-api`.
fn message(spans: Vec<Span>) -> Vec<u8> {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", Value::StringValue("support-api".into()))],
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    }
    .encode_to_vec()
}

/// Ordinary traffic: 200 users, answers that stop (1% filtered, 4% cut at
/// the length limit), prompts and answers of a few hundred tokens.
struct Traffic {
    rng: StdRng,
    n: u64,
    users: u32,
}

impl Traffic {
    fn new(seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            n: 0,
            users: 200,
        }
    }

    fn call(&mut self, user: Option<&str>, refusals: f64, output_scale: f64) -> Span {
        self.n += 1;
        let r: f64 = self.rng.random();
        let finish = if r < refusals {
            "content_filter"
        } else if r < refusals + 0.04 {
            "length"
        } else {
            "stop"
        };
        let user = user.map_or_else(
            || format!("u-{}", self.rng.random_range(0..self.users)),
            str::to_string,
        );
        let input = self.rng.random_range(50..400);
        let output = (self.rng.random_range(20.0..300.0) * output_scale) as i64;
        chat(self.n, &user, finish, (input, output))
    }

    /// `benign` ordinary calls and `planted` of `user`'s, decoded.
    fn window(&mut self, benign: usize, planted: &[Span]) -> Vec<TelemetryEvent> {
        let mut spans: Vec<Span> = (0..benign).map(|_| self.call(None, 0.01, 1.0)).collect();
        spans.extend_from_slice(planted);
        decode(&spans)
    }
}

fn decode(spans: &[Span]) -> Vec<TelemetryEvent> {
    let decoder = OtlpGenaiDecoder::new(OtlpGenaiConfig::default());
    // Batches of 100 spans, as the batch processor sends them.
    spans
        .chunks(100)
        .flat_map(|c| decoder.decode(&message(c.to_vec()), None).unwrap())
        .collect()
}

fn scorer() -> Scorer {
    Scorer::new(Engine::open(DeviceChoice::Cpu, 1 << 24).unwrap())
}

fn crossed<'a>(judged: &'a [Judged], feature: &str) -> Option<&'a Judged> {
    judged
        .iter()
        .find(|j| j.score.feature == feature && j.crossed.is_some())
}

/// One user among 200 whose calls are mostly refused by the model's
/// content filter (a jailbreak campaign, 1% of the window), and in another
/// window one whose prompts run to tens of thousands of tokens: each is
/// named, with its calls' trace ids and the ATLAS reading. The refusals
/// move no window-level score; the huge prompts move none of the drift,
/// confidence or output families (they are far out, and the
/// out-of-distribution scores say so too, naming the same user). 1,000
/// clean windows of 100 users stay within the judge's alpha.
#[test]
fn a_jailbreak_campaign_and_token_harvesting_are_named_per_user() {
    let mut traffic = Traffic::new(5);
    let reference = traffic.window(4000, &[]);
    let scorer = scorer();
    let fitted = scorer.fit("support-bot", &reference, &[], 2000).unwrap();
    let refused: Vec<Span> = (0..20)
        .map(|_| traffic.call(Some("mallory"), 0.8, 1.0))
        .collect();
    let harvesting: Vec<Span> = (0..20)
        .map(|_| {
            let mut s = traffic.call(Some("eve"), 0.01, 1.0);
            s.attributes[3] = kv("gen_ai.usage.input_tokens", Value::IntValue(30_000));
            s
        })
        .collect();
    for (planted, feature, user, threat, quiet) in [
        (
            refused,
            "refusals_per_client",
            "mallory",
            Threat::Jailbreak,
            "every",
        ),
        (
            harvesting,
            "tokens_per_client",
            "eve",
            Threat::CostHarvesting,
            "non-security",
        ),
    ] {
        let window = traffic.window(1980, &planted);
        let judged = judge(
            &JudgeConfig::default(),
            scorer.score(&fitted, &window).unwrap().scores,
        );
        let window_level: Vec<String> = judged
            .iter()
            .filter(|j| j.crossed.is_some() && j.score.detector != "llm_clients")
            .filter(|j| quiet == "every" || j.score.family != modelwatch::detect::Family::Security)
            .map(|j| {
                format!(
                    "{}/{} p={:.2e}",
                    j.score.detector, j.score.feature, j.score.p_value
                )
            })
            .collect();
        assert!(
            window_level.is_empty(),
            "{feature}: {quiet} window-level score stays quiet: {window_level:?}"
        );
        let found = crossed(&judged, feature).unwrap_or_else(|| panic!("{feature}: {judged:#?}"));
        assert_eq!(found.score.threat, Some(threat));
        assert!(
            found.score.method.contains(&format!("client={user} ")),
            "{}",
            found.score.method
        );
        eprintln!(
            "{feature}: p={:.3e}, {}",
            found.score.p_value, found.score.method
        );
        let examples = &found.score.examples;
        assert!(!examples.is_empty(), "{feature}");
        for e in examples {
            // The request id is the span's trace id: 32 hex digits; the
            // resource's service comes along as an attribute.
            let trace = e.split_whitespace().next().unwrap();
            assert!(
                trace.len() == 32
                    && trace.starts_with("abababab")
                    && e.contains(&format!("client={user}"))
                    && e.contains(" service.name=support-api"),
                "{e}"
            );
        }
    }
    // Alpha is 0.01 per window; 24 bounds it at the 99.99th percentile.
    let alarms = clean_run(&scorer, &fitted, &mut traffic);
    eprintln!("llm clients: [refusals, tokens] alarmed in {alarms:?} of 1,000 clean windows");
    assert!(
        alarms.iter().all(|n| *n <= 24),
        "{alarms:?} of 1000 clean windows alarmed"
    );
}

/// A long clean run: 1,000 windows of 500 calls from 100 users; how many
/// alarmed `[refusals, tokens]`.
fn clean_run(
    scorer: &Scorer,
    fitted: &modelwatch::detect::Reference,
    traffic: &mut Traffic,
) -> [usize; 2] {
    traffic.users = 100;
    let mut alarms = [0usize; 2];
    for _ in 0..1000 {
        let clean = traffic.window(500, &[]);
        let judged = judge(
            &JudgeConfig::default(),
            scorer.score(fitted, &clean).unwrap().scores,
        );
        for (n, feature) in alarms
            .iter_mut()
            .zip(["refusals_per_client", "tokens_per_client"])
        {
            *n += usize::from(crossed(&judged, feature).is_some());
        }
    }
    alarms
}

/// A guardrail in front of the model: its `apply_guardrail` spans are a
/// model of their own, `support-bot/guardrail`, labelled with the decision.
/// One user whose prompts it denies 15 times in 20, among 200 users it
/// denies 2% of the time, is named by the same per-user refusal score.
#[test]
fn a_user_the_guardrail_keeps_denying_is_named_on_the_guardrail_model() {
    let mut rng = StdRng::seed_from_u64(17);
    let mut n = 0;
    let mut guard = |user: String, deny: f64| {
        n += 1;
        let mut s = chat(n, &user, "stop", (0, 0));
        let decision = if rng.random_bool(deny) {
            "deny"
        } else {
            "allow"
        };
        s.attributes = vec![
            kv(
                "gen_ai.operation.name",
                Value::StringValue("apply_guardrail".into()),
            ),
            kv(
                "gen_ai.request.model",
                Value::StringValue("support-bot".into()),
            ),
            kv(
                "gen_ai.security.decision.type",
                Value::StringValue(decision.into()),
            ),
            kv("user.id", Value::StringValue(user)),
        ];
        s
    };
    let mut users = StdRng::seed_from_u64(18);
    let mut benign = |count: usize| -> Vec<Span> {
        (0..count)
            .map(|_| guard(format!("u-{}", users.random_range(0..200)), 0.02))
            .collect()
    };
    let reference = decode(&benign(4000));
    assert!(reference.iter().all(|e| e.model == "support-bot/guardrail"));
    let scorer = scorer();
    let fitted = scorer
        .fit("support-bot/guardrail", &reference, &[], 2000)
        .unwrap();
    let mut spans = benign(1980);
    spans.extend((0..20).map(|_| guard("mallory".into(), 0.75)));
    let judged = judge(
        &JudgeConfig::default(),
        scorer.score(&fitted, &decode(&spans)).unwrap().scores,
    );
    let found = crossed(&judged, "refusals_per_client").unwrap_or_else(|| panic!("{judged:#?}"));
    assert_eq!(found.score.threat, Some(Threat::Jailbreak));
    assert!(
        found.score.method.contains("client=mallory "),
        "{}",
        found.score.method
    );
    assert!(
        found
            .score
            .examples
            .iter()
            .all(|e| e.ends_with("answer=deny")),
        "{:?}",
        found.score.examples
    );
}

/// The model's refusal rate jumps from 1% to 8% and its answers grow: the
/// output and drift detectors cross on the window, naming the model.
#[test]
fn a_model_refusing_more_and_answering_longer_crosses_its_window_detectors() {
    let mut traffic = Traffic::new(9);
    let reference = traffic.window(4000, &[]);
    let scorer = scorer();
    let fitted = scorer.fit("support-bot", &reference, &[], 1000).unwrap();
    let clean = traffic.window(1000, &[]);
    let judged = judge(
        &JudgeConfig::default(),
        scorer.score(&fitted, &clean).unwrap().scores,
    );
    assert!(
        judged.iter().all(|j| j.crossed.is_none()),
        "a clean window crosses nothing: {judged:#?}"
    );
    let shifted: Vec<Span> = (0..1000).map(|_| traffic.call(None, 0.08, 1.4)).collect();
    let judged = judge(
        &JudgeConfig::default(),
        scorer.score(&fitted, &decode(&shifted)).unwrap().scores,
    );
    let mix = judged
        .iter()
        .find(|j| j.score.detector == "output_distribution" && j.crossed.is_some())
        .unwrap_or_else(|| panic!("the answer mix: {judged:#?}"));
    // Its examples are calls answered with the class that grew, by trace id.
    let examples = &mix.score.examples;
    assert_eq!(examples.len(), 5, "{mix:#?}");
    for e in examples {
        let trace = e.split_whitespace().next().unwrap();
        assert!(
            trace.len() == 32 && e.ends_with(" answer=content_filter"),
            "{e}"
        );
    }
    let tokens = crossed(&judged, "output_tokens").unwrap_or_else(|| panic!("{judged:#?}"));
    assert_eq!(tokens.score.detector, "feature_drift");
    assert!(
        crossed(&judged, "latency_ms").is_some(),
        "longer answers take longer"
    );
    assert!(
        crossed(&judged, "input_tokens").is_none(),
        "the prompts did not change"
    );
}

/// Through the daemon as a user runs it on the Collector's `otlp_json`
/// file output: `run --file ... --format otlp-genai` pages the jump in
/// refusals of the model named in its spans.
#[test]
fn the_daemon_reads_otlp_json_lines_and_pages_the_llm_model() {
    let dir = std::env::temp_dir().join(format!("mw_llm_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut traffic = Traffic::new(13);
    let mut lines = String::new();
    let mut batch = |spans: Vec<Span>| {
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..ScopeSpans::default()
                }],
                ..ResourceSpans::default()
            }],
        };
        lines += &serde_json::to_string(&request).unwrap();
        lines.push('\n');
    };
    for w in 0..8 {
        let refusals = if w >= 5 { 0.3 } else { 0.01 };
        for b in 0..5 {
            let mut spans: Vec<Span> = (0..100)
                .map(|_| traffic.call(None, refusals, 1.0))
                .collect();
            if w == 3 && b == 0 {
                // One span whose user id carries a terminal escape: refused
                // alone, not with the 100 calls batched beside it.
                spans.push(traffic.call(Some("eve\u{1b}[2J"), 0.0, 1.0));
            }
            batch(spans);
        }
    }
    let input = dir.join("spans.ndjson");
    std::fs::write(&input, lines).unwrap();
    let cfg = dir.join("modelwatch.toml");
    std::fs::write(
        &cfg,
        format!(
            "[store]\nurl = \"sqlite:{}\"\n[engine]\ndevice = \"cpu\"\n[telemetry]\nlisten = \"\"\n[models.support-bot]\nwindow_count = 500\nwindow_secs = 0\nreference_size = 1000\n",
            dir.join("store.db").display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(daemon_binary())
        .args(["run", "--config"])
        .arg(&cfg)
        .arg("--file")
        .arg(&input)
        .args(["--format", "otlp-genai"])
        .env_remove("MODELWATCH_CONFIG")
        .output()
        .unwrap();
    let stdout = succeeded(&out);
    let fired: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("ALERT") && l.split_whitespace().nth(1) == Some("fired"))
        .collect();
    assert_eq!(fired.len(), 1, "{stdout}");
    assert!(
        fired[0].contains("model=support-bot ") && fired[0].contains("detector=episode"),
        "{stdout}"
    );
    assert!(
        stdout.contains("detector=output_distribution feature=predicted_class "),
        "{stdout}"
    );
    assert!(
        stdout.contains("summary: 40 messages, 4000 events"),
        "{stdout}"
    );
    assert!(stdout.contains("invalid_value=1"), "{stdout}");
}
