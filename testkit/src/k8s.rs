//! A real Kubernetes control plane on loopback, started once per test process:
//! etcd, kube-apiserver (RBAC and Node authorization, static tokens), the controller
//! manager (the real Deployment, StatefulSet, DaemonSet and Job controllers), the
//! scheduler, and kwok with one simulated node whose pods follow
//! `k8s/kwok-stages.yaml`.
//!
//! The binaries come from `.ci/k8s/build` (built once, cached outside the clone; see
//! `.ci/k8s/versions`), or from `$BATON_K8S_BIN`. Everything listens on free loopback
//! ports and lives in a temporary directory removed when the test process exits; the
//! processes die with it (`PR_SET_PDEATHSIG`, and an exit handler). `BATON_K8S_KEEP=1`
//! keeps the directory (the components' logs) for a look after a failure.
//!
//! Identities (static bearer tokens): `admin` (`system:masters`), and one per Baton
//! stage that touches a cluster, named after the group the RBAC of `infra/k8s/` binds:
//! [`DEPLOY`] (`baton-deploy`), [`TEST`] (`baton-test`) and [`VERIFY`] (`baton-verify`). The kubeconfig has a context
//! of each name.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::free_port;

/// The deploy stage's identity: user and group `baton-deploy`.
pub const DEPLOY: &str = "baton-deploy";
/// The test stage's identity: user and group `baton-test`.
pub const TEST: &str = "baton-test";
/// The verify stage's identity: user and group `baton-verify`.
pub const VERIFY: &str = "baton-verify";
/// The administrator (`system:masters`), for set-up and assertions.
pub const ADMIN: &str = "admin";

/// The annotation kwok's node selector matches (`--manage-nodes-with-annotation-selector`).
const KWOK_NODE: &str = "kwok.x-k8s.io/node";

/// A running control plane.
#[derive(Debug)]
pub struct ControlPlane {
    /// `https://127.0.0.1:<port>`.
    pub url: String,
    /// The cluster CA's certificate (PEM): it signed the API server's serving
    /// certificate.
    pub ca_pem: String,
    /// A kubeconfig with one context per identity (`admin`, the current one, and
    /// [`DEPLOY`], [`TEST`]).
    pub kubeconfig: PathBuf,
    /// The run directory (certificates, tokens, logs of every component).
    pub dir: PathBuf,
    /// The Kubernetes version the API server reports (`.ci/k8s/versions`).
    pub version: String,
    /// How long the start took.
    pub started_in: Duration,
    tokens: BTreeMap<String, String>,
}

/// Children and the run directory, for the exit handler.
static RUNNING: Mutex<Option<(Vec<Child>, PathBuf)>> = Mutex::new(None);
static SHARED: OnceLock<ControlPlane> = OnceLock::new();

extern "C" fn stop_at_exit() {
    // try_lock: never wait at exit (a panicking start may hold it).
    if let Ok(mut guard) = RUNNING.try_lock()
        && let Some((children, dir)) = guard.take()
    {
        for mut c in children.into_iter().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::env::var_os("BATON_K8S_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The control plane of this test process, started on first use (10–30 s). Panics with
/// what to do when the binaries are missing or a component does not come up; never
/// skips.
pub fn shared() -> &'static ControlPlane {
    SHARED.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        // The children are started by a thread that lives as long as the process, so that
        // PR_SET_PDEATHSIG (which follows the spawning thread) fires only when the
        // process dies.
        std::thread::Builder::new()
            .name("k8s-control-plane".into())
            .spawn(move || {
                let r = std::panic::catch_unwind(start);
                let _ = tx.send(r);
                loop {
                    std::thread::park();
                }
            })
            .expect("a thread for the control plane");
        match rx.recv() {
            Ok(Ok(cp)) => cp,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(_) => panic!("the control plane's thread ended"),
        }
    })
}

/// The directory holding the binaries: `$BATON_K8S_BIN`, else what `.ci/k8s/build`
/// prints (it finds them cached, or builds them: about 20 minutes on 2 cores, once).
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BATON_K8S_BIN") {
        return PathBuf::from(dir);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/k8s/build");
    let out = Command::new(&script)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (Go 1.24+ is needed to build the control plane)",
                script.display()
            )
        });
    assert!(
        out.status.success(),
        "{} failed: the Kubernetes control plane could not be built",
        script.display()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(stdout.lines().last().unwrap_or_default().trim())
}

fn versions() -> BTreeMap<String, String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/k8s/versions");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn token() -> String {
    let mut bytes = [0u8; 24];
    let f = std::fs::File::open("/dev/urandom").and_then(|mut f| {
        use std::io::Read;
        f.read_exact(&mut bytes)
    });
    f.expect("random bytes for a token");
    hex::encode(bytes)
}

/// Starts `program` from `bin` with `args`, its output to `<dir>/<name>.log`; it dies
/// with this process.
fn spawn(bin: &Path, dir: &Path, name: &str, program: &str, args: &[String]) {
    let path = bin.join(program);
    assert!(
        path.is_file(),
        "{} is missing: run .ci/k8s/build (or set BATON_K8S_BIN to a directory holding kube-apiserver, kube-controller-manager, kube-scheduler, etcd and kwok)",
        path.display()
    );
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("a log file");
    let err = log.try_clone().expect("a log file");
    let mut cmd = Command::new(&path);
    cmd.args(args)
        .current_dir(dir)
        .env_clear()
        .env("HOME", dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", path.display()));
    let mut running = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
    match running.as_mut() {
        // Killed and reaped by the exit handler.
        Some((children, _)) => children.push(child),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{name} started outside a control plane's start");
        }
    }
}

fn log_tail(dir: &Path, name: &str) -> String {
    let text = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

fn wait_until(what: &str, dir: &Path, log: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(
            Instant::now() < deadline,
            "{what} was not ready within {within:?}; the end of {log}.log:\n{}",
            log_tail(dir, log)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn start() -> ControlPlane {
    let began = Instant::now();
    let v = versions();
    let version = v
        .get("KUBERNETES_VERSION")
        .cloned()
        .expect("KUBERNETES_VERSION in .ci/k8s/versions");
    let bin = bin_dir();
    let dir = tempfile::Builder::new()
        .prefix("baton-k8s-")
        .tempdir()
        .expect("a temporary directory")
        .keep();
    *RUNNING.lock().unwrap_or_else(|p| p.into_inner()) = Some((vec![], dir.clone()));
    // SAFETY: registering a plain extern "C" function.
    unsafe {
        libc::atexit(stop_at_exit);
    }

    // Certificates: a CA, the API server's serving certificate for 127.0.0.1, and the
    // service-account signing key.
    let certs = crate::tls::server_cert(
        &dir,
        "kube-apiserver",
        "IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc",
    );
    for (from, to) in [
        (&certs.ca, "ca.crt"),
        (&certs.cert, "server.crt"),
        (&certs.key, "server.key"),
    ] {
        std::fs::copy(from, dir.join(to)).expect("copy a certificate");
    }
    crate::tls::openssl(
        &dir,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "sa.key",
        ],
    );
    crate::tls::openssl(
        &dir,
        &["pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub"],
    );
    let ca_pem = std::fs::read_to_string(dir.join("ca.crt")).expect("ca.crt");

    let mut tokens = BTreeMap::new();
    let mut csv = String::new();
    for (user, group) in [
        (ADMIN, "system:masters"),
        (DEPLOY, DEPLOY),
        (TEST, TEST),
        (VERIFY, VERIFY),
    ] {
        let t = token();
        csv.push_str(&format!("{t},{user},{user},\"{group}\"\n"));
        tokens.insert(user.to_string(), t);
    }
    std::fs::write(dir.join("tokens.csv"), csv).expect("tokens.csv");

    let (etcd_port, peer_port, api_port) = (free_port(), free_port(), free_port());
    let s = |x: &str| x.to_string();
    spawn(
        &bin,
        &dir,
        "etcd",
        "etcd",
        &[
            s("--data-dir"),
            s("etcd-data"),
            format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"),
            format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"),
            format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
            format!("--initial-cluster=default=http://127.0.0.1:{peer_port}"),
            s("--unsafe-no-fsync"),
            s("--log-level=warn"),
        ],
    );
    wait_until("etcd", &dir, "etcd", Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", etcd_port)).is_ok()
    });

    spawn(
        &bin,
        &dir,
        "kube-apiserver",
        "kube-apiserver",
        &[
            format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
            s("--bind-address=127.0.0.1"),
            s("--advertise-address=127.0.0.1"),
            format!("--secure-port={api_port}"),
            s("--tls-cert-file=server.crt"),
            s("--tls-private-key-file=server.key"),
            s("--client-ca-file=ca.crt"),
            s("--token-auth-file=tokens.csv"),
            s("--authorization-mode=Node,RBAC"),
            s("--service-account-key-file=sa.pub"),
            s("--service-account-signing-key-file=sa.key"),
            s("--service-account-issuer=https://kubernetes.default.svc.cluster.local"),
            s("--service-cluster-ip-range=10.96.0.0/16"),
            s("--endpoint-reconciler-type=none"),
            // No node lifecycle controller runs (kwok's heartbeats are not a kubelet's), so
            // nothing would remove the not-ready taint this plugin puts on a new node.
            s("--disable-admission-plugins=TaintNodesByCondition"),
            s("--profiling=false"),
            s("--v=0"),
        ],
    );
    let url = format!("https://127.0.0.1:{api_port}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let admin = Api::new(&url, &ca_pem, &tokens[ADMIN]);
    wait_until(
        "kube-apiserver",
        &dir,
        "kube-apiserver",
        Duration::from_secs(120),
        || {
            rt.block_on(admin.get("/readyz"))
                .is_ok_and(|(code, _)| code == 200)
        },
    );

    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, kubeconfig_text(&url, &ca_pem, &tokens)).expect("kubeconfig");
    let kc = format!("--kubeconfig={}", kubeconfig.display());
    spawn(
        &bin,
        &dir,
        "kube-controller-manager",
        "kube-controller-manager",
        &[
            kc.clone(),
            s("--leader-elect=false"),
            s("--bind-address=127.0.0.1"),
            format!("--secure-port={}", free_port()),
            s("--service-account-private-key-file=sa.key"),
            s("--root-ca-file=ca.crt"),
            s("--use-service-account-credentials=false"),
            s(
                "--controllers=*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle,-service-lb-controller,-route",
            ),
            s("--v=0"),
        ],
    );
    spawn(
        &bin,
        &dir,
        "kube-scheduler",
        "kube-scheduler",
        &[
            kc.clone(),
            s("--leader-elect=false"),
            s("--bind-address=127.0.0.1"),
            format!("--secure-port={}", free_port()),
            s("--v=0"),
        ],
    );

    // kwok: the ClusterLogs kind (tests say which log a namespace's pods have), then the
    // controller, then its node.
    let crd_path = bin.join("../crds/kwok.x-k8s.io_clusterlogs.yaml");
    let crd: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(&crd_path)
            .unwrap_or_else(|e| panic!("{}: {e} (.ci/k8s/build copies it)", crd_path.display())),
    )
    .expect("the ClusterLogs CRD");
    rt.block_on(admin.create(
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        &crd,
    ));
    wait_until(
        "the ClusterLogs CRD",
        &dir,
        "kube-apiserver",
        Duration::from_secs(30),
        || {
            rt.block_on(admin.get("/apis/kwok.x-k8s.io/v1alpha1/clusterlogs"))
                .is_ok_and(|(code, _)| code == 200)
        },
    );
    std::fs::write(
        dir.join("kwok-stages.yaml"),
        include_str!("k8s/kwok-stages.yaml"),
    )
    .expect("kwok stages");
    let kwok_port = free_port();
    spawn(
        &bin,
        &dir,
        "kwok",
        "kwok",
        &[
            kc.clone(),
            s("--config=kwok-stages.yaml"),
            s("--manage-all-nodes=false"),
            format!("--manage-nodes-with-annotation-selector={KWOK_NODE}=fake"),
            s("--enable-crds=ClusterLogs"),
            format!("--server-address=127.0.0.1:{kwok_port}"),
            s("--node-ip=127.0.0.1"),
            format!("--node-port={kwok_port}"),
            s("--cidr=10.0.0.1/16"),
        ],
    );
    let node = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "kwok-node-0", "annotations": {KWOK_NODE: "fake"},
                     "labels": {"type": "kwok", "kubernetes.io/hostname": "kwok-node-0", "kubernetes.io/os": "linux"}},
        "status": {"allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"},
                   "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"}}
    });
    rt.block_on(admin.create("/api/v1/nodes", &node));
    wait_until("kwok's node", &dir, "kwok", Duration::from_secs(60), || {
        rt.block_on(admin.get("/api/v1/nodes/kwok-node-0"))
            .is_ok_and(|(_, n)| {
                n["status"]["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
            })
    });
    ControlPlane {
        url,
        ca_pem,
        kubeconfig,
        dir,
        version,
        started_in: began.elapsed(),
        tokens,
    }
}

fn kubeconfig_text(url: &str, ca_pem: &str, tokens: &BTreeMap<String, String>) -> String {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let mut users = String::new();
    let mut contexts = String::new();
    for (user, t) in tokens {
        users.push_str(&format!("- name: {user}\n  user:\n    token: {t}\n"));
        contexts.push_str(&format!(
            "- name: {user}\n  context:\n    cluster: baton-test\n    user: {user}\n"
        ));
    }
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: baton-test\n  cluster:\n    server: {url}\n    certificate-authority-data: {ca}\nusers:\n{users}contexts:\n{contexts}current-context: {ADMIN}\n"
    )
}

impl ControlPlane {
    /// The bearer token of `user` ([`ADMIN`], [`DEPLOY`], [`TEST`]).
    pub fn token(&self, user: &str) -> &str {
        self.tokens
            .get(user)
            .unwrap_or_else(|| panic!("no identity {user}"))
    }

    /// A raw API client acting as `user`.
    pub fn api(&self, user: &str) -> Api {
        Api::new(&self.url, &self.ca_pem, self.token(user))
    }

    /// A new namespace named `<prefix>-<random>`, once its `default` ServiceAccount
    /// exists (pods cannot be created before).
    pub async fn namespace(&self, prefix: &str) -> String {
        let name = format!("{prefix}-{}", &token()[..8]);
        let admin = self.api(ADMIN);
        admin
            .create(
                "/api/v1/namespaces",
                &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
            )
            .await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (code, _) = admin
                .get(&format!(
                    "/api/v1/namespaces/{name}/serviceaccounts/default"
                ))
                .await
                .expect("the API server answers");
            if code == 200 {
                return name;
            }
            assert!(
                Instant::now() < deadline,
                "namespace {name} got no default ServiceAccount within 30 s (kube-controller-manager.log in {})",
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Makes kwok serve `text` as the log of every container of pods in `namespace`
    /// (through the API server's `pods/log`, as a kubelet's).
    pub async fn pod_logs(&self, namespace: &str, text: &str) {
        let file = self.dir.join(format!("logs-{namespace}.log"));
        // kwok reads a container runtime's log file: CRI lines, `<time> stdout F <line>`.
        let cri: String = text
            .lines()
            .map(|l| format!("2026-01-01T00:00:00.000000000Z stdout F {l}\n"))
            .collect();
        std::fs::write(&file, cri).expect("a log file for kwok");
        self.api(ADMIN)
            .create(
                "/apis/kwok.x-k8s.io/v1alpha1/clusterlogs",
                &json!({
                    "apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "ClusterLogs",
                    "metadata": {"name": format!("logs-{namespace}")},
                    "spec": {"selector": {"matchNamespaces": [namespace]},
                             "logs": [{"logsFile": file.display().to_string(), "follow": false}]}
                }),
            )
            .await;
    }
}

/// A minimal JSON client of the API server (set-up and assertions; Baton's own adapters
/// use kube).
#[derive(Debug, Clone)]
pub struct Api {
    url: String,
    http: reqwest::Client,
    token: String,
}

impl Api {
    fn new(url: &str, ca_pem: &str, token: &str) -> Api {
        let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("the cluster CA");
        let http = reqwest::Client::builder()
            .tls_certs_only([ca])
            .timeout(Duration::from_secs(30))
            .build()
            .expect("an HTTP client");
        Api {
            url: url.to_string(),
            http,
            token: token.to_string(),
        }
    }

    /// Sends a request; its status and JSON body (`Value::Null` when not JSON).
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), reqwest::Error> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req
                .header("content-type", content_type)
                .body(serde_json::to_vec(b).expect("JSON"));
        }
        let resp = req.send().await?;
        let code = resp.status().as_u16();
        let bytes = resp.bytes().await?;
        Ok((code, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
    }

    /// GET `path`.
    pub async fn get(&self, path: &str) -> Result<(u16, Value), reqwest::Error> {
        self.send(reqwest::Method::GET, path, "", None).await
    }

    /// POST `object` to `collection`, asserting it was created (201) or already exists.
    pub async fn create(&self, collection: &str, object: &Value) -> Value {
        let (code, body) = self
            .send(
                reqwest::Method::POST,
                collection,
                "application/json",
                Some(object),
            )
            .await
            .unwrap_or_else(|e| panic!("POST {collection}: {e}"));
        assert!(
            code == 201 || code == 200 || code == 409,
            "POST {collection}: {code} {body}"
        );
        body
    }

    /// GET `path`, asserting 200; the object.
    pub async fn object(&self, path: &str) -> Value {
        let (code, body) = self
            .get(path)
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(code, 200, "GET {path}: {body}");
        body
    }

    /// Applies every document of a YAML stream, each into `namespace` when it is
    /// namespaced (RBAC Roles and RoleBindings, workloads): created, or replaced when it
    /// exists. The objects as applied.
    pub async fn apply_yaml(&self, yaml: &str, namespace: &str) -> Vec<Value> {
        use serde::Deserialize;
        let mut applied = vec![];
        for doc in serde_yaml_ng::Deserializer::from_str(yaml) {
            let mut obj = Value::deserialize(doc).expect("a YAML document");
            if obj.is_null() {
                continue;
            }
            obj["metadata"]["namespace"] = json!(namespace);
            let collection = collection_of(&obj, namespace);
            let name = obj["metadata"]["name"]
                .as_str()
                .expect("metadata.name")
                .to_string();
            let (code, body) = self
                .send(
                    reqwest::Method::POST,
                    &collection,
                    "application/json",
                    Some(&obj),
                )
                .await
                .unwrap_or_else(|e| panic!("POST {collection}: {e}"));
            if code == 409 {
                let (code, body) = self
                    .send(
                        reqwest::Method::PUT,
                        &format!("{collection}/{name}"),
                        "application/json",
                        Some(&obj),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("PUT {collection}/{name}: {e}"));
                assert_eq!(code, 200, "PUT {collection}/{name}: {body}");
                applied.push(body);
            } else {
                assert_eq!(code, 201, "POST {collection}: {body}");
                applied.push(body);
            }
        }
        applied
    }
}

/// The collection URL of a namespaced object (`apiVersion` and `kind`, plural by the
/// kinds the tests use).
pub fn collection_of(obj: &Value, namespace: &str) -> String {
    let api_version = obj["apiVersion"].as_str().expect("apiVersion");
    let kind = obj["kind"].as_str().expect("kind");
    let plural = match kind {
        "Role" => "roles",
        "RoleBinding" => "rolebindings",
        "Deployment" => "deployments",
        "StatefulSet" => "statefulsets",
        "DaemonSet" => "daemonsets",
        "Job" => "jobs",
        "Secret" => "secrets",
        "ConfigMap" => "configmaps",
        "ServiceAccount" => "serviceaccounts",
        other => panic!("collection_of: add the plural of {other}"),
    };
    let prefix = if api_version.contains('/') {
        format!("/apis/{api_version}")
    } else {
        format!("/api/{api_version}")
    };
    format!("{prefix}/namespaces/{namespace}/{plural}")
}
