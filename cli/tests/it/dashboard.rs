//! The web dashboard of the real `baton serve` binary: in a real browser (Debian's
//! `chromium` driven by `playwright-core`, scanned by `axe-core`; `.ci/run` installs them,
//! a missing one fails the test), and its trust boundary over plain HTTP (sessions, form
//! tokens, origins, readers, escaping, the rollback form).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::registry::{ALICE_TOKEN, Api, READER_TOKEN, manifest, push};

use crate::attacks::Served;

/// A project served with a registry (`write_project`'s: production needs alice).
async fn served() -> Served {
    crate::attacks::served("echo testing the image; echo all passed", |c, _| c, &[]).await
}

impl Served {
    /// Pushes `tag` (pushed by ci-bot), announces it, and waits for `status`; the digest.
    async fn push(&self, tag: &str, status: &str) -> String {
        let d = push(&self.root, self.registry, "demo/app", tag);
        let note = baton_testkit::build::dist_push(
            "demo/app",
            tag,
            &d,
            "ci-bot",
            chrono::Utc::now(),
            &format!("n-{tag}"),
        )
        .to_string()
        .replace("localhost:5000", &format!("127.0.0.1:{}", self.registry));
        let (code, body) = self.api.hook(&note).await;
        assert_eq!(code, 202, "{body}");
        self.api.wait_status(&d, status).await;
        d
    }

    async fn run_of(&self, digest: &str) -> String {
        self.api
            .runs()
            .await
            .into_iter()
            .find(|r| r["image"]["digest"] == digest)
            .and_then(|r| r["run"].as_str().map(str::to_owned))
            .unwrap()
    }
}

/// A client that follows no redirect and keeps no cookie: every header is the test's.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Signs in with `token`; the session cookie (`baton_session=…`).
async fn sign_in(api: &Api, token: &str) -> String {
    let r = client()
        .post(format!("{}/ui/login", api.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={token}&next=%2F"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 303);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    cookie.split(';').next().unwrap().to_string()
}

/// A page as a browser asks for it, with `cookie`: status and body.
async fn page(api: &Api, path: &str, cookie: &str) -> (u16, String) {
    let r = client()
        .get(format!("{}{path}", api.base))
        .header("accept", "text/html")
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The form token in a page.
fn csrf_of(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a form token") + 19;
    html[at..].split('"').next().unwrap().to_string()
}

/// Posts a form with `cookie` and extra `headers`: status and body.
async fn post_form(
    api: &Api,
    path: &str,
    cookie: &str,
    headers: &[(&str, &str)],
    fields: &[(&str, &str)],
) -> (u16, String) {
    let body: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish();
    let mut rq = client()
        .post(format!("{}{path}", api.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("accept", "text/html")
        .header("cookie", cookie);
    for (k, v) in headers {
        rq = rq.header(*k, *v);
    }
    let r = rq.body(body).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The JSON of production's approval of `run`, through the API.
async fn production_approval(api: &Api, run: &str) -> Value {
    let v = api.get(&format!("/runs/{run}"), READER_TOKEN).await;
    v["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["environment"] == "production")
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread")]
async fn forms_need_a_session_its_token_and_this_origin_and_readers_decide_nothing() {
    let s = served().await;
    let api = &s.api;
    let d = s.push("1.0.0", "awaiting approval (production)").await;
    let run = s.run_of(&d).await;

    // Signed out: a browser is sent to sign in (to a local path only), a script gets 401.
    let (code, _) = page(api, "/", "").await;
    assert_eq!(code, 303);
    let r = client()
        .get(format!("{}/", api.base))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = client()
        .get(format!("{}/runs/{run}", api.base))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["location"],
        format!("/login?next=%2Fruns%2F{run}").as_str()
    );
    for next in [
        "//evil.example/",
        "https://evil.example/",
        "/\\evil.example",
    ] {
        let r = client()
            .post(format!("{}/ui/login", api.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "token={ALICE_TOKEN}&next={}",
                form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>()
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["location"], "/", "next={next}");
    }
    // A wrong token makes no session; a forged cookie is nobody.
    let r = client()
        .post(format!("{}/ui/login", api.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("token=not-a-token&next=%2F")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert!(r.headers().get("set-cookie").is_none());
    let (code, _) = page(api, "/", &format!("baton_session={}", "ab".repeat(32))).await;
    assert_eq!(code, 303);

    let alice = sign_in(api, ALICE_TOKEN).await;
    let reader = sign_in(api, READER_TOKEN).await;
    let (code, alice_page) = page(api, &format!("/runs/{run}"), &alice).await;
    assert_eq!(code, 200);
    assert!(alice_page.contains("Approve production"), "{alice_page}");
    let alice_csrf = csrf_of(&alice_page);
    let (code, reader_page) = page(api, &format!("/runs/{run}"), &reader).await;
    assert_eq!(code, 200);
    assert!(
        !reader_page.contains("Approve production"),
        "a reader sees no decision form"
    );
    let reader_csrf = csrf_of(&reader_page);
    assert_ne!(alice_csrf, reader_csrf);

    let action = format!("/ui/approve/{run}/production");
    let approve = |csrf: &str| {
        vec![
            ("decision", "approve".to_string()),
            ("comment", "x".to_string()),
            ("csrf", csrf.to_string()),
        ]
    };
    let send = |cookie: String,
                headers: Vec<(&'static str, &'static str)>,
                f: Vec<(&'static str, String)>| {
        let action = action.clone();
        async move {
            let f: Vec<(&str, &str)> = f.iter().map(|(k, v)| (*k, v.as_str())).collect();
            post_form(api, &action, &cookie, &headers, &f).await
        }
    };
    // Without the form token, with another session's, from another origin, from another
    // site, or as a reader: refused, and nothing is decided.
    let no_token = vec![("decision", "approve".to_string())];
    assert_eq!(send(alice.clone(), vec![], no_token).await.0, 403);
    assert_eq!(
        send(alice.clone(), vec![], approve(&reader_csrf)).await.0,
        403
    );
    assert_eq!(
        send(
            alice.clone(),
            vec![("origin", "http://evil.example")],
            approve(&alice_csrf)
        )
        .await
        .0,
        403
    );
    assert_eq!(
        send(
            alice.clone(),
            vec![("sec-fetch-site", "cross-site")],
            approve(&alice_csrf)
        )
        .await
        .0,
        403
    );
    let (code, body) = send(reader.clone(), vec![], approve(&reader_csrf)).await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("only approvers decide"), "{body}");
    // No session, a valid-looking token: nobody.
    assert_eq!(
        send(String::new(), vec![], approve(&alice_csrf)).await.0,
        303
    );
    let a = production_approval(api, &run).await;
    assert_eq!(a["status"], "pending", "{a:#}");
    assert_eq!(a["decisions"].as_array().unwrap().len(), 0, "{a:#}");

    // A hostile comment is recorded as typed and shown escaped.
    let hostile = "<script>alert(1)</script><img src=x onerror=alert(2)>";
    assert_eq!(
        send(
            alice.clone(),
            vec![("origin", "http://127.0.0.1")],
            approve(&alice_csrf)
        )
        .await
        .0,
        403,
        "an origin on another port is another origin"
    );
    let (code, body) = send(
        alice.clone(),
        vec![],
        vec![
            ("decision", "reject".into()),
            ("comment", hostile.into()),
            ("csrf", alice_csrf.clone()),
        ],
    )
    .await;
    assert_eq!(code, 303, "{body}");
    let a = production_approval(api, &run).await;
    assert_eq!(a["status"], "rejected", "{a:#}");
    assert_eq!(a["decisions"][0]["comment"], hostile);
    assert_eq!(a["decisions"][0]["by"], "alice");
    assert_eq!(a["decisions"][0]["principal"], "token (dashboard session)");
    let (_, shown) = page(api, &format!("/runs/{run}"), &reader).await;
    assert!(!shown.contains("<script>alert(1)"), "{shown}");
    assert!(!shown.contains("<img src=x"), "{shown}");
    assert!(
        shown.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{shown}"
    );
    // Deciding again is refused in the API's words, with its status.
    let (code, body) = send(alice.clone(), vec![], approve(&alice_csrf)).await;
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("Not done"), "{body}");

    // Pages carry a policy that allows no inline script and no framing.
    let r = client()
        .get(format!("{}/", api.base))
        .header("cookie", &alice)
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    let csp = r.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
    assert_eq!(r.headers()["x-frame-options"], "DENY");

    // Signing out ends the session: its cookie is nobody from then on.
    let (code, _) = post_form(
        api,
        "/ui/logout",
        &alice,
        &[],
        &[("csrf", alice_csrf.as_str())],
    )
    .await;
    assert_eq!(code, 303);
    assert_eq!(page(api, "/", &alice).await.0, 303);

    // Guessing tokens: after ten failures in a minute an address waits, even with a
    // right token (one failure above already counted).
    let try_token = |token: &'static str| async move {
        client()
            .post(format!("{}/ui/login", api.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={token}&next=%2F"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    for _ in 0..9 {
        assert_eq!(try_token("a-guess").await, 401);
    }
    assert_eq!(try_token(ALICE_TOKEN).await, 429, "the address waits now");
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_answer_json_and_the_rollback_form_records_who_and_why() {
    let s = served().await;
    let api = &s.api;
    let first = s.push("1.0.0", "awaiting approval (production)").await;
    let run1 = s.run_of(&first).await;
    assert_eq!(
        api.decide(&run1, "production", ALICE_TOKEN, "approve")
            .await
            .0,
        200
    );
    api.wait_status(&first, "deployed").await;
    let second = s.push("1.1.0", "awaiting approval (production)").await;
    let run2 = s.run_of(&second).await;
    assert_eq!(
        api.decide(&run2, "production", ALICE_TOKEN, "approve")
            .await
            .0,
        200
    );
    api.wait_status(&second, "deployed").await;

    // Every page answers JSON to scripts: the board, an environment, a run.
    let json_get = |path: String| {
        let api = &s.api;
        async move {
            let r = client()
                .get(format!("{}{path}", api.base))
                .bearer_auth(READER_TOKEN)
                .header("accept", "application/json")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 200, "{path}");
            r.json::<Value>().await.unwrap()
        }
    };
    let board = json_get("/".into()).await;
    let prod = board["environments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["environment"] == "production")
        .unwrap();
    assert_eq!(prod["live"]["image"]["digest"], second);
    assert_eq!(prod["live"]["approved_by"], json!(["alice"]));
    assert_eq!(board["runs"].as_array().unwrap().len(), 2, "{board:#}");
    let env = json_get("/environments/app/production".into()).await;
    let history = env["history"].as_array().unwrap();
    assert_eq!(history.len(), 2, "{env:#}");
    assert_eq!(history[0]["image"]["digest"], first);
    let run = json_get(format!("/runs/{run2}")).await;
    assert_eq!(run["status"], "deployed");
    // The same run as a page, for a bearer token that asks for HTML.
    let r = client()
        .get(format!("{}/runs/{run2}", api.base))
        .bearer_auth(READER_TOKEN)
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert!(r.text().await.unwrap().contains("<svg class=\"timeline\""));
    // Names that are not names are refused before any lookup.
    let r = client()
        .get(format!("{}/environments/app/..%2F..%2Fetc", api.base))
        .bearer_auth(READER_TOKEN)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);

    // The rollback button: a confirmation page, then a form that needs a reason.
    let alice = sign_in(api, ALICE_TOKEN).await;
    let reader = sign_in(api, READER_TOKEN).await;
    let (_, envpage) = page(api, "/environments/app/production", &alice).await;
    let confirm = format!("/environments/app/production/rollback?to={first}");
    assert!(envpage.contains(&confirm), "{envpage}");
    let (_, reader_env) = page(api, "/environments/app/production", &reader).await;
    assert!(
        !reader_env.contains("Roll back to"),
        "a reader has no rollback button"
    );
    let (code, confirm_page) = page(api, &confirm, &alice).await;
    assert_eq!(code, 200);
    assert!(confirm_page.contains("Roll back app in production?"));
    let csrf = csrf_of(&confirm_page);
    let (code, body) = post_form(
        api,
        "/ui/rollback/app/production",
        &alice,
        &[],
        &[("to", &first), ("reason", "  "), ("csrf", &csrf)],
    )
    .await;
    assert_eq!(code, 400, "a rollback without a reason: {body}");
    assert!(manifest(&s.root, "production").contains(&second));
    let (code, body) = post_form(
        api,
        "/ui/rollback/app/production",
        &alice,
        &[],
        &[("to", &"0".repeat(64)), ("reason", "x"), ("csrf", &csrf)],
    )
    .await;
    assert_eq!(code, 400, "a digest never deployed here: {body}");
    let (code, body) = post_form(
        api,
        "/ui/rollback/app/production",
        &alice,
        &[],
        &[
            ("to", &first),
            ("reason", "1.1.0 drops checkout sessions"),
            ("csrf", &csrf),
        ],
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("Rolled back to"), "{body}");
    assert!(manifest(&s.root, "production").contains(&first));
    let env = json_get("/environments/app/production".into()).await;
    assert_eq!(env["environment"]["live"]["image"]["digest"], first);
    assert_eq!(env["environment"]["held"]["by"], "alice");
    assert_eq!(
        env["environment"]["held"]["reason"],
        "1.1.0 drops checkout sessions"
    );
    let run = json_get(format!("/runs/{run2}")).await;
    assert_eq!(run["status"], "rolled back (production)");
    assert_eq!(
        run["rolled_back"][0]["reason"],
        "1.1.0 drops checkout sessions"
    );
}

/// `target/ci-node/node_modules`, where `.ci/run` installs playwright-core and axe-core.
fn node_modules() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/ci-node/node_modules");
    assert!(
        dir.join("playwright-core").is_dir() && dir.join("axe-core").is_dir(),
        "playwright-core and axe-core are not installed in {}: run .ci/run once (npm ci of cli/tests/browser)",
        dir.display()
    );
    assert!(
        Path::new("/usr/bin/chromium").is_file(),
        "chromium is not installed: `apt-get install chromium` (.ci/run does this)"
    );
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn in_a_browser_an_approver_signs_in_approves_and_watches_production_deploy() {
    let modules = node_modules();
    let s = served().await;
    let d = s.push("1.0.0", "awaiting approval (production)").await;
    assert!(manifest(&s.root, "staging").contains(&d));
    let artifacts =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts/dashboard");
    let _ = std::fs::remove_dir_all(&artifacts);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/dashboard.cjs");
    let out = tokio::time::timeout(
        Duration::from_secs(180),
        tokio::process::Command::new("node")
            .arg(&script)
            .arg(&s.api.base)
            .arg(ALICE_TOKEN)
            .arg(&artifacts)
            .env("NODE_PATH", &modules)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the browser test finished within 3 minutes")
    .expect("node runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let serve_log = std::fs::read_to_string(s.root.join("serve.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "browser test failed: {stderr}\nserve.log:\n{serve_log}"
    );
    let seen: Value = serde_json::from_slice(
        out.stdout
            .split(|b| *b == b'\n')
            .rfind(|l| l.starts_with(b"{"))
            .unwrap(),
    )
    .unwrap();
    eprintln!("{seen:#}");
    assert_eq!(seen["login_url"], "/login");
    assert_eq!(seen["signed_in_as"], "alice");
    let staging = seen["staging_before"].as_str().unwrap();
    assert!(
        staging.contains("1.0.0") && staging.contains("deployed"),
        "{staging}"
    );
    let before = seen["production_before"].as_str().unwrap();
    assert!(
        before.contains("awaiting approval: 1.0.0 (0 of 1)"),
        "{before}"
    );
    assert!(before.contains("nothing deployed"), "{before}");
    assert_eq!(seen["run_status_before"], "awaiting approval (production)");
    assert_eq!(seen["focused_button"], "Approve production");
    // The board was never reloaded and shows production deployed.
    assert_eq!(seen["marker"], "still here");
    assert!(seen["live_updates"].as_u64().unwrap() >= 1, "{seen}");
    let after = seen["production_after"].as_str().unwrap();
    assert!(
        after.contains("1.0.0") && after.contains("approved by alice"),
        "{after}"
    );
    assert_eq!(seen["run_status_after"], "deployed");
    assert!(
        seen["approval_after"]
            .as_str()
            .unwrap()
            .contains("looks good in staging (from the browser)")
    );
    assert_eq!(seen["history_rows"], 1);
    // No serious or critical accessibility finding on any page.
    let scans = seen["scans"].as_array().unwrap();
    assert_eq!(scans.len(), 6, "{seen:#}");
    for scan in scans {
        assert_eq!(scan["violations"], json!([]), "{}: {scan:#}", scan["page"]);
        assert!(scan["passes"].as_u64().unwrap() > 5, "{scan:#}");
    }
    assert_eq!(seen["console_errors"], json!([]), "{seen:#}");
    // What the browser did, the server recorded.
    assert!(manifest(&s.root, "production").contains(&d));
    let run = s.run_of(&d).await;
    let a = production_approval(&s.api, &run).await;
    assert_eq!(a["decisions"][0]["by"], "alice");
    assert_eq!(
        a["decisions"][0]["comment"],
        "looks good in staging (from the browser)"
    );
    // Screenshots, kept as the test's artifacts; BATON_UPDATE_SCREENSHOTS=1 also puts
    // the board and the run page into docs/img for the README.
    for shot in ["board.png", "run.png", "board-after.png", "run-after.png"] {
        let bytes = std::fs::read(artifacts.join(shot)).unwrap();
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{shot}");
        assert!(bytes.len() > 10_000, "{shot}: {} bytes", bytes.len());
    }
    if std::env::var_os("BATON_UPDATE_SCREENSHOTS").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/img");
        std::fs::create_dir_all(&docs).unwrap();
        std::fs::copy(
            artifacts.join("board.png"),
            docs.join("dashboard-board.png"),
        )
        .unwrap();
        std::fs::copy(artifacts.join("run.png"), docs.join("dashboard-run.png")).unwrap();
    }
}
