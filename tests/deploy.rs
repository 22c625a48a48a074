//! The deployment files as a platform team would take them: the Kubernetes
//! manifests (with their KEDA and Prometheus Operator objects) and the
//! compose stack against the schemas those projects publish, the container
//! image definition through a Dockerfile linter and the properties a GPU
//! node needs, and every config they carry through the daemon's own parser.
//! Each schema check is also shown to fail on a broken copy.
//!
//! No image is built here: these machines reach no container registry, so
//! the base images cannot be pulled (see daemon/docs/deploy.md).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{repo_file, schema_check, succeeded, unique};
use modelwatch::config::Config;

/// The output of a run that must have failed, and must name `expect`.
fn failed_naming(out: &std::process::Output, expect: &str) {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "a broken copy passed:\n{text}");
    assert!(text.contains(expect), "expected {expect:?} in:\n{text}");
}

/// A copy of `file` in `dir` with `from` replaced by `to` (which must occur).
fn broken_copy(dir: &Path, file: &Path, from: &str, to: &str) -> PathBuf {
    let text = std::fs::read_to_string(file).unwrap();
    assert!(text.contains(from), "{from:?} not in {}", file.display());
    let out = dir.join(file.file_name().unwrap());
    std::fs::write(&out, text.replacen(from, to, 1)).unwrap();
    out
}

/// A fresh folder under the system's temporary directory.
fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(unique("deploy"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn files_in(dir: &str, ext: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_file(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    files.sort();
    files
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_file(path)).unwrap()
}

#[test]
fn kubernetes_manifests_match_the_published_schemas() {
    let files = files_in("deploy/kubernetes", "yaml");
    assert!(files.len() >= 5, "{files:?}");
    succeeded(&schema_check("kubernetes", &files));

    let dir = scratch();
    let k8s = repo_file("deploy/kubernetes");
    for (file, from, to, expect) in [
        // An unknown field, which `kubectl apply` refuses.
        (
            "deployment.yaml",
            "automountServiceAccountToken: false",
            "automountServiceAccountToken: false\n      hostNetworking: true",
            "hostNetworking",
        ),
        // KEDA's trigger metadata is a map of strings.
        (
            "scaledobject.yaml",
            "lagThreshold: \"200000\"",
            "lagThreshold: 200000",
            "lagThreshold",
        ),
        // The operator's duration pattern.
        (
            "servicemonitor.yaml",
            "interval: 30s",
            "interval: 30 seconds",
            "interval",
        ),
    ] {
        let broken = broken_copy(&dir, &k8s.join(file), from, to);
        failed_naming(&schema_check("kubernetes", &[broken]), expect);
    }
}

/// The ConfigMap's `modelwatch.toml`, un-indented.
fn configmap_toml(manifest: &str) -> String {
    let mut lines = manifest
        .lines()
        .skip_while(|l| l.trim() != "modelwatch.toml: |");
    lines
        .next()
        .expect("a modelwatch.toml key in the ConfigMap");
    lines
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| l.get(4..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

fn port_of(listen: &str) -> &str {
    listen.rsplit(':').next().unwrap()
}

/// The config the manifests carry is valid, and the manifests agree with
/// it: the probes and the Service reach its listener, KEDA watches its
/// consumer group, topic and brokers, and every secret variable it names is
/// set from the Secret.
#[test]
fn kubernetes_config_is_valid_and_agrees_with_the_manifests() {
    let toml = configmap_toml(&read("deploy/kubernetes/configmap.yaml"));
    let config = Config::from_sources(&toml, []).expect("the ConfigMap's config is valid");
    let deployment = read("deploy/kubernetes/deployment.yaml");
    let service = read("deploy/kubernetes/service.yaml");
    let scaled = read("deploy/kubernetes/scaledobject.yaml");

    let port = port_of(&config.telemetry.listen);
    assert!(
        config.telemetry.listen.starts_with("0.0.0.0:"),
        "unreachable from the kubelet"
    );
    assert!(deployment.contains(&format!("containerPort: {port}")));
    assert!(service.contains(&format!("port: {port}")));
    for probe in ["path: /healthz", "path: /readyz"] {
        assert!(deployment.contains(probe), "{probe}");
    }

    let kafka = &config.source.kafka;
    assert!(scaled.contains(&format!("consumerGroup: {}", kafka.group_id)));
    assert!(scaled.contains(&format!("topic: {}", kafka.topics[0])));
    assert!(scaled.contains(&format!("bootstrapServers: {}", kafka.brokers)));

    let secrets = [
        config.store.password_env.as_deref(),
        kafka.sasl_password_env.as_deref(),
    ];
    for var in secrets.into_iter().flatten() {
        assert!(
            deployment.contains(&format!(
                "- name: {var}\n              valueFrom:\n                secretKeyRef:"
            )),
            "{var} is not set from a Secret in deployment.yaml"
        );
    }
}

#[test]
fn compose_stack_matches_the_compose_spec_and_its_files_exist() {
    let compose = repo_file("deploy/compose/compose.yaml");
    let spec = |file: &Path| {
        Command::new(tool("check-jsonschema"))
            .args(["--builtin-schema", "vendor.compose-spec"])
            .arg(file)
            .output()
            .expect("check-jsonschema not found: tests/run.sh installs it")
    };
    succeeded(&spec(&compose));
    let dir = scratch();
    let broken = broken_copy(
        &dir,
        &compose,
        "restart: unless-stopped",
        "restart_policy: unless-stopped",
    );
    failed_naming(&spec(&broken), "restart_policy");

    // Every bind mount's source is a committed file or folder.
    let text = std::fs::read_to_string(&compose).unwrap();
    let mounts: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- ."))
        .map(|l| l.split(':').next().unwrap())
        .collect();
    assert!(mounts.len() >= 6, "{mounts:?}");
    for m in mounts {
        let path = repo_file("deploy/compose").join(format!(".{m}"));
        assert!(
            path.exists(),
            "compose.yaml mounts {}, which is missing",
            path.display()
        );
    }

    let config = Config::from_sources(&read("deploy/compose/modelwatch.toml"), [])
        .expect("the compose config is valid");
    let var = config.store.password_env.unwrap();
    assert!(
        text.contains(&format!("{var}: ")),
        "compose.yaml does not set {var}"
    );
    assert!(text.contains(&format!(
        "\"{}:{}\"",
        port_of(&config.telemetry.listen),
        port_of(&config.telemetry.listen)
    )));

    let out = Command::new("promtool")
        .args(["check", "config", "--syntax-only"])
        .arg(repo_file("deploy/compose/prometheus.yml"))
        .output()
        .expect("promtool not found: tests/run.sh installs it");
    succeeded(&out);
}

/// A Python tool from the virtual environment `tests/run.sh` made.
fn tool(name: &str) -> PathBuf {
    let venv = std::env::var("MODELWATCH_TOOLS_VENV")
        .expect("MODELWATCH_TOOLS_VENV is not set: run the suite through tests/run.sh");
    PathBuf::from(venv).join("bin").join(name)
}

/// Dockerfile instructions, continuation lines joined, comments dropped.
fn instructions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    out
}

#[test]
fn container_image_is_multi_stage_non_root_and_finds_the_gpu() {
    let file = repo_file("deploy/container/Dockerfile");
    succeeded(&schema_check("dockerfile", &[file.clone()]));
    let dir = scratch();
    let broken = broken_copy(&dir, &file, "USER 10001:10001", "USR 10001:10001");
    failed_naming(&schema_check("dockerfile", &[broken]), "USR");

    let text = std::fs::read_to_string(&file).unwrap();
    let all = instructions(&text);
    let stages = all.iter().filter(|i| i.starts_with("FROM ")).count();
    assert!(stages >= 2, "one stage builds, another runs");
    let last_from = all.iter().rposition(|i| i.starts_with("FROM ")).unwrap();
    let runtime = &all[last_from..];
    let user = runtime
        .iter()
        .find_map(|i| i.strip_prefix("USER "))
        .expect("a USER");
    assert!(
        !["root", "0"].contains(&user.split(':').next().unwrap()),
        "{user}"
    );
    let env = runtime
        .iter()
        .find(|i| i.contains("NVIDIA_DRIVER_CAPABILITIES="))
        .expect("NVIDIA_DRIVER_CAPABILITIES");
    for cap in ["compute", "graphics"] {
        assert!(env.contains(cap), "wgpu needs the {cap} capability: {env}");
    }
    let installs = runtime
        .iter()
        .filter(|i| i.starts_with("RUN "))
        .cloned()
        .collect::<String>();
    assert!(
        installs.contains("libvulkan1"),
        "the Vulkan loader wgpu opens"
    );
    assert!(
        !installs.contains("mesa-vulkan-drivers"),
        "no software adapter in production"
    );

    // What the image copies from the context is there, and not ignored.
    let ignore =
        std::fs::read_to_string(repo_file("deploy/container/Dockerfile.dockerignore")).unwrap();
    for copy in all
        .iter()
        .filter(|i| i.starts_with("COPY ") && !i.contains("--from"))
    {
        let parts: Vec<&str> = copy.split_whitespace().collect();
        for src in &parts[1..parts.len() - 1] {
            assert!(repo_file(src).exists(), "{src} is copied but missing");
            let allowed = ignore.lines().any(|l| {
                l.strip_prefix('!')
                    .is_some_and(|a| a.trim_end_matches('/') == src.trim_end_matches('/'))
            });
            assert!(
                allowed,
                "{src} is copied but Dockerfile.dockerignore leaves it out"
            );
        }
    }

    // The image's default config is valid and listens where the image says.
    let config = Config::from_sources(&read("deploy/container/modelwatch.toml"), []).unwrap();
    let port = port_of(&config.telemetry.listen);
    assert!(
        runtime.iter().any(|i| i == &format!("EXPOSE {port}")),
        "EXPOSE {port}"
    );
}
