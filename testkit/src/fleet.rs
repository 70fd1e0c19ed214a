//! A fleet of apps for load: the soak test and the pipeline benchmark configure `baton
//! serve` with `apps` apps, each tested by `true` and deployed by manifest to staging
//! and production without approval (no registry: promote is off), and read its memory
//! and disk.

use std::path::Path;

/// The environment variables holding the fleet's hook secret and reader token.
pub const HOOK_SECRET_ENV: &str = "BATON_TEST_HOOK_SECRET";
pub const READER_TOKEN_ENV: &str = "BATON_TEST_READER_TOKEN";

/// Writes `baton.yaml` and the manifests of `apps` apps (`app0` … pushed to
/// `localhost:5000/<repo_prefix>/app<i>`) under `root`; one distribution webhook
/// (`/hooks/registry`, header `Authorization`) and one reader (`ci`).
pub fn write_config(root: &Path, apps: usize, repo_prefix: &str) {
    let manifest = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: app\nspec:\n  template:\n    spec:\n      containers:\n        - name: app\n          image: example/app:0.0.1 # set by baton\n";
    let mut list = String::new();
    for i in 0..apps {
        for env in ["staging", "production"] {
            let dir = root.join(format!("manifests/{env}/app{i}"));
            std::fs::create_dir_all(&dir).expect("create a manifest directory");
            std::fs::write(dir.join("app.yaml"), manifest).expect("write a manifest");
        }
        list.push_str(&format!(
            r#"  - name: app{i}
    registry: localhost:5000
    repository: {repo_prefix}/app{i}
    tags: {{ semver: ">=1.0.0" }}
    test: {{ command: {{ run: ["true"] }} }}
    environments:
      - {{ name: staging, approval: auto, promote: false, deploy: {{ manifest: {{ dir: manifests/staging/app{i}, workloads: [{{ name: app, container: app }}] }} }} }}
      - {{ name: production, approval: auto, promote: false, deploy: {{ manifest: {{ dir: manifests/production/app{i}, workloads: [{{ name: app, container: app }}] }} }} }}
"#
        ));
    }
    let cfg = format!(
        "apps:\n{list}serve:\n  webhooks:\n    - {{ name: registry, source: distribution, auth: {{ header: {{ name: Authorization, secret_env: {HOOK_SECRET_ENV} }} }} }}\n  readers:\n    ci: {{ token_env: {READER_TOKEN_ENV} }}\n"
    );
    std::fs::write(root.join("baton.yaml"), cfg).expect("write baton.yaml");
}

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`); 0 when unreadable.
pub fn proc_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// What a directory tree holds: the files' bytes, and the disk it takes (allocated
/// blocks of files and directories, as `du` counts).
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub bytes: u64,
    pub disk: u64,
    pub files: u64,
}

pub fn usage(dir: &Path) -> Usage {
    use std::os::unix::fs::MetadataExt;
    let mut u = Usage::default();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(m) = e.metadata() else { continue };
            u.disk += m.blocks() * 512;
            if m.is_dir() {
                stack.push(e.path());
            } else {
                u.bytes += m.len();
                u.files += 1;
            }
        }
    }
    u
}
